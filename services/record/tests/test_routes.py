"""The record's FHIR REST API on the real app: the record's own consumer stores what is published
on ``fhir.<Type>`` topics of a real in-process bus, into SQLite and into PostgreSQL. Read, vread,
history, $everything, the CapabilityStatement, errors, scopes, paging and record.changes."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import orjson
import pytest

from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id
from fhir_common.validation import validate_resource

FHIR_JSON = "application/fhir+json"
NHS_NUMBER = "9434765919"
GP_PATIENT_ID = resource_id("gp-a", "Patient", "example")
ACUTE_PATIENT_ID = resource_id("acute-b", "Patient", "example")


# --- read ----------------------------------------------------------------------------------------


async def test_read_answers_with_etag_and_last_modified(record: Any, kit: Any) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    response = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    assert response.headers["etag"] == 'W/"1"'
    modified = parsedate_to_datetime(response.headers["last-modified"])
    assert before <= modified <= datetime.now(UTC) + timedelta(seconds=1)
    patient = response.json()
    assert patient["id"] == GP_PATIENT_ID
    assert patient["meta"]["versionId"] == "1"
    assert {"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER} in patient["identifier"]

    changed = kit.gp_patient()
    changed["gender"] = "female"
    await record.publish(kit.from_feed(changed, "gp-a", NHS_NUMBER))
    again = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}")
    assert again.headers["etag"] == 'W/"2"'
    assert again.json()["gender"] == "female"


async def test_a_read_with_the_current_etag_is_not_modified(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    path = f"/fhir/Patient/{GP_PATIENT_ID}"
    same = await record.get(path, headers={"If-None-Match": 'W/"1"'})
    assert (same.status_code, same.content) == (304, b"")
    assert same.headers["etag"] == 'W/"1"'
    other = await record.get(path, headers={"If-None-Match": 'W/"7"'})
    assert other.status_code == 200


async def test_a_missing_resource_is_a_404_operation_outcome(record: Any) -> None:
    response = await record.get("/fhir/Patient/nobody")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"
    assert "Patient/nobody" in outcome["issue"][0]["diagnostics"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/fhir/Basic/x", 404, "not-supported"),  # a type we do not serve
        ("/fhir/Patient/not_an$id", 400, "invalid"),
        ("/fhir/Patient/x/_history/one", 404, "not-found"),
        ("/fhir/Patient?birthdate=last-tuesday", 400, "invalid"),
        ("/fhir/Patient?_count=lots", 400, "invalid"),
        ("/fhir/Observation?value-quantity=zz5", 400, "invalid"),
        ("/fhir/Patient?_format=xml", 406, "not-supported"),
        ("/fhir/nothing/here/at/all", 404, "not-found"),
    ],
)
async def test_every_error_is_an_operation_outcome(
    record: Any, path: str, status: int, code: str
) -> None:
    response = await record.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code


async def test_writes_are_refused_with_405(record: Any) -> None:
    for method in ("POST", "PUT", "DELETE"):
        response = await record.client.request(
            method,
            "/fhir/Patient" if method == "POST" else "/fhir/Patient/x",
            headers={"Authorization": f"Bearer {record.keys.reader}"},
            content=b"{}",
        )
        assert response.status_code == 405, method
        assert response.json()["resourceType"] == "OperationOutcome"


# --- vread and history ---------------------------------------------------------------------------


async def three_versions(record: Any, kit: Any) -> None:
    for gender in ("male", "female", "other"):
        patient = kit.gp_patient()
        patient["gender"] = gender
        await record.publish(kit.from_feed(patient, "gp-a", NHS_NUMBER))


async def test_vread_returns_each_version(record: Any, kit: Any) -> None:
    await three_versions(record, kit)
    for version, gender in ((1, "male"), (2, "female"), (3, "other")):
        response = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}/_history/{version}")
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == f'W/"{version}"'
        body = response.json()
        assert (body["meta"]["versionId"], body["gender"]) == (str(version), gender)
    missing = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}/_history/4")
    assert missing.status_code == 404


async def test_instance_history_newest_first_with_paging(record: Any, kit: Any) -> None:
    await three_versions(record, kit)
    bundle = await record.bundle(f"/fhir/Patient/{GP_PATIENT_ID}/_history")
    assert bundle["type"] == "history"
    assert bundle["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]
    assert bundle["entry"][2]["response"]["status"] == "201 Created"
    assert validate_resource(bundle) == []

    page = await record.bundle(f"/fhir/Patient/{GP_PATIENT_ID}/_history?_count=2")
    assert [e["resource"]["meta"]["versionId"] for e in page["entry"]] == ["3", "2"]
    [next_link] = [link["url"] for link in page["link"] if link["relation"] == "next"]
    rest = await record.bundle(next_link.removeprefix("http://record"))
    assert [e["resource"]["meta"]["versionId"] for e in rest["entry"]] == ["1"]
    assert not [link for link in rest["link"] if link["relation"] == "next"]


async def test_type_history_pages_through_every_version(record: Any, kit: Any) -> None:
    await three_versions(record, kit)
    await record.publish(kit.from_feed(kit.gp_patient(kit.OTHER_NHS_NUMBER), "gp-c", "x"))
    seen: list[tuple[str, str]] = []
    path: str | None = "/fhir/Patient/_history?_count=3"
    while path:
        page = await record.bundle(path)
        seen += [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in page["entry"]]
        nexts = [link["url"] for link in page["link"] if link["relation"] == "next"]
        path = nexts[0].removeprefix("http://record") if nexts else None
    assert sorted(seen) == sorted(
        [(GP_PATIENT_ID, v) for v in ("1", "2", "3")]
        + [(resource_id("gp-c", "Patient", "example"), "1")]
    )
    since = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    later = await record.bundle(f"/fhir/Patient/_history?_since={since}")
    assert later.get("entry", []) == []


# --- identifier search (the walking skeleton's) --------------------------------------------------


async def test_search_by_identifier(record: Any, kit: Any) -> None:
    patient = kit.gp_patient()
    patient["identifier"].append({"value": "LOCAL-42"})  # no system
    await record.publish(
        kit.from_feed(patient, "gp-a", NHS_NUMBER),
        kit.from_feed(kit.gp_patient(kit.OTHER_NHS_NUMBER), "gp-c", kit.OTHER_NHS_NUMBER),
    )

    async def ids(query: str) -> list[str]:
        bundle = await record.bundle(f"/fhir/Patient?identifier={query}")
        assert bundle["type"] == "searchset"
        entries = bundle.get("entry", [])
        assert bundle["total"] == len(entries)
        return [e["resource"]["id"] for e in entries]

    assert await ids(f"{NHS_NUMBER_SYSTEM}|{NHS_NUMBER}") == [GP_PATIENT_ID]
    assert await ids(NHS_NUMBER) == [GP_PATIENT_ID]  # any system
    assert await ids("|LOCAL-42") == [GP_PATIENT_ID]  # no system
    assert await ids("|9434765919") == []  # it has a system
    assert await ids(f"urn:other|{NHS_NUMBER}") == []
    # the Patient-example MRN is in both feeds' patients
    assert sorted(await ids("urn:oid:1.2.36.146.595.217.0.1|12345")) == sorted(
        [GP_PATIENT_ID, resource_id("gp-c", "Patient", "example")]
    )
    # any value in a system
    assert sorted(await ids(f"{NHS_NUMBER_SYSTEM}|")) == sorted(
        [GP_PATIENT_ID, resource_id("gp-c", "Patient", "example")]
    )


async def test_search_entries_have_full_urls(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    bundle = await record.bundle(f"/fhir/Patient?identifier={NHS_NUMBER}")
    [found] = bundle["entry"]
    assert found["fullUrl"] == f"http://record/fhir/Patient/{GP_PATIENT_ID}"
    assert found["search"] == {"mode": "match"}
    assert validate_resource(bundle) == []


@pytest.mark.parametrize("query", ["?identifier=", "?identifier=|", "?name="])
async def test_search_without_a_value_is_a_400(record: Any, query: str) -> None:
    response = await record.get(f"/fhir/Patient{query}")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


# --- $everything ---------------------------------------------------------------------------------


async def publish_one_person_from_two_feeds(record: Any, kit: Any) -> None:
    """The same person (same NHS number) from a GP feed and a hospital feed, and someone else."""
    await record.publish(
        kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER),
        kit.from_feed(kit.sample("Observation-example.json"), "gp-a", NHS_NUMBER),
        kit.from_feed(kit.gp_patient(), "acute-b", NHS_NUMBER, "acute"),
        kit.from_feed(kit.sample("Encounter-example.json"), "acute-b", NHS_NUMBER, "acute"),
        kit.from_feed(kit.sample("Condition-example.json"), "acute-b", NHS_NUMBER, "acute"),
        kit.from_feed(kit.gp_patient(kit.OTHER_NHS_NUMBER), "gp-c", kit.OTHER_NHS_NUMBER),
        kit.from_feed(kit.sample("Observation-example.json"), "gp-c", kit.OTHER_NHS_NUMBER),
        kit.from_feed(kit.sample("Organization-1.json"), "gp-a", "gp-a|Organization/1"),
    )


async def test_everything_joins_the_feeds_of_one_person(record: Any, kit: Any) -> None:
    await publish_one_person_from_two_feeds(record, kit)
    bundle = await record.bundle(f"/fhir/Patient/{ACUTE_PATIENT_ID}/$everything")
    assert bundle["type"] == "searchset"
    found = [(e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"]]
    assert found[0] == ("Patient", ACUTE_PATIENT_ID)  # the one asked for comes first
    assert sorted(found) == sorted(
        [
            ("Patient", ACUTE_PATIENT_ID),
            ("Patient", GP_PATIENT_ID),
            ("Observation", resource_id("gp-a", "Observation", "example")),
            ("Encounter", resource_id("acute-b", "Encounter", "example")),
            ("Condition", resource_id("acute-b", "Condition", "example")),
        ]
    )
    assert bundle["total"] == 5
    assert validate_resource(bundle) == []


async def test_everything_with_type_since_and_count(record: Any, kit: Any) -> None:
    await publish_one_person_from_two_feeds(record, kit)
    path = f"/fhir/Patient/{GP_PATIENT_ID}/$everything"
    only = await record.bundle(f"{path}?_type=Condition,Encounter")
    assert sorted(e["resource"]["resourceType"] for e in only["entry"]) == [
        "Condition",
        "Encounter",
    ]
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert (await record.bundle(f"{path}?_since={future}")).get("entry", []) == []
    # paged: two at a time, each resource once, the patients first
    seen: list[str] = []
    page_path: str | None = f"{path}?_count=2"
    pages = 0
    while page_path:
        page = await record.bundle(page_path)
        pages += 1
        seen += [e["resource"]["resourceType"] for e in page.get("entry", [])]
        nexts = [link["url"] for link in page["link"] if link["relation"] == "next"]
        page_path = nexts[0].removeprefix("http://record") if nexts else None
    assert seen[:2] == ["Patient", "Patient"]
    assert sorted(seen) == ["Condition", "Encounter", "Observation", "Patient", "Patient"]
    assert pages >= 3
    bad = await record.get(f"{path}?_type=Spaceship")
    assert bad.status_code == 400


async def test_a_large_everything_page_is_whole_in_order_and_pages_alike(
    record: Any, kit: Any
) -> None:
    """Pages from HALVES_FROM rows are read in two halves at once on PostgreSQL: the halves
    join without a gap or a repeat, whatever the page size and wherever a page starts."""
    from record.repository import HALVES_FROM

    observations = []
    for n in range(HALVES_FROM + 150):
        observation = kit.sample("Observation-example.json")
        observation["id"] = f"obs-{n:04d}"
        observations.append(kit.from_feed(observation, "gp-a", NHS_NUMBER))
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER), *observations)
    expected = sorted(resource_id("gp-a", "Observation", f"obs-{n:04d}") for n in range(550))
    path = f"/fhir/Patient/{GP_PATIENT_ID}/$everything"

    whole = await record.ids(f"{path}?_count=1000")
    assert whole == [GP_PATIENT_ID, *expected]

    paged: list[str] = []
    page_path: str | None = f"{path}?_count={HALVES_FROM + 1}&_type=Observation"
    while page_path:
        page = await record.bundle(page_path)
        paged += [e["resource"]["id"] for e in page.get("entry", [])]
        nexts = [link["url"] for link in page["link"] if link["relation"] == "next"]
        page_path = nexts[0].removeprefix("http://record") if nexts else None
    assert paged == expected


async def test_everything_of_a_patient_not_in_the_record_is_404(record: Any) -> None:
    response = await record.get("/fhir/Patient/nobody/$everything")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_everything_shows_only_what_the_token_may_read(record: Any, kit: Any) -> None:
    await publish_one_person_from_two_feeds(record, kit)
    bundle = await record.bundle(
        f"/fhir/Patient/{GP_PATIENT_ID}/$everything", record.keys.patients_only
    )
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["Patient", "Patient"]
    assert bundle["total"] == 2


# --- tokens and scopes ---------------------------------------------------------------------------


async def test_no_token_no_data(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    for path in (
        f"/fhir/Patient/{GP_PATIENT_ID}",
        f"/fhir/Patient/{GP_PATIENT_ID}/_history",
        f"/fhir/Patient/{GP_PATIENT_ID}/_history/1",
        "/fhir/Patient/_history",
        f"/fhir/Patient/{GP_PATIENT_ID}/$everything",
        f"/fhir/Patient?identifier={NHS_NUMBER}",
        f"/summary/{GP_PATIENT_ID}",
    ):
        response = await record.get(path, token="")
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"
        assert NHS_NUMBER not in response.text
        forged = await record.get(path, token="e30.e30.c2ln")
        assert forged.status_code == 401, path


async def test_a_token_without_the_scope_gets_403(record: Any, kit: Any) -> None:
    await publish_one_person_from_two_feeds(record, kit)
    token = record.keys.observations_only
    for path in (
        f"/fhir/Patient/{GP_PATIENT_ID}",
        f"/fhir/Patient/{GP_PATIENT_ID}/$everything",
        f"/fhir/Patient?identifier={NHS_NUMBER}",
        f"/summary/{GP_PATIENT_ID}",
    ):
        response = await record.get(path, token)
        assert response.status_code == 403, path
        assert response.json()["issue"][0]["code"] == "forbidden"
    observation = resource_id("gp-a", "Observation", "example")
    assert (await record.get(f"/fhir/Observation/{observation}", token)).status_code == 200


async def test_read_without_search_scope_cannot_search(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    token = record.keys.read_no_search
    assert (await record.get(f"/fhir/Patient/{GP_PATIENT_ID}", token)).status_code == 200
    assert (await record.get("/fhir/Patient?gender=male", token)).status_code == 403
    assert (await record.get("/fhir/Patient/_history", token)).status_code == 403


async def test_patient_context_scopes_grant_nothing_yet(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    response = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}", record.keys.patient_context)
    assert response.status_code == 403


async def test_includes_of_types_the_token_cannot_read_are_left_out(record: Any, kit: Any) -> None:
    await publish_one_person_from_two_feeds(record, kit)
    bundle = await record.bundle(
        f"/fhir/Observation?_include=Observation:patient&patient={GP_PATIENT_ID}",
        record.keys.observations_only,
    )
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Observation"]


# --- what needs no token -------------------------------------------------------------------------


async def test_metadata_is_a_capability_statement_without_a_token(record: Any) -> None:
    response = await record.get("/fhir/metadata", token="")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"].startswith("4.0")
    [rest] = capability["rest"]
    resources = {r["type"]: r for r in rest["resource"]}
    assert {"Patient", "Observation", "Encounter", "Condition", "RiskAssessment"} <= set(resources)
    patient = resources["Patient"]
    assert {i["code"] for i in patient["interaction"]} == {
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search-type",
    }
    names = {p["name"]: p["type"] for p in patient["searchParam"]}
    assert names["identifier"] == "token"
    assert names["birthdate"] == "date"
    assert names["general-practitioner"] == "reference"
    assert {p["name"] for p in resources["Observation"]["searchParam"]} >= {
        "patient",
        "code",
        "date",
        "value-quantity",
        "_lastUpdated",
    }
    assert "Observation:patient" in patient["searchRevInclude"]
    assert patient["operation"][0]["name"] == "everything"
    assert "handling=strict" in rest["documentation"]
    assert validate_resource(capability) == []  # a valid R4 resource itself


async def test_health_and_ready(record: Any) -> None:
    health = await record.get("/health", token="")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = await record.get("/ready", token="")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


# --- record.changes and bad messages -------------------------------------------------------------


async def test_changes_are_announced_after_storing(record: Any, kit: Any) -> None:
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    await record.publish(kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))  # no change
    assert [orjson.loads(m.value) for m in record.changes] == [
        {
            "resourceType": "Patient",
            "id": GP_PATIENT_ID,
            "versionId": "1",
            "patient": NHS_NUMBER,
            "change": "created",
        }
    ]
    assert record.changes[0].key == NHS_NUMBER
    assert record.changes[0].headers["source"] == "gp-a"


async def test_change_headers_continue_the_trace(record: Any, kit: Any) -> None:
    message = kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER)
    await record.publish(message)
    [change] = record.changes
    headers = change.headers
    cause = message.headers["traceparent"].split("-")
    mine = headers["traceparent"].split("-")
    assert (mine[0], mine[1], mine[3]) == (cause[0], cause[1], cause[3])  # same trace
    assert mine[2] != cause[2]  # a span of its own
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", headers["event-id"]
    )
    assert headers["event-id"] != message.headers["event-id"]
    assert (headers["source"], headers["setting"]) == ("gp-a", "primary")
    assert headers["occurred-at"] == message.headers["occurred-at"]


async def test_a_malformed_message_is_dead_lettered_and_the_rest_stored(
    record: Any, kit: Any
) -> None:
    bad = Message(topic="fhir.Patient", key=NHS_NUMBER, value=b"{not json", headers={})
    await record.publish(
        kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER),
        bad,
        kit.from_feed(kit.sample("Encounter-example.json"), "gp-a", NHS_NUMBER),
    )
    assert [m.value for m in record.dead] == [b"{not json"]
    assert record.dead[0].headers["service"] == "record"
    assert (await record.get(f"/fhir/Patient/{GP_PATIENT_ID}")).status_code == 200
    encounter = resource_id("gp-a", "Encounter", "example")
    assert (await record.get(f"/fhir/Encounter/{encounter}")).status_code == 200


async def test_data_the_database_refuses_is_dead_lettered_not_retried_forever(
    record: Any, kit: Any
) -> None:
    """A NUL in a string is valid JSON but not storable in PostgreSQL's JSONB; a key of 200
    characters is not a patient key. Each goes to the dead-letter topic and the rest is stored."""
    with_nul = kit.from_feed(kit.sample("Observation-example.json"), "gp-x", NHS_NUMBER)
    nul = Message(
        topic=with_nul.topic,
        key=with_nul.key,
        value=with_nul.value.replace(b'"status":"final"', b'"status":"final\\u0000"'),
        headers=with_nul.headers,
    )
    assert b"\\u0000" in nul.value
    long_key = kit.from_feed(kit.gp_patient(), "gp-y", "k" * 200)
    await record.publish(nul, long_key, kit.from_feed(kit.gp_patient(), "gp-a", NHS_NUMBER))
    assert (await record.get(f"/fhir/Patient/{GP_PATIENT_ID}")).status_code == 200
    dead = [m.value for m in record.dead]
    assert long_key.value in dead
    if record.db_url.startswith("postgresql"):
        assert nul.value in dead  # SQLite stores it


# --- paging under inserts ------------------------------------------------------------------------


async def test_paging_is_stable_under_inserts(record: Any) -> None:
    def observation(oid: str) -> Message:
        resource = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
        }
        return fhir_message(resource, NHS_NUMBER, event_headers(source="gp-a", setting="primary"))

    await record.publish(*(observation(f"o{n}") for n in (1, 2, 3, 4, 5)))
    first = await record.bundle("/fhir/Observation?_count=2")
    assert [e["resource"]["id"] for e in first["entry"]] == ["o1", "o2"]
    # resources arrive while the client pages: before and after the cursor
    await record.publish(observation("o0"), observation("o35"))
    seen: list[str] = []
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    path: str | None = url.removeprefix("http://record")
    while path:
        page = await record.bundle(path)
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        nexts = [link["url"] for link in page["link"] if link["relation"] == "next"]
        path = nexts[0].removeprefix("http://record") if nexts else None
    assert seen == ["o3", "o35", "o4", "o5"]  # nothing repeated, nothing skipped
