"""Which patient a resource is about, and so its Kafka key (ingest_gp.patients)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fhir_common.feeds import Feed, FeedKind
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from ingest_gp.patients import key_for, own_key, patient_reference

CORE = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"
FEED = Feed(id="gp-a", kind=FeedKind.FHIR, ods="Y01234", setting="primary")


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / name).read_text())
    return data


def patient(identifiers: list[dict[str, str]] | None = None, id_: str = "p1") -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": id_}
    if identifiers is not None:
        resource["identifier"] = identifiers
    return resource


# --- own keys of patients ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifiers", "key"),
    [
        ([{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}], "9434765919"),
        ([{"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"}], "9434765919"),
        (
            [
                {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"},
                {"system": NHS_NUMBER_SYSTEM, "value": "9912003888"},
            ],
            "9912003888",
        ),
        ([{"system": NHS_NUMBER_SYSTEM, "value": "9434765918"}], "gp-a|p1"),  # bad check digit
        ([{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "9434765919"}], "gp-a|p1"),
        ([], "gp-a|p1"),
        (None, "gp-a|p1"),
    ],
)
def test_a_patient_is_keyed_by_nhs_number_when_valid_else_feed_and_id(
    identifiers: list[dict[str, str]] | None, key: str
) -> None:
    assert own_key(patient(identifiers), FEED) == key


def test_the_official_patient_example_has_no_nhs_number() -> None:
    example = sample("Patient-example.json")
    assert own_key(example, FEED) == "gp-a|example"
    assert key_for(example, FEED, {}) == "gp-a|example"


# --- which patient a resource is about -----------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "reference"),
    [
        (patient(id_="abc"), "Patient/abc"),
        (sample("Encounter-example.json"), "Patient/example"),  # subject
        (sample("AllergyIntolerance-example.json"), "Patient/example"),  # patient
        ({"resourceType": "Task", "id": "t", "for": {"reference": "Patient/x"}}, "Patient/x"),
        (sample("Organization-1.json"), None),
        (sample("Practitioner-example.json"), None),
        # about a group, not a patient
        ({"resourceType": "Observation", "id": "o", "subject": {"reference": "Group/g"}}, None),
        # a logical reference only
        (
            {
                "resourceType": "Observation",
                "id": "o",
                "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}},
            },
            None,
        ),
    ],
)
def test_patient_reference(resource: dict[str, Any], reference: str | None) -> None:
    assert patient_reference(resource) == reference


# --- keys of resources about patients ------------------------------------------------------------


def test_a_resource_gets_the_key_of_its_patient_from_the_map() -> None:
    encounter = sample("Encounter-example.json")
    known = {"Patient/example": "9434765919"}
    assert key_for(encounter, FEED, known) == "9434765919"


def test_a_resource_about_an_unknown_patient_gets_feed_and_patient_id() -> None:
    encounter = sample("Encounter-example.json")
    assert key_for(encounter, FEED, {"Patient/other": "9434765919"}) == "gp-a|example"


def test_a_resource_about_no_patient_is_keyed_by_its_own_identity() -> None:
    organization = sample("Organization-1.json")
    assert key_for(organization, FEED, {}) == "gp-a|Organization/1"
    practitioner = sample("Practitioner-example.json")
    assert key_for(practitioner, FEED, {"Patient/example": "9434765919"}) == (
        "gp-a|Practitioner/example"
    )


def test_a_patient_in_the_map_and_an_unknown_one_of_another_feed() -> None:
    feed_b = Feed(id="acute-b", kind=FeedKind.HL7V2, ods="RR8", setting="acute")
    condition = sample("Condition-example.json")
    assert key_for(condition, feed_b, {}) == "acute-b|example"
    assert key_for(condition, feed_b, {"Patient/example": "9912003888"}) == "9912003888"


def test_a_patient_in_a_bundle_is_keyed_through_the_map_bundles_builds() -> None:
    """``key_for`` of a Patient reads the map, which bundles.patients_in fills with the
    Patient's own key for every Patient of the bundle."""
    nhs = patient([{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}])
    assert key_for(nhs, FEED, {"Patient/p1": own_key(nhs, FEED)}) == "9434765919"
    assert key_for(patient(), FEED, {"Patient/p1": own_key(patient(), FEED)}) == "gp-a|p1"
