"""Index rows of resources (record.indexing): what each kind of search parameter extracts, on the
official FHIR R4 examples and on edge cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from record.indexing import (
    FAR_FUTURE,
    FAR_PAST,
    date_range,
    index_rows,
    normalise,
    number_range,
    parse_reference,
    references_of,
    values_at,
)
from record.searchparams import REGISTRY, param

CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ODS = "https://fhir.nhs.uk/Id/ods-organization-code"


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2024", utc(2024, 1, 1), utc(2025, 1, 1)),
        ("2024-02", utc(2024, 2, 1), utc(2024, 3, 1)),
        ("2024-12", utc(2024, 12, 1), utc(2025, 1, 1)),
        ("2024-02-29", utc(2024, 2, 29), utc(2024, 3, 1)),
        ("2024-02-29T10:00", utc(2024, 2, 29, 10), utc(2024, 2, 29, 10, 1)),
        ("2024-02-29T10:00:05Z", utc(2024, 2, 29, 10, 0, 5), utc(2024, 2, 29, 10, 0, 6)),
        (
            "2024-02-29T10:00:05.25+01:00",
            utc(2024, 2, 29, 9, 0, 5, 250000),
            utc(2024, 2, 29, 9, 0, 5, 260000),
        ),
        ("9999", utc(9999, 1, 1), FAR_FUTURE),
    ],
)
def test_date_range(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01", "2024-02-30", "24-01-01"])
def test_not_a_date(text: str) -> None:
    assert date_range(text) is None


def test_times_are_compared_in_utc() -> None:
    local = date_range("2024-06-01T01:30:00+02:00")
    assert local is not None
    assert local[0] == datetime(2024, 6, 1, 1, 30, tzinfo=timezone(timedelta(hours=2)))
    assert local[0].tzinfo == UTC


def test_normalise() -> None:
    assert normalise("  José   ÁLVAREZ ") == "jose alvarez"
    assert normalise("Straße") == "strasse"
    assert normalise("\uff33\uff4d\uff49\uff54\uff48") == "smith"  # full-width letters


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Patient/123", ("Patient", "123")),
        ("https://example.org/fhir/Patient/a-b.c", ("Patient", "a-b.c")),
        ("Patient/123/_history/4", ("Patient", "123")),
        ("#contained", None),
        ("urn:uuid:8b0b9e4e-0000-0000-0000-000000000000", None),
        ("not a reference", None),
    ],
)
def test_parse_reference(text: str, found: tuple[str, str] | None) -> None:
    assert parse_reference(text) == found


@pytest.mark.parametrize(
    ("text", "number", "low", "high"),
    [
        ("5.4", "5.4", "5.35", "5.45"),
        ("100", "100", "99.5", "100.5"),
        ("0.001", "0.001", "0.0005", "0.0015"),
        ("-2", "-2", "-2.5", "-1.5"),
    ],
)
def test_number_range(text: str, number: str, low: str, high: str) -> None:
    assert number_range(text) == (Decimal(number), Decimal(low), Decimal(high))


@pytest.mark.parametrize("text", ["five", "1e", "NaN", "inf"])
def test_not_a_number(text: str) -> None:
    with pytest.raises(ValueError, match="number"):
        number_range(text)


def test_values_at_walks_lists() -> None:
    resource = {"a": [{"b": [1, 2]}, {"b": 3}, {"c": 4}], "d": None}
    assert list(values_at(resource, "a.b")) == [1, 2, 3]
    assert list(values_at(resource, "d.e")) == []
    assert list(values_at(resource, "x")) == []


def test_patient_rows(kit: Any) -> None:
    patient = kit.sample("Patient-example.json")
    rows = index_rows(patient)
    assert ("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345") in rows.tokens
    assert ("gender", "http://hl7.org/fhir/administrative-gender", "male") in rows.tokens
    assert ("active", "", "true") in rows.tokens
    assert ("family", "chalmers", "Chalmers") in rows.strings
    assert ("name", "peter", "Peter") in rows.strings
    assert ("name", "jim", "Jim") in rows.strings  # every name, every part
    assert ("given", "james", "James") in rows.strings
    assert ("birthdate", utc(1974, 12, 25), utc(1974, 12, 26)) in rows.dates
    assert ("address-postalcode", "3999", "3999") in rows.strings


def test_observation_rows(kit: Any) -> None:
    observation = kit.sample("Observation-example.json")
    rows = index_rows(observation)
    assert ("code", "http://loinc.org", "29463-7") in rows.tokens
    assert ("category", CATEGORY, "vital-signs") in rows.tokens
    assert ("subject", "Patient", "example") in rows.references
    assert ("date", utc(2016, 3, 28), utc(2016, 3, 29)) in rows.dates
    weight = ("value-quantity", 185.0, "http://unitsofmeasure.org", "[lb_av]", "lbs")
    assert weight in rows.quantities


def test_encounter_rows(kit: Any) -> None:
    encounter = kit.sample("Encounter-example.json")
    rows = index_rows(encounter)
    assert ("class", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP") in rows.tokens
    assert ("status", "", "in-progress") in rows.tokens
    assert ("subject", "Patient", "example") in rows.references


def test_periods_and_logical_references() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e",
        "period": {"start": "2024-01-01T10:00:00Z"},
        "serviceProvider": {"identifier": {"system": ODS, "value": "RCB"}},
    }
    rows = index_rows(encounter)
    assert ("date", utc(2024, 1, 1, 10), FAR_FUTURE) in rows.dates  # still open
    assert ("service-provider:identifier", ODS, "RCB") in rows.tokens
    ended = index_rows({**encounter, "period": {"end": "2024-01-02"}})
    assert ("date", FAR_PAST, utc(2024, 1, 3)) in ended.dates


def test_references_of_the_wrong_type_are_not_indexed() -> None:
    rows = index_rows(
        {
            "resourceType": "Patient",
            "id": "p",
            "generalPractitioner": [
                {"reference": "Observation/x"},
                {"reference": "Practitioner/d"},
            ],
        }
    )
    assert rows.references == {("general-practitioner", "Practitioner", "d")}


def test_junk_is_skipped_not_fatal() -> None:
    rows = index_rows(
        {
            "resourceType": "Observation",
            "id": "o",
            "code": "not a concept",
            "subject": "Patient/1",
            "effectiveDateTime": "soon",
            "valueQuantity": {"value": "7"},
            "category": [None, {"coding": "x"}, {"coding": [{"system": "s"}]}],
        }
    )
    assert rows.count() == 1  # a bare string where a code belongs is still a code
    assert index_rows({"resourceType": "Basic", "id": "b"}).count() == 0


def test_long_values_are_cut() -> None:
    rows = index_rows({"resourceType": "Observation", "id": "o", "code": "x" * 5000})
    [(_, _, code)] = rows.tokens
    assert len(code) == 256


def test_references_of_an_include_parameter() -> None:
    observation = {
        "resourceType": "Observation",
        "id": "o",
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
    }
    patient = param("Observation", "patient")
    assert patient is not None
    assert list(references_of(observation, patient)) == [("Patient", "p1")]
    group = {**observation, "subject": {"reference": "Group/g"}}
    assert list(references_of(group, patient)) == []  # patient: Patients only


def test_every_registered_parameter_reads_the_examples() -> None:
    """Smoke test: the registry's paths are all walkable on every official example."""
    core = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"
    seen = 0
    for path in core.glob("*.json"):
        resource = orjson.loads(path.read_bytes())
        if resource.get("resourceType") in REGISTRY:
            index_rows(resource)
            seen += 1
    assert seen > 50
