"""Normalising a provider's bundle entries: deterministic ids, rewritten references, provenance
stamps and canonical NHS numbers (ingest_gp.normalise)."""

from __future__ import annotations

import copy
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from fhir_common.feeds import Feed, FeedKind
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id
from ingest_gp.normalise import (
    FEED_SOURCE_BASE,
    SETTING_TAG_SYSTEM,
    Entry,
    normalise,
    resolve_reference,
)

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"
CORE = SAMPLES / "fhir-r4-core-examples"
SYNTHEA = SAMPLES / "synthea-r4" / "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json"

GP = Feed(id="gp-a", kind=FeedKind.FHIR, ods="Y01234", setting="primary")
COMMUNITY = Feed(id="community-b", kind=FeedKind.FHIR, ods="RY1", setting="community")


def entries_of(bundle: dict[str, Any]) -> list[Entry]:
    """Entries as bundles.check_entries makes them (deep copies: normalise works in place)."""
    out = []
    for index, raw in enumerate(copy.deepcopy(bundle)["entry"]):
        if "resource" not in raw:
            continue
        method = (raw.get("request") or {}).get("method", "PUT")
        out.append(Entry(index, raw["resource"], raw.get("fullUrl"), method))
    return out


def normalised(bundle: dict[str, Any], feed: Feed = GP) -> list[dict[str, Any]]:
    entries = entries_of(bundle)
    normalise(entries, feed)
    return [e.resource for e in entries]


def small_bundle() -> dict[str, Any]:
    patient = {
        "resourceType": "Patient",
        "id": "pat-1",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}],
    }
    encounter = {
        "resourceType": "Encounter",
        "id": "enc-1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "urn:uuid:5c6f0c44-3c1e-4f0e-9bd5-0d6c8b5f6b11"},
    }
    condition = {
        "resourceType": "Condition",
        "id": "cond-1",
        "subject": {"reference": "Patient/pat-1"},
        "encounter": {"reference": "https://gp.example.nhs.uk/fhir/Encounter/enc-1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
    }
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": "urn:uuid:5c6f0c44-3c1e-4f0e-9bd5-0d6c8b5f6b11", "resource": patient},
            {"fullUrl": "urn:uuid:0b5e8e2a-52a8-4f4e-8a3a-8a1f9b0f1e22", "resource": encounter},
            {"resource": condition},
        ],
    }


# --- deterministic ids ---------------------------------------------------------------------------


def test_ids_are_uuid5_of_feed_type_and_source_id() -> None:
    patient, encounter, condition = normalised(small_bundle())
    assert patient["id"] == resource_id("gp-a", "Patient", "pat-1")
    assert encounter["id"] == resource_id("gp-a", "Encounter", "enc-1")
    assert condition["id"] == resource_id("gp-a", "Condition", "cond-1")
    assert uuid.UUID(patient["id"]).version == 5


def test_the_same_input_gives_the_same_ids_and_content() -> None:
    assert normalised(small_bundle()) == normalised(small_bundle())


def test_another_feed_gives_other_ids() -> None:
    ours = [r["id"] for r in normalised(small_bundle(), GP)]
    theirs = [r["id"] for r in normalised(small_bundle(), COMMUNITY)]
    assert set(ours).isdisjoint(theirs)


def test_without_an_id_the_full_url_is_the_source_id() -> None:
    bundle = small_bundle()
    del bundle["entry"][1]["resource"]["id"]
    encounter = normalised(bundle)[1]
    assert encounter["id"] == resource_id(
        "gp-a", "Encounter", "urn:uuid:0b5e8e2a-52a8-4f4e-8a3a-8a1f9b0f1e22"
    )


def test_without_id_or_full_url_the_content_is_the_identity() -> None:
    bundle = small_bundle()
    del bundle["entry"][2]["resource"]["id"]
    first = normalised(bundle)[2]["id"]
    assert normalised(bundle)[2]["id"] == first  # a resend is the same resource
    bundle["entry"][2]["resource"]["code"]["coding"][0]["code"] = "46635009"
    assert normalised(bundle)[2]["id"] != first  # other content, other resource
    uuid.UUID(first)


