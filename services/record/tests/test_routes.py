"""The record's FHIR REST API (record.routes), on the real app: the record's own consumer stores
what is published on ``fhir.<Type>`` topics of a real in-process bus, into SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from fhir_common.bus import InProcessBus
from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id
from fhir_common.validation import validate_resource
from joinedup.tokens import user_token
from record.main import create_app
from record.settings import RecordSettings

CORE = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"
NHS_NUMBER = "9434765919"
FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module", autouse=True)
def no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports (a
    distributed-mode shell would otherwise change the mode, feeds file, issuer or database)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_"):
                monkeypatch.delenv(name)
        yield


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / name).read_text())
    return data


class Keys:
    """One signing key for the module, and tokens minted by ``joinedup.tokens.user_token``
    (each load of the RSA key costs ~0.1 s, so tokens are minted once)."""

    def __init__(self, data_dir: Path) -> None:
        self.file = RecordSettings(data_dir=data_dir).signing_key_file()
        self.reader = user_token(data_dir)  # user/*.rs
        self.patients_only = user_token(data_dir, scopes=["user/Patient.rs"])
        self.observations_only = user_token(data_dir, scopes=["user/Observation.rs"])


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


class Record:
    def __init__(self, client: httpx.AsyncClient, bus: InProcessBus, keys: Keys) -> None:
        self.client = client
        self.bus = bus
        self.keys = keys

    async def publish(self, *messages: Message) -> None:
        await self.bus.publish(list(messages))
        async with asyncio.timeout(10):
            await self.bus.wait_idle()

    async def get(self, path: str, token: str | None = None) -> httpx.Response:
        token = self.keys.reader if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.get(path, headers=headers)


@pytest.fixture
async def record(tmp_path: Path, keys: Keys) -> AsyncIterator[Record]:
    settings = RecordSettings(
        data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'joinedup.db'}"
    )
    settings.signing_key_file().parent.mkdir(parents=True)
    shutil.copy(keys.file, settings.signing_key_file())
    bus = InProcessBus()
    app = create_app(settings, bus=bus)
    async with LifespanManager(app):
        await bus.start()
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://record") as client:
                yield Record(client, bus, keys)
        finally:
            await bus.stop()


def from_feed(resource: dict[str, Any], feed: str, key: str, setting: str = "primary") -> Message:
    """The message an ingest service publishes: the resource with its deterministic id."""
    resource = dict(resource)
    resource["id"] = resource_id(feed, resource["resourceType"], resource["id"])
    for element in ("subject", "patient"):
        if element in resource:
            local = resource[element]["reference"].split("/", 1)[1]
            resource[element] = {"reference": f"Patient/{resource_id(feed, 'Patient', local)}"}
    return fhir_message(resource, key, event_headers(source=feed, setting=setting))


def gp_patient(nhs_number: str = NHS_NUMBER) -> dict[str, Any]:
    patient = sample("Patient-example.json")
    patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": nhs_number})
    return patient


GP_PATIENT_ID = resource_id("gp-a", "Patient", "example")
ACUTE_PATIENT_ID = resource_id("acute-b", "Patient", "example")


# --- read ----------------------------------------------------------------------------------------


async def test_read_answers_with_etag_and_last_modified(record: Record) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    await record.publish(from_feed(gp_patient(), "gp-a", NHS_NUMBER))
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

    changed = gp_patient()
    changed["gender"] = "female"
    await record.publish(from_feed(changed, "gp-a", NHS_NUMBER))
    again = await record.get(f"/fhir/Patient/{GP_PATIENT_ID}")
    assert again.headers["etag"] == 'W/"2"'
    assert again.json()["gender"] == "female"


async def test_a_missing_resource_is_a_404_operation_outcome(record: Record) -> None:
    response = await record.get("/fhir/Patient/nobody")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"
    assert "Patient/nobody" in outcome["issue"][0]["diagnostics"]


async def test_no_token_no_data(record: Record) -> None:
    await record.publish(from_feed(gp_patient(), "gp-a", NHS_NUMBER))
    for path in (
        f"/fhir/Patient/{GP_PATIENT_ID}",
        f"/fhir/Patient/{GP_PATIENT_ID}/$everything",
        f"/fhir/Patient?identifier={NHS_NUMBER}",
    ):
        response = await record.get(path, token="")
        assert response.status_code == 401, path
        assert response.json()["resourceType"] == "OperationOutcome"
        assert NHS_NUMBER not in response.text


# --- identifier search ---------------------------------------------------------------------------


async def test_search_by_identifier(record: Record) -> None:
    patient = gp_patient()
    patient["identifier"].append({"value": "LOCAL-42"})  # no system
    await record.publish(
        from_feed(patient, "gp-a", NHS_NUMBER),
        from_feed(gp_patient("9912003888"), "gp-c", "9912003888"),
    )

    async def ids(query: str) -> list[str]:
        response = await record.get(f"/fhir/Patient?identifier={query}")
        assert response.status_code == 200, response.text
        bundle = response.json()
        assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "searchset")
        assert bundle["total"] == len(bundle["entry"])
        return [e["resource"]["id"] for e in bundle["entry"]]

    assert await ids(f"{NHS_NUMBER_SYSTEM}|{NHS_NUMBER}") == [GP_PATIENT_ID]
    assert await ids(NHS_NUMBER) == [GP_PATIENT_ID]  # any system
    assert await ids("|LOCAL-42") == [GP_PATIENT_ID]  # no system
    assert await ids("|9434765919") == []  # it has a system
    assert await ids(f"urn:other|{NHS_NUMBER}") == []
    # the Patient-example MRN is in both feeds' patients
    assert sorted(await ids("urn:oid:1.2.36.146.595.217.0.1|12345")) == sorted(
        [GP_PATIENT_ID, resource_id("gp-c", "Patient", "example")]
    )


async def test_search_entries_have_full_urls(record: Record) -> None:
    await record.publish(from_feed(gp_patient(), "gp-a", NHS_NUMBER))
    bundle = (await record.get(f"/fhir/Patient?identifier={NHS_NUMBER}")).json()
    [found] = bundle["entry"]
    assert found["fullUrl"] == f"http://record/fhir/Patient/{GP_PATIENT_ID}"
    assert found["search"] == {"mode": "match"}


@pytest.mark.parametrize("query", ["", "?identifier=", f"?identifier={NHS_NUMBER_SYSTEM}|"])
async def test_search_without_a_value_is_a_400(record: Record, query: str) -> None:
    response = await record.get(f"/fhir/Patient{query}")
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


# --- $everything ---------------------------------------------------------------------------------


async def publish_one_person_from_two_feeds(record: Record) -> None:
    """The same person (same NHS number) from a GP feed and a hospital feed, and someone else."""
    await record.publish(
        from_feed(gp_patient(), "gp-a", NHS_NUMBER),
        from_feed(sample("Observation-example.json"), "gp-a", NHS_NUMBER),
        from_feed(gp_patient(), "acute-b", NHS_NUMBER, "acute"),
        from_feed(sample("Encounter-example.json"), "acute-b", NHS_NUMBER, "acute"),
        from_feed(sample("Condition-example.json"), "acute-b", NHS_NUMBER, "acute"),
        from_feed(gp_patient("9912003888"), "gp-c", "9912003888"),
        from_feed(sample("Observation-example.json"), "gp-c", "9912003888"),
        from_feed(sample("Organization-1.json"), "gp-a", "gp-a|Organization/1"),
    )


async def test_everything_joins_the_feeds_of_one_person(record: Record) -> None:
    await publish_one_person_from_two_feeds(record)
    response = await record.get(f"/fhir/Patient/{ACUTE_PATIENT_ID}/$everything")
    assert response.status_code == 200, response.text
    bundle = response.json()
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
    sources = {e["resource"].get("id"): e for e in bundle["entry"]}
    assert resource_id("gp-c", "Observation", "example") not in sources  # someone else's


async def test_everything_of_a_patient_not_in_the_record_is_404(record: Record) -> None:
    response = await record.get("/fhir/Patient/nobody/$everything")
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_everything_shows_only_what_the_token_may_read(record: Record) -> None:
    await publish_one_person_from_two_feeds(record)
    response = await record.get(
        f"/fhir/Patient/{GP_PATIENT_ID}/$everything", record.keys.patients_only
    )
    assert response.status_code == 200, response.text
    types = [e["resource"]["resourceType"] for e in response.json()["entry"]]
    assert types == ["Patient", "Patient"]
    assert response.json()["total"] == 2


async def test_a_token_without_patient_read_gets_403(record: Record) -> None:
    await publish_one_person_from_two_feeds(record)
    token = record.keys.observations_only
    for path in (f"/fhir/Patient/{GP_PATIENT_ID}", f"/fhir/Patient/{GP_PATIENT_ID}/$everything"):
        response = await record.get(path, token)
        assert response.status_code == 403, path
        issue = response.json()["issue"][0]
        assert issue["code"] == "forbidden"
    observation = resource_id("gp-a", "Observation", "example")
    assert (await record.get(f"/fhir/Observation/{observation}", token)).status_code == 200


# --- what needs no token -------------------------------------------------------------------------


async def test_metadata_is_a_capability_statement_without_a_token(record: Record) -> None:
    response = await record.get("/fhir/metadata", token="")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    capability = response.json()
    assert capability["resourceType"] == "CapabilityStatement"
    assert capability["fhirVersion"].startswith("4.0")
    [rest] = capability["rest"]
    types = {r["type"] for r in rest["resource"]}
    assert {"Patient", "Observation", "Encounter"} <= types
    assert validate_resource(capability) == []  # a valid R4 resource itself


async def test_health_and_ready(record: Record) -> None:
    health = await record.get("/health", token="")
    assert (health.status_code, health.json()["status"]) == (200, "ok")
    ready = await record.get("/ready", token="")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"


async def test_changes_are_announced_after_storing(record: Record) -> None:
    seen: list[Message] = []

    async def collect(messages: Any) -> None:
        seen.extend(messages)

    record.bus.subscribe("t-changes", collect, service="t", topics=["record.changes"])
    await record.publish(from_feed(gp_patient(), "gp-a", NHS_NUMBER))
    await record.publish(from_feed(gp_patient(), "gp-a", NHS_NUMBER))  # again: no change
    assert [orjson.loads(m.value) for m in seen] == [
        {
            "resourceType": "Patient",
            "id": GP_PATIENT_ID,
            "versionId": "1",
            "patient": NHS_NUMBER,
            "change": "created",
        }
    ]
    assert seen[0].key == NHS_NUMBER
    assert seen[0].headers["source"] == "gp-a"
