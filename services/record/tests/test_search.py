"""FHIR search on the record (SQLite and PostgreSQL): every parameter type, modifiers, prefixes,
OR and AND, sorting, keyset paging, _include/_revinclude, _summary=count, _total, and unknown
parameters under ``Prefer: handling``. (Paging while resources are added: test_routes.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM

N1, N2 = "9434765919", "9912003888"
LOINC, SNOMED, UCUM = "http://loinc.org", "http://snomed.info/sct", "http://unitsofmeasure.org"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def patient(pid: str, given: str, family: str, gender: str, born: str, **extra: Any) -> dict:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": family, "given": [given]}],
        "gender": gender,
        "birthDate": born,
        **extra,
    }


def encounter(eid: str, pid: str, period: dict, cls: str, status: str, **extra: Any) -> dict:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": {"system": ACT, "code": cls},
        "subject": {"reference": f"Patient/{pid}"},
        "period": period,
        **extra,
    }


def condition(cid: str, pid: str, code: str, clinical: str, **extra: Any) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": SNOMED, "code": code}]},
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": clinical}]},
        **extra,
    }


def observation(oid: str, pid: str, code: str, **extra: Any) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": LOINC, "code": code}]},
        **extra,
    }


def quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


PATIENTS = [
    (
        patient(
            "p1",
            "José",
            "Álvarez",
            "male",
            "1950-06-15",
            identifier=[{"system": NHS_NUMBER_SYSTEM, "value": N1}],
            generalPractitioner=[{"reference": "Organization/org1"}],
        ),
        N1,
    ),
    (
        patient(
            "p2",
            "Josephine",
            "Smith",
            "female",
            "1950",
            identifier=[{"system": NHS_NUMBER_SYSTEM, "value": N2}],
            generalPractitioner=[{"reference": "Practitioner/pr1"}],
        ),
        N2,
    ),
    (patient("p3", "Sam", "Smithson", "other", "1980-01-01"), "gp-a|p3"),
]
OTHERS = [
    (
        {
            "resourceType": "Organization",
            "id": "org1",
            "name": "Malton Surgery",
            "identifier": [{"system": ODS_ORGANIZATION_SYSTEM, "value": "A81001"}],
        },
        "org",
    ),
    ({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Townley"}]}, "org"),
    (
        encounter(
            "e1",
            "p1",
            {"start": "2024-01-10T10:00:00Z", "end": "2024-01-12"},
            "EMER",
            "finished",
            reasonCode=[{"coding": [{"system": SNOMED, "code": "302866003"}]}],
            serviceProvider={"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "RXX"}},
        ),
        N1,
    ),
    (
        encounter(
            "e2",
            "p1",
            {"start": "2024-03-01"},
            "IMP",
            "in-progress",
            serviceProvider={"reference": "Organization/org1"},
        ),
        N1,
    ),
    (encounter("e3", "p2", {"start": "2023-05-05", "end": "2023-05-05"}, "AMB", "finished"), N2),
    (condition("c1", "p1", "44054006", "active", onsetDateTime="2010"), N1),
    (condition("c2", "p2", "44054006", "resolved", onsetDateTime="2015-03"), N2),
    (
        condition("c3", "p1", "302866003", "active", onsetPeriod={"start": "2024-01-10T10:00:00Z"}),
        N1,
    ),
    (
        observation(
            "o1",
            "p1",
            "4548-4",
            valueQuantity=quantity(7.5, "%"),
            effectiveDateTime="2024-01-10T10:30:00Z",
        ),
        N1,
    ),
    (
        observation(
            "o2", "p1", "4548-4", valueQuantity=quantity(9.1, "%"), effectiveDateTime="2024-02-10"
        ),
        N1,
    ),
    (
        observation(
            "o3", "p2", "4548-4", valueQuantity=quantity(6.2, "%"), effectiveDateTime="2023-05-05"
        ),
        N2,
    ),
    (
        observation(
            "o4",
            "p1",
            "59261-8",
            valueQuantity=quantity(58, "mmol/mol"),
            effectiveDateTime="2023-01-01",
        ),
        N1,
    ),
    (observation("o5", "p1", "8867-4"), N1),
]


def as_message(resource: dict[str, Any], key: str) -> Message:
    return fhir_message(resource, key, event_headers(source="gp-a", setting="primary"))


# One store for the module (per database): the tests only read it.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def data(
    start_record: Any, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    async with start_record(tmp_path_factory.mktemp("search-app"), store_url) as record:
        await record.publish(*(as_message(r, k) for r, k in PATIENTS + OTHERS))
        yield record


async def ids(record: Any, query: str, **headers: str) -> list[str]:
    return sorted(await record.ids(query, **headers))


async def ordered(record: Any, query: str) -> list[str]:
    return list(await record.ids(query))


# --- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (f"Observation?code={LOINC}|4548-4", ["o1", "o2", "o3"]),
        ("Observation?code=4548-4", ["o1", "o2", "o3"]),
        ("Observation?code=|4548-4", []),  # it has a system
        (f"Observation?code={LOINC}|", ["o1", "o2", "o3", "o4", "o5"]),
        ("Observation?code=4548-4,59261-8", ["o1", "o2", "o3", "o4"]),
        ("Observation?code:not=4548-4", ["o4", "o5"]),
        ("Encounter?class=EMER", ["e1"]),
        (f"Encounter?class={ACT}|IMP", ["e2"]),
        ("Encounter?status=finished", ["e1", "e3"]),
        (f"Encounter?reason-code={SNOMED}|302866003", ["e1"]),
        ("Condition?clinical-status=active", ["c1", "c3"]),
        ("Condition?code=44054006&clinical-status=active", ["c1"]),
        ("Patient?gender=female", ["p2"]),
        ("Patient?gender=http://hl7.org/fhir/administrative-gender|male", ["p1"]),
        (f"Patient?identifier={NHS_NUMBER_SYSTEM}|{N1},{NHS_NUMBER_SYSTEM}|{N2}", ["p1", "p2"]),
        ("Patient?_id=p1,p3", ["p1", "p3"]),
        ("Patient?_id:not=p1", ["p2", "p3"]),
    ],
)
async def test_token_search(data: Any, query: str, expected: list[str]) -> None:
    assert await ids(data, f"/fhir/{quote(query, safe='?=&,|:/')}") == expected


# --- strings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Patient?family=alv", ["p1"]),  # starts with, accents and case ignored
        ("Patient?family=ÁLVAREZ", ["p1"]),
        ("Patient?family=smith", ["p2", "p3"]),
        ("Patient?family:exact=Smith", ["p2"]),
        ("Patient?family:exact=smith", []),
        ("Patient?name=jos", ["p1", "p2"]),  # any part of the name
        ("Patient?name:exact=José", ["p1"]),
        ("Patient?name:contains=mit", ["p2", "p3"]),
        ("Patient?given=sam,jos", ["p1", "p2", "p3"]),
        ("Patient?family=smith&given=jos", ["p2"]),
        ("Organization?name=malton", ["org1"]),
    ],
)
async def test_string_search(data: Any, query: str, expected: list[str]) -> None:
    assert await ids(data, f"/fhir/{query}") == expected


# --- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Patient?birthdate=1950", ["p1", "p2"]),
        ("Patient?birthdate=1950-06", ["p1"]),  # 1950 (p2) is not within June
        ("Patient?birthdate=eq1950-06-15", ["p1"]),
        ("Patient?birthdate=ge1950-07", ["p2", "p3"]),
        ("Patient?birthdate=gt1950", ["p3"]),
        ("Patient?birthdate=lt1950", []),
        ("Patient?birthdate=le1950-06-15", ["p1", "p2"]),
        ("Patient?birthdate=sa1950", ["p3"]),
        ("Patient?birthdate=eb1980", ["p1", "p2"]),
        ("Patient?birthdate=ne1950", ["p3"]),
        ("Patient?birthdate=ge1950&birthdate=lt1951", ["p1", "p2"]),
        ("Encounter?date=ge2024-01-11&date=le2024-01-11", ["e1"]),  # overlaps the day
        ("Encounter?date=gt2025", ["e2"]),  # still open
        ("Encounter?date=lt2024", ["e3"]),
        ("Observation?date=2024-01-10", ["o1"]),
        ("Observation?date=2024-01-10T10:30:00Z", ["o1"]),
        ("Observation?date=2024-01-10T11:30:00%2B01:00", ["o1"]),  # the same instant
        ("Observation?date=ge2024-01-01", ["o1", "o2"]),
        ("Condition?onset-date=2010", ["c1"]),
        ("Condition?onset-date=ge2024-01-10", ["c3"]),
    ],
)
async def test_date_search(data: Any, query: str, expected: list[str]) -> None:
    assert await ids(data, f"/fhir/{query}") == expected


async def test_last_updated(data: Any) -> None:
    hour = timedelta(hours=1)
    before = (datetime.now(UTC) - hour).strftime("%Y-%m-%dT%H:%M:%SZ")
    after = (datetime.now(UTC) + hour).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await ids(data, f"/fhir/Patient?_lastUpdated=ge{before}") == ["p1", "p2", "p3"]
    assert await ids(data, f"/fhir/Patient?_lastUpdated=gt{after}") == []
    assert await ids(data, f"/fhir/Patient?_lastUpdated=lt{after}&gender=male") == ["p1"]


# --- quantities ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Observation?value-quantity=7.5", ["o1"]),
        ("Observation?value-quantity=7.52", []),  # precision: [7.515, 7.525)
        ("Observation?value-quantity=8", ["o1"]),  # precision: [7.5, 8.5)
        ("Observation?value-quantity=gt7", ["o1", "o2", "o4"]),
        (f"Observation?value-quantity=gt7|{UCUM}|%25", ["o1", "o2"]),
        ("Observation?value-quantity=ge58||mmol/mol", ["o4"]),
        ("Observation?value-quantity=le6.2", ["o3"]),
        ("Observation?value-quantity=ap9", ["o2"]),
        ("Observation?value-quantity=lt7,gt50", ["o3", "o4"]),
        ("Observation?value-quantity:missing=true", ["o5"]),
    ],
)
async def test_quantity_search(data: Any, query: str, expected: list[str]) -> None:
    assert await ids(data, f"/fhir/{query}") == expected


# --- references ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Observation?patient=p1", ["o1", "o2", "o4", "o5"]),
        ("Observation?patient=Patient/p2", ["o3"]),
        ("Observation?subject:Patient=p2", ["o3"]),
        ("Observation?subject=http://elsewhere/fhir/Patient/p2", ["o3"]),
        ("Observation?patient=p1&code=4548-4", ["o1", "o2"]),
        ("Observation?patient=p1,p2&code=59261-8", ["o4"]),
        ("Patient?general-practitioner=Organization/org1", ["p1"]),
        ("Patient?general-practitioner:Practitioner=pr1", ["p2"]),
        ("Patient?general-practitioner:missing=true", ["p3"]),
        ("Patient?general-practitioner:missing=false", ["p1", "p2"]),
        (f"Encounter?service-provider:identifier={ODS_ORGANIZATION_SYSTEM}|RXX", ["e1"]),
        ("Encounter?service-provider=org1", ["e2"]),
        ("Encounter?service-provider:missing=true", ["e3"]),
        ("Condition?patient=p1&clinical-status=active", ["c1", "c3"]),
    ],
)
async def test_reference_search(data: Any, query: str, expected: list[str]) -> None:
    assert await ids(data, f"/fhir/{query}") == expected


async def test_a_reference_to_the_wrong_type_is_refused(data: Any) -> None:
    response = await data.get("/fhir/Patient?general-practitioner=Observation/o1")
    assert response.status_code == 400


# --- sorting and paging --------------------------------------------------------------------------


async def test_sort(data: Any) -> None:
    assert await ordered(data, "/fhir/Observation?patient=p1&_sort=date") == [
        "o4",
        "o1",
        "o2",
        "o5",  # no date: last
    ]
    assert await ordered(data, "/fhir/Observation?patient=p1&_sort=-date") == [
        "o2",
        "o1",
        "o4",
        "o5",
    ]
    assert await ordered(data, "/fhir/Patient?_sort=family") == ["p1", "p2", "p3"]
    assert await ordered(data, "/fhir/Patient?_sort=-family") == ["p3", "p2", "p1"]
    assert await ordered(data, "/fhir/Patient?_sort=birthdate,-_id") == ["p2", "p1", "p3"]
    assert await ordered(data, "/fhir/Patient?_sort=-_id") == ["p3", "p2", "p1"]


async def pages(record: Any, path: str) -> tuple[list[list[str]], list[dict]]:
    seen: list[list[str]] = []
    bundles = []
    next_path: str | None = path
    while next_path:
        bundle = await record.bundle(next_path)
        bundles.append(bundle)
        seen.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        nexts = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        next_path = nexts[0].removeprefix("http://record") if nexts else None
    return seen, bundles


@pytest.mark.parametrize("sort", ["", "&_sort=date", "&_sort=-date", "&_sort=-_lastUpdated,_id"])
async def test_paging_walks_every_match_once(data: Any, sort: str) -> None:
    seen, bundles = await pages(data, f"/fhir/Observation?_count=2{sort}")
    assert [len(p) for p in seen] == [2, 2, 1]
    assert sorted(i for p in seen for i in p) == ["o1", "o2", "o3", "o4", "o5"]
    assert "total" not in bundles[0]  # not known without counting
    assert bundles[-1]["total"] == 5  # known on the last page
    self_link = next(link["url"] for link in bundles[0]["link"] if link["relation"] == "self")
    assert self_link.startswith("http://record/fhir/Observation?")


async def test_total_accurate_counts(data: Any) -> None:
    bundle = await data.bundle("/fhir/Observation?_count=2&_total=accurate")
    assert bundle["total"] == 5
    assert len(bundle["entry"]) == 2


@pytest.mark.parametrize("query", ["_summary=count", "_count=0"])
async def test_summary_count(data: Any, query: str) -> None:
    bundle = await data.bundle(f"/fhir/Observation?patient=p1&{query}")
    assert bundle["total"] == 4
    assert "entry" not in bundle


# --- _include and _revinclude --------------------------------------------------------------------


async def test_include(data: Any) -> None:
    bundle = await data.bundle("/fhir/Observation?code=4548-4&_include=Observation:patient")
    modes = sorted((e["search"]["mode"], e["resource"]["id"]) for e in bundle["entry"])
    assert modes == [
        ("include", "p1"),
        ("include", "p2"),
        ("match", "o1"),
        ("match", "o2"),
        ("match", "o3"),
    ]
    assert bundle["total"] == 3  # matches only
    providers = await data.bundle("/fhir/Encounter?patient=p1&_include=Encounter:service-provider")
    included = [e["resource"]["id"] for e in providers["entry"] if e["search"]["mode"] == "include"]
    assert included == ["org1"]  # the logical reference (RXX) has nothing to include


async def test_revinclude(data: Any) -> None:
    bundle = await data.bundle(
        "/fhir/Patient?_id=p1&_revinclude=Observation:patient&_revinclude=Condition:subject"
    )
    modes = sorted((e["search"]["mode"], e["resource"]["id"]) for e in bundle["entry"])
    assert modes == [
        ("include", "c1"),
        ("include", "c3"),
        ("include", "o1"),
        ("include", "o2"),
        ("include", "o4"),
        ("include", "o5"),
        ("match", "p1"),
    ]
    gp = await data.bundle("/fhir/Organization?_revinclude=Patient:general-practitioner")
    assert sorted(e["resource"]["id"] for e in gp["entry"]) == ["org1", "p1"]


# --- unknown parameters and Prefer: handling -----------------------------------------------------


@pytest.mark.parametrize(
    "unknown",
    [
        "colour=blue",
        "family:text=smith",
        "subject.name=smith",
        "_elements=id",
        "_summary=true",
        "_include=Observation:code",
        "_sort=gender",
        "_has:Observation:patient:code=4548-4",
    ],
)
async def test_unknown_parameters_lenient_and_strict(data: Any, unknown: str) -> None:
    bundle = await data.bundle(f"/fhir/Patient?gender=male&{unknown}")
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert [e["resource"]["id"] for e in matches] == ["p1"]
    [outcome] = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "warning"
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert self_link == "http://record/fhir/Patient?gender=male"  # what was applied

    lenient = await data.bundle(f"/fhir/Patient?gender=male&{unknown}", prefer="handling=lenient")
    assert len(lenient["entry"]) == 2
    strict = await data.get(
        f"/fhir/Patient?gender=male&{unknown}", headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    issue = strict.json()["issue"][0]
    assert issue["code"] == "not-supported"


async def test_search_by_post(data: Any) -> None:
    response = await data.client.post(
        "/fhir/Observation/_search",
        content="patient=p1&code=4548-4",
        headers={
            "Authorization": f"Bearer {data.keys.reader}",
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    assert response.status_code == 200, response.text
    assert sorted(e["resource"]["id"] for e in response.json()["entry"]) == ["o1", "o2"]


async def test_a_search_without_parameters_lists_the_type(data: Any) -> None:
    assert await ids(data, "/fhir/Patient") == ["p1", "p2", "p3"]


async def test_empty_result(data: Any) -> None:
    bundle = await data.bundle("/fhir/Patient?family=nobody")
    assert bundle["total"] == 0
    assert "entry" not in bundle