# --- references ----------------------------------------------------------------------------------


def test_urn_uuid_relative_and_absolute_references_point_at_the_new_ids() -> None:
    patient, encounter, condition = normalised(small_bundle())
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert condition["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert condition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}


def test_references_to_resources_outside_the_bundle_are_mapped_deterministically() -> None:
    bundle = small_bundle()
    bundle["entry"][2]["resource"]["recorder"] = {"reference": "Practitioner/dr-who"}
    condition = normalised(bundle)[2]
    expected = resource_id("gp-a", "Practitioner", "dr-who")
    assert condition["recorder"] == {"reference": f"Practitioner/{expected}"}
    # the same way the Practitioner itself is given its id when it is sent
    practitioner = normalised(
        {"entry": [{"resource": {"resourceType": "Practitioner", "id": "dr-who"}}]}
    )[0]
    assert practitioner["id"] == expected


def test_references_already_holding_one_of_our_ids_are_left_alone() -> None:
    ours = resource_id("gp-a", "Patient", "pat-9")
    assert resolve_reference(f"Patient/{ours}", {}, GP) == f"Patient/{ours}"
    # a UUID that is not a v5 is a provider's id like any other, and is mapped
    theirs = "0d2177ba-f67b-4f29-addb-91040de55388"
    assert resolve_reference(f"Patient/{theirs}", {}, GP) == (
        f"Patient/{resource_id('gp-a', 'Patient', theirs)}"
    )


@pytest.mark.parametrize(
    "reference",
    [
        "#coverage",  # contained
        "urn:uuid:11111111-2222-4333-8444-555555555555",  # not in the bundle
        "urn:oid:1.2.36.146.595.217.0.1",
        "https://elsewhere.example.org/fhir/Patient/77",  # another server
    ],
)
def test_contained_urn_and_external_references_are_untouched(reference: str) -> None:
    bundle = small_bundle()
    bundle["entry"][2]["resource"]["asserter"] = {"reference": reference}
    assert normalised(bundle)[2]["asserter"] == {"reference": reference}


def test_contained_resources_keep_their_ids_and_local_references() -> None:
    bundle = small_bundle()
    condition = bundle["entry"][2]["resource"]
    condition["contained"] = [{"resourceType": "Practitioner", "id": "p1"}]
    condition["asserter"] = {"reference": "#p1"}
    out = normalised(bundle)[2]
    assert out["contained"] == [{"resourceType": "Practitioner", "id": "p1"}]
    assert out["asserter"] == {"reference": "#p1"}


def test_the_official_bundle_references_example_resolves_as_fhir_says() -> None:
    """hl7.fhir.r4.examples Bundle-bundle-references: relative, absolute, urn:uuid, versioned
    and logical references inside one collection."""
    bundle = json.loads((CORE / "Bundle-bundle-references.json").read_text())
    out = normalised(bundle)
    patient_23, anonymous = out[0]["id"], out[1]["id"]
    assert patient_23 == resource_id("gp-a", "Patient", "23")
    assert anonymous == resource_id(
        "gp-a", "Patient", "urn:uuid:04121321-4af5-424c-a0e1-ed3aab1c349d"
    )
    assert out[2]["subject"]["reference"] == f"Patient/{patient_23}"  # Patient/23
    assert out[3]["subject"]["reference"] == f"Patient/{patient_23}"  # http://.../Patient/23
    assert out[4]["subject"]["reference"] == f"Patient/{anonymous}"  # urn:uuid
    # another server's Patient/1, not in the bundle: left as it is
    assert out[5]["subject"]["reference"] == "http://example.org/fhir-2/Patient/1"
    # two versions of Patient/45 are one resource; Patient/45/_history/2 points at it
    assert out[7]["id"] == out[8]["id"] == resource_id("gp-a", "Patient", "45")
    assert out[9]["subject"]["reference"] == f"Patient/{out[7]['id']}"
    # a logical reference (identifier only) is not a reference to rewrite
    assert out[10]["subject"] == {
        "identifier": {"system": "http://example.org/ids", "value": "1234567"}
    }


def test_a_synthea_bundle_ends_with_every_reference_inside_it() -> None:
    bundle = json.loads(SYNTHEA.read_text())
    out = normalised(bundle)
    ids = {f"{r['resourceType']}/{r['id']}" for r in out}
    assert len(ids) == len(out)

    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("reference"), str):
                found.append(node["reference"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(out)
    outside = [r for r in found if not r.startswith("#") and r not in ids]
    assert found
    assert outside == []
    assert not any(r.startswith("urn:uuid:") for r in found)
    assert any(r == "#coverage" for r in found)  # Synthea's contained Coverage stays local


# --- provenance stamps ---------------------------------------------------------------------------


def test_meta_source_and_setting_tag_are_set() -> None:
    patient = normalised(small_bundle(), COMMUNITY)[0]
    assert patient["meta"]["source"] == f"{FEED_SOURCE_BASE}community-b"
    assert patient["meta"]["tag"] == [{"system": SETTING_TAG_SYSTEM, "code": "community"}]


def test_an_existing_setting_tag_is_replaced_and_other_meta_kept() -> None:
    bundle = small_bundle()
    bundle["entry"][0]["resource"]["meta"] = {
        "source": "https://gp.example.nhs.uk/emis",
        "profile": ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"],
        "tag": [
            {"system": SETTING_TAG_SYSTEM, "code": "acute"},
            {"system": "https://smarthealthit.org/tags", "code": "synthea-5-2019"},
        ],
    }
    meta = normalised(bundle)[0]["meta"]
    assert meta["source"] == f"{FEED_SOURCE_BASE}gp-a"
    assert meta["profile"] == ["https://fhir.hl7.org.uk/StructureDefinition/UKCore-Patient"]
    assert meta["tag"] == [
        {"system": "https://smarthealthit.org/tags", "code": "synthea-5-2019"},
        {"system": SETTING_TAG_SYSTEM, "code": "primary"},
    ]


def test_stamping_twice_does_not_duplicate_the_tag() -> None:
    entries = entries_of(small_bundle())
    normalise(entries, GP)
    normalise(entries, GP)
    tags = entries[0].resource["meta"]["tag"]
    assert tags == [{"system": SETTING_TAG_SYSTEM, "code": "primary"}]


# --- NHS numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["943 476 5919", "943-476-5919", " 9434765919 "])
def test_nhs_numbers_are_stored_canonically(written: str) -> None:
    bundle = small_bundle()
    bundle["entry"][0]["resource"]["identifier"] = [
        {"system": NHS_NUMBER_SYSTEM, "value": written},
        {"system": "https://fhir.nhs.uk/Id/example-local", "value": "943 476 5919"},
    ]
    identifiers = normalised(bundle)[0]["identifier"]
    assert identifiers == [
        {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"},
        {"system": "https://fhir.nhs.uk/Id/example-local", "value": "943 476 5919"},
    ]


def test_an_invalid_nhs_number_is_not_rewritten() -> None:
    bundle = small_bundle()
    bundle["entry"][0]["resource"]["identifier"] = [
        {"system": NHS_NUMBER_SYSTEM, "value": "943 476 5918"}
    ]
    patient = normalised(bundle)[0]
    assert patient["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": "943 476 5918"}]


def test_encoding_rewrites_references_as_the_walk_does() -> None:
    """normalise.encode (references rewritten in the JSON text) makes exactly what finish makes
    (references rewritten by walking the resource), for a whole Synthea record and for the
    official examples with their odd references."""
    from ingest_gp.normalise import assign_ids, encode, finish

    bundles = [json.loads(SYNTHEA.read_text())]
    bundles += [
        json.loads(p.read_text())
        for p in sorted(CORE.glob("Bundle-*.json"))
        if json.loads(p.read_text()).get("type") in ("collection", "transaction")
    ]
    for bundle in bundles:
        entries = [e for e in entries_of(bundle) if isinstance(e.resource, dict)]
        walked = copy.deepcopy(entries)
        renames = assign_ids(entries, GP)
        assign_ids(walked, GP)
        encoded = [encode(e, renames, GP) for e in entries]
        finish(walked, renames, GP)
        assert [json.loads(v) for v in encoded] == [e.resource for e in walked]
