"""FHIR R4 validation at the edge: precise locations for every problem, on real samples."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_common.errors import FhirError, Issue
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from fhir_common.validation import (
    parse_json,
    parse_resource,
    validate_bundle_entries,
    validate_resource,
)

SAMPLES = Path(os.environ.get("JOINEDUP_SAMPLES", Path(__file__).parents[4] / "shared/samples"))
CORE = SAMPLES / "fhir-r4-core-examples"
SYNTHEA = SAMPLES / "synthea-r4"
CONVERTER = SAMPLES / "fhir-converter-hl7v2/expected-fhir-r4"

CORE_RESOURCES = sorted(p for p in CORE.glob("*.json") if p.name != "package.json")
CONVERTER_BUNDLES = sorted(CONVERTER.glob("*/*.json"))


def load(path: Path) -> Any:
    return parse_json(path.read_bytes())


def where(issues: list[Issue]) -> list[tuple[str, list[str]]]:
    return [(i.code, list(i.expression)) for i in issues]


# --- parse_json -------------------------------------------------------------------------------


def test_malformed_json_is_400_structure_with_position() -> None:
    with pytest.raises(FhirError) as caught:
        parse_json(b'{"resourceType": "Patient",\n "birthDate": 1950-01-01}')
    assert caught.value.status == 400
    [issue] = caught.value.issues
    assert issue.code == "structure"
    assert "line 2, column 19" in issue.diagnostics  # the "-" after 1950
    assert caught.value.outcome()["issue"][0]["code"] == "structure"


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1}{', b"\xff\xfe", b'{"a": NaN}'])
def test_every_kind_of_malformed_body_is_400(body: bytes) -> None:
    with pytest.raises(FhirError) as caught:
        parse_json(body)
    assert caught.value.status == 400
    assert caught.value.issues[0].code == "structure"


def test_parse_json_ignores_a_utf8_bom() -> None:
    assert parse_json(b'\xef\xbb\xbf{"resourceType": "Patient"}') == {"resourceType": "Patient"}
    assert parse_json('\ufeff{"a": 1}') == {"a": 1}


# --- real samples: official R4 examples, Synthea, FHIR-Converter output -------------------------


@pytest.mark.parametrize("path", CORE_RESOURCES, ids=lambda p: p.name)
def test_official_r4_examples_validate(path: Path) -> None:
    assert validate_resource(load(path)) == []


def test_official_examples_cover_many_types() -> None:
    types = {load(p)["resourceType"] for p in CORE_RESOURCES}
    assert len(CORE_RESOURCES) > 250
    assert {"Patient", "Bundle", "Encounter", "Observation", "CarePlan", "CareTeam"} <= types


def test_package_manifest_is_not_a_resource() -> None:
    issues = validate_resource(load(CORE / "package.json"))
    assert where(issues) == [("required", ["resourceType"])]


@pytest.mark.parametrize("path", sorted(SYNTHEA.glob("*.json")), ids=lambda p: p.name[:20])
def test_synthea_bundles_validate(path: Path) -> None:
    bundle = load(path)
    assert bundle["type"] == "transaction"
    assert validate_bundle_entries(bundle) == []


def test_converter_provenances_without_agent_fail_precisely() -> None:
    # FHIR-Converter's expected output for ADT01-23 has a Provenance with no agent (1..* in R4).
    bundle = load(CONVERTER / "ADT_A01/ADT01-23-expected.json")
    assert bundle["entry"][12]["resource"]["resourceType"] == "Provenance"
    issues = validate_bundle_entries(bundle)
    assert where(issues) == [("required", ["Bundle.entry[12].resource.agent"])]


def test_converter_provenance_agent_without_who_fails_precisely() -> None:
    # LAB-ORU-1 has a Provenance.agent with only a type: agent.who is 1..1.
    issues = validate_bundle_entries(load(CONVERTER / "ORU_R01/LAB-ORU-1-expected.json"))
    assert where(issues) == [("required", ["Bundle.entry[1].resource.agent[0].who"])]


def test_converter_outputs_fail_only_on_provenance_agent() -> None:
    failing = {}
    for path in CONVERTER_BUNDLES:
        issues = validate_bundle_entries(load(path))
        if issues:
            failing[path.name] = [e for i in issues for e in i.expression]
    assert failing == {
        "ADT01-23-expected.json": ["Bundle.entry[12].resource.agent"],
        "ADT01-28-expected.json": ["Bundle.entry[10].resource.agent"],
        "ADT04-28-expected.json": ["Bundle.entry[13].resource.agent"],
        "LAB-ORU-1-expected.json": ["Bundle.entry[1].resource.agent[0].who"],
        "LAB-ORU-2-expected.json": ["Bundle.entry[1].resource.agent[0].who"],
    }


# --- precise locations ------------------------------------------------------------------------


def test_impossible_birth_date_is_reported_at_birth_date() -> None:
    patient = load(CORE / "Patient-example.json")
    patient["birthDate"] = "1950-13-01"
    issues = validate_resource(patient)
    assert where(issues) == [("value", ["Patient.birthDate"])]
    assert "'1950-13-01'" in issues[0].diagnostics


def test_unknown_element_is_reported_at_its_path() -> None:
    patient = load(CORE / "Patient-example.json")
    patient["name"][1]["nickname"] = "Jim"
    patient["favouriteColour"] = "blue"
    issues = validate_resource(patient)
    assert sorted(where(issues)) == [
        ("structure", ["Patient.favouriteColour"]),
        ("structure", ["Patient.name[1].nickname"]),
    ]
    assert any("'nickname'" in i.diagnostics for i in issues)


def test_wrong_primitive_in_a_list_is_reported_at_its_index() -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Ann", 7]}]}
    assert where(validate_resource(patient)) == [("value", ["Patient.name[0].given[1]"])]


def test_path_prefix_replaces_the_resource_type() -> None:
    patient = {"resourceType": "Patient", "birthDate": "yesterday"}
    issues = validate_resource(patient, "Bundle.entry[2].resource")
    assert where(issues) == [("value", ["Bundle.entry[2].resource.birthDate"])]


def test_cardinality_errors_are_located() -> None:
    patient = {"resourceType": "Patient", "identifier": {"value": "x"}, "link": [{"type": "refer"}]}
    assert sorted(where(validate_resource(patient))) == [
        ("required", ["Patient.link[0].other"]),
        ("structure", ["Patient.identifier"]),
    ]


def test_choice_types_are_not_flagged() -> None:
    observation = load(CORE / "Observation-example.json")
    assert "valueQuantity" in observation
    assert validate_resource(observation) == []
    patient = {"resourceType": "Patient", "deceasedDateTime": "2020-02-01T10:00:00Z"}
    assert validate_resource(patient) == []
    patient = {"resourceType": "Patient", "multipleBirthInteger": 2}
    assert validate_resource(patient) == []


def test_choice_given_twice_is_reported_at_the_choice_element() -> None:
    patient = {"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"}
    issues = validate_resource(patient)
    assert where(issues) == [("structure", ["Patient.deceased"])]
    assert "deceasedBoolean, deceasedDateTime" in issues[0].diagnostics
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "bp"},
        "component": [
            {"code": {"text": "sys"}, "valueQuantity": {"value": 120}},
            {"code": {"text": "dia"}, "valueQuantity": {"value": 80}, "valueString": "80"},
        ],
    }
    assert where(validate_resource(observation)) == [
        ("structure", ["Observation.component[1].value"])
    ]


def test_required_choice_missing_is_reported() -> None:
    request = {"resourceType": "MedicationRequest", "status": "active", "intent": "order"}
    request["subject"] = {"reference": "Patient/1"}
    issues = validate_resource(request)
    assert where(issues) == [("required", ["MedicationRequest.medication"])]


def test_unknown_choice_type_is_an_unknown_element() -> None:
    patient = {"resourceType": "Patient", "deceasedString": "yes"}
    assert where(validate_resource(patient)) == [("structure", ["Patient.deceasedString"])]


def test_primitive_extensions_are_not_flagged() -> None:
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason"}
    patient = {
        "resourceType": "Patient",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{**absent, "valueCode": "masked"}]},
        "name": [
            {
                "given": ["Ann", None],
                "_given": [None, {"extension": [absent | {"valueCode": "unknown"}]}],
            }
        ],
    }
    assert validate_resource(patient) == []


def test_errors_inside_primitive_extensions_point_at_the_element() -> None:
    patient = {
        "resourceType": "Patient",
        "_birthDate": {"extension": [{"valueCode": "masked"}]},
        "name": [{"_given": [{"extension": [{"url": "http://x", "valueNope": 1}]}]}],
    }
    assert sorted(where(validate_resource(patient))) == [
        ("required", ["Patient.birthDate.extension[0].url"]),
        ("structure", ["Patient.name[0].given[0].extension[0].valueNope"]),
    ]


def test_unknown_underscore_element_keeps_its_name() -> None:
    patient = {"resourceType": "Patient", "_nickname": {"id": "x"}}
    assert where(validate_resource(patient)) == [("structure", ["Patient._nickname"])]


# --- resource types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "resource_type", ["Pateint", "MedicinalProduct", "Identifier", "DomainResource", "patient", 7]
)
def test_unknown_resource_type_is_not_supported(resource_type: Any) -> None:
    issues = validate_resource({"resourceType": resource_type, "id": "x"})
    assert where(issues) == [("not-supported", ["resourceType"])]
    assert repr(resource_type) in issues[0].diagnostics


def test_unknown_nested_resource_types_are_located() -> None:
    patient = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "name": "ok"}, {"resourceType": "Bogus"}],
    }
    assert where(validate_resource(patient)) == [("not-supported", ["Patient.contained[1]"])]


def test_contained_resources_are_validated() -> None:
    patient = {
        "resourceType": "Patient",
        "contained": [{"resourceType": "Organization", "id": "o1", "active": "maybe", "x": 1}],
    }
    assert sorted(where(validate_resource(patient))) == [
        ("structure", ["Patient.contained[0].x"]),
        ("value", ["Patient.contained[0].active"]),
    ]


def test_not_an_object() -> None:
    assert where(validate_resource([])) == [("structure", [])]
    assert where(validate_resource("Patient", "Bundle.entry[0].resource")) == [
        ("structure", ["Bundle.entry[0].resource"])
    ]


# --- NHS numbers ------------------------------------------------------------------------------


def test_bad_nhs_number_is_reported_at_the_identifier_value() -> None:
    patient = load(CORE / "Patient-example.json")
    patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": "9434765918"})
    index = len(patient["identifier"]) - 1
    issues = validate_resource(patient)
    assert where(issues) == [("value", [f"Patient.identifier[{index}].value"])]
    assert "'9434765918'" in issues[0].diagnostics


def test_uk_core_baby_patient_nhs_number_would_be_rejected() -> None:
    # The UK Core BabyPatient example (XML) carries 9912003890, whose check digit should be 6.
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9912003890"}],
    }
    assert where(validate_resource(patient)) == [("value", ["Patient.identifier[0].value"])]
    patient["identifier"][0]["value"] = "9912003888"  # UK Core RichardSmith: valid
    assert validate_resource(patient) == []


def test_nhs_numbers_are_checked_at_any_depth() -> None:
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "EMER"},
        "subject": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"}},
        "participant": [
            {"individual": {"identifier": {"system": "urn:other", "value": "123"}}},
        ],
    }
    issues = validate_resource(encounter)
    assert where(issues) == [("value", ["Encounter.subject.identifier.value"])]


def test_nhs_number_inside_a_bundle_points_at_the_entry() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}],
                }
            },
            {
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "1234567890"}],
                }
            },
        ],
    }
    expected = [("value", ["Bundle.entry[1].resource.identifier[0].value"])]
    assert where(validate_bundle_entries(bundle)) == expected
    assert where(validate_resource(bundle)) == expected


# --- parse_resource ---------------------------------------------------------------------------


def test_parse_resource_returns_the_r4b_model() -> None:
    data = load(CORE / "Patient-example.json")
    before = copy.deepcopy(data)
    patient = parse_resource(data)
    assert type(patient).__module__ == "fhir.resources.R4B.patient"
    assert patient.get_resource_type() == "Patient"
    assert patient.birthDate.isoformat() == data["birthDate"]
    assert data == before  # the caller's dict is not changed


def test_parse_resource_from_bytes() -> None:
    raw = (CORE / "Encounter-emerg.json").read_bytes()
    encounter = parse_resource(raw)
    assert encounter.get_resource_type() == "Encounter"
    assert encounter.class_fhir.code == orjson.loads(raw)["class"]["code"] == "IMP"
    assert encounter.hospitalization.admitSource.coding[0].code == "emd"  # came in via A&E


def test_parse_resource_invalid_is_422_with_every_issue() -> None:
    body = orjson.dumps(
        {
            "resourceType": "Patient",
            "birthDate": "1950-13-01",
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765918"}],
            "colour": "red",
        }
    )
    with pytest.raises(FhirError) as caught:
        parse_resource(body)
    assert caught.value.status == 422
    assert sorted(where(caught.value.issues)) == [
        ("structure", ["Patient.colour"]),
        ("value", ["Patient.birthDate"]),
        ("value", ["Patient.identifier[0].value"]),
    ]
    outcome = caught.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert {tuple(i["expression"]) for i in outcome["issue"]} == {
        ("Patient.colour",),
        ("Patient.birthDate",),
        ("Patient.identifier[0].value",),
    }


def test_parse_resource_malformed_or_non_object_is_400() -> None:
    for body in (b'{"resourceType": "Patient"', b"[]", b'"Patient"'):
        with pytest.raises(FhirError) as caught:
            parse_resource(body)
        assert caught.value.status == 400
        assert caught.value.issues[0].code == "structure"


def test_parse_resource_unknown_type_is_422_not_supported() -> None:
    with pytest.raises(FhirError) as caught:
        parse_resource({"resourceType": "Spaceship"})
    assert caught.value.status == 422
    assert where(caught.value.issues) == [("not-supported", ["resourceType"])]


# --- validate_bundle_entries ------------------------------------------------------------------


def test_every_bad_entry_is_reported_not_just_the_first() -> None:
    bundle = load(CORE / "Bundle-bundle-example.json")
    assert validate_bundle_entries(bundle) == []
    bundle["entry"][0]["resource"]["status"] = None
    bundle["entry"][0]["resource"]["foo"] = 1
    bundle["entry"][1]["resource"]["id"] = "not an id!"
    bundle["entry"].append({"fullUrl": "urn:uuid:x", "resource": {"resourceType": "Nope"}})
    issues = validate_bundle_entries(bundle)
    first_type = bundle["entry"][0]["resource"]["resourceType"]
    assert first_type == "MedicationRequest"
    assert sorted(where(issues)) == [
        ("not-supported", ["Bundle.entry[2].resource.resourceType"]),
        ("required", ["Bundle.entry[0].resource.status"]),
        ("structure", ["Bundle.entry[0].resource.foo"]),
        ("value", ["Bundle.entry[1].resource.id"]),
    ]


def test_bundle_shell_is_validated() -> None:
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": 12, "resource": {"resourceType": "Patient"}},
            "not an entry",
            {"request": {"method": "DELETE", "url": "Patient/1"}},
        ],
    }
    assert sorted(where(validate_bundle_entries(bundle))) == [
        ("required", ["Bundle.type"]),
        ("structure", ["Bundle.entry[1]"]),
        ("value", ["Bundle.entry[0].fullUrl"]),
    ]


def test_bundle_entry_must_be_a_list() -> None:
    issues = validate_bundle_entries({"resourceType": "Bundle", "type": "batch", "entry": {}})
    assert where(issues) == [("structure", ["Bundle.entry"])]


def test_validate_bundle_entries_needs_a_bundle() -> None:
    assert where(validate_bundle_entries({"resourceType": "Patient"})) == [
        ("invalid", ["resourceType"])
    ]
    assert where(validate_bundle_entries([])) == [("structure", [])]


# --- every problem in one answer --------------------------------------------------------------
# fhir.resources checks required primitives and choices only once all other fields are valid;
# the validator prunes what it has reported and validates again so these are not hidden.


def test_missing_status_is_reported_alongside_an_unknown_element() -> None:
    request = load(CORE / "MedicationRequest-medrx0301.json")
    del request["status"]
    request["dosageInstructions"] = []
    assert sorted(where(validate_resource(request))) == [
        ("required", ["MedicationRequest.status"]),
        ("structure", ["MedicationRequest.dosageInstructions"]),
    ]


def test_nested_required_and_choice_errors_alongside_other_errors() -> None:
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": "Patient/1"}],
        "recorded": "2020-01-01T00:00:00Z",
        "agent": [{"type": {"text": "author"}}],
        "signature": "none",
    }
    assert sorted(where(validate_resource(provenance))) == [
        ("required", ["Provenance.agent[0].who"]),
        ("structure", ["Provenance.signature"]),
    ]


def test_pruning_an_invalid_element_does_not_invent_issues() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/1"},
        "medicationCodeableConcept": "paracetamol",  # invalid, but medication[x] is given
    }
    assert where(validate_resource(request)) == [
        ("structure", ["MedicationRequest.medicationCodeableConcept"])
    ]
    encounter = {
        "resourceType": "Encounter",
        "class": {"code": "EMER"},
        "_status": {"extension": [{"url": 7}]},  # status explained by an extension (a bad one)
    }
    assert where(validate_resource(encounter)) == [("value", ["Encounter.status.extension[0].url"])]
