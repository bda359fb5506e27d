"""Value sets and code constants (DESIGN.md "Codes")."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_common import codes
from fhir_common.codes import (
    ADMISSION_METHODS,
    AMB,
    CARE_COORDINATOR,
    CARE_COORDINATOR_ROLE,
    DIABETES,
    DIABETES_TYPE_1,
    DIABETES_TYPE_2,
    DIABETIC_MEDICINE,
    DIABETIC_MEDICINE_ROLE,
    EMER,
    EMERGENCY_ADMISSION,
    EMERGENCY_ADMISSION_METHODS,
    FRAILTY,
    FRAILTY_MILD,
    FRAILTY_MODERATE,
    FRAILTY_SEVERE,
    HBA1C,
    HYPOGLYCAEMIA,
    HYPOGLYCAEMIC_COMA,
    ICD10,
    ICD10_CM,
    ICD10_UK,
    IMP,
    LOINC,
    SNOMED,
    V3_ACT_CODE,
    Setting,
    ValueSet,
    encounter_class,
)

SAMPLES = Path(os.environ.get("JOINEDUP_SAMPLES", Path(__file__).parents[4] / "shared/samples"))
SYNTHEA = SAMPLES / "synthea-r4"


def cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def synthea_resources(resource_type: str) -> list[dict[str, Any]]:
    found = []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = orjson.loads(path.read_bytes())
        found += [e["resource"] for e in bundle["entry"]]
    return [r for r in found if r["resourceType"] == resource_type]


def test_system_uris() -> None:
    assert SNOMED == "http://snomed.info/sct"
    assert ICD10 == "http://hl7.org/fhir/sid/icd-10"
    assert ICD10_UK == "http://hl7.org/fhir/sid/icd-10-uk"
    assert LOINC == "http://loinc.org"
    assert V3_ACT_CODE == "http://terminology.hl7.org/CodeSystem/v3-ActCode"


# --- hypoglycaemia --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sctid", ["302866003", "237633009", "237632004", "237635002", "421725003", "719216001"]
)
def test_hypoglycaemia_snomed(sctid: str) -> None:
    assert HYPOGLYCAEMIA.contains(SNOMED, sctid)


@pytest.mark.parametrize("system", [ICD10, ICD10_UK])
@pytest.mark.parametrize("code", ["E16.0", "E160", "E16.1", "e16.2", "E16.2 ", "E162X"])
def test_hypoglycaemia_icd10(system: str, code: str) -> None:
    assert HYPOGLYCAEMIA.contains(system, code)


@pytest.mark.parametrize(
    "code",
    [
        "E16.3",  # increased secretion of glucagon
        "E16",  # the category alone is not specific to hypoglycaemia
        "E10.6",  # "with other specified complications": not hypoglycaemia in WHO/UK ICD-10
        "E11.6",
        "E10.64",  # ICD-10-CM only: not a code of ICD-10 (WHO/UK)
        "E10.0",  # diabetic coma of any kind
        "E11.9",
    ],
)
def test_hypoglycaemia_excludes_unspecific_icd10(code: str) -> None:
    assert not HYPOGLYCAEMIA.contains(ICD10, code)
    assert not HYPOGLYCAEMIA.contains(ICD10_UK, code)


def test_hypoglycaemia_icd10_cm_has_its_own_codes() -> None:
    assert HYPOGLYCAEMIA.contains(ICD10_CM, "E11.649")
    assert HYPOGLYCAEMIA.contains(ICD10_CM, "E10.641")
    assert not HYPOGLYCAEMIA.contains(ICD10_CM, "E11.65")  # with hyperglycaemia


def test_hypoglycaemic_coma() -> None:
    assert HYPOGLYCAEMIC_COMA.contains(SNOMED, "421725003")
    assert HYPOGLYCAEMIC_COMA.contains(SNOMED, "719216001")
    assert HYPOGLYCAEMIC_COMA.contains(ICD10, "E10.0")
    assert HYPOGLYCAEMIC_COMA.contains(ICD10_UK, "E110")
    assert not HYPOGLYCAEMIC_COMA.contains(ICD10, "E10.1")
    assert not HYPOGLYCAEMIC_COMA.contains(SNOMED, "302866003")
    assert not HYPOGLYCAEMIC_COMA.contains(ICD10, "E16.0")


def test_snomed_codes_match_exactly() -> None:
    assert not HYPOGLYCAEMIA.contains(SNOMED, "3028660")
    assert not HYPOGLYCAEMIA.contains(SNOMED, "3028660031")
    assert not HYPOGLYCAEMIA.contains("http://snomed.info/sct/", "302866003")
    assert not HYPOGLYCAEMIA.contains(LOINC, "302866003")


def test_snomed_descendants_extension_point() -> None:
    # e.g. from a terminology server's $expand of << 302866003 at deployment time
    extended = HYPOGLYCAEMIA.with_codes([(SNOMED, "190448007")])
    assert extended.contains(SNOMED, "190448007")
    assert extended.contains(SNOMED, "302866003")
    assert not HYPOGLYCAEMIA.contains(SNOMED, "190448007")  # the original is unchanged
    assert extended.name == HYPOGLYCAEMIA.name


# --- diabetes ---------------------------------------------------------------------------------


def test_diabetes_types() -> None:
    assert DIABETES_TYPE_1.contains(SNOMED, "46635009")
    assert DIABETES_TYPE_2.contains(SNOMED, "44054006")
    assert not DIABETES_TYPE_1.contains(SNOMED, "44054006")
    assert DIABETES_TYPE_1.contains(ICD10, "E10.9")
    assert DIABETES_TYPE_1.contains(ICD10_UK, "E109")
    assert DIABETES_TYPE_2.contains(ICD10, "E11.65")
    assert not DIABETES_TYPE_2.contains(ICD10, "E10.9")
    assert not DIABETES_TYPE_1.contains(ICD10, "E1")
    assert DIABETES_TYPE_1.contains(ICD10, "E100")  # with coma, still type 1 diabetes


def test_diabetes_is_either_type() -> None:
    assert DIABETES.contains(SNOMED, "46635009")
    assert DIABETES.contains(SNOMED, "44054006")
    assert DIABETES.contains(ICD10, "E10")
    assert DIABETES.contains(ICD10, "E11.9")
    assert not DIABETES.contains(ICD10, "E13.9")
    assert DIABETES.codes == DIABETES_TYPE_1.codes | DIABETES_TYPE_2.codes


def test_synthea_diabetes_conditions_match() -> None:
    conditions = synthea_resources("Condition")
    diabetic = [c for c in conditions if DIABETES.matches(c["code"])]
    assert diabetic, "the Synthea samples include patients with diabetes"
    assert all(DIABETES_TYPE_2.matches(c["code"]) for c in diabetic)
    assert not any(HYPOGLYCAEMIA.matches(c["code"]) for c in conditions)


# --- encounters and admissions ----------------------------------------------------------------


def test_emergency_admission() -> None:
    assert EMERGENCY_ADMISSION.contains(SNOMED, "183452005")
    assert not EMERGENCY_ADMISSION.contains(SNOMED, "183452004")


def test_encounter_class_codes_and_synthea() -> None:
    assert (EMER, IMP, AMB) == ("EMER", "IMP", "AMB")
    assert encounter_class(EMER) == {"system": V3_ACT_CODE, "code": "EMER", "display": "emergency"}
    classes = {(e["class"]["system"], e["class"]["code"]) for e in synthea_resources("Encounter")}
    assert {(V3_ACT_CODE, EMER), (V3_ACT_CODE, IMP), (V3_ACT_CODE, AMB)} <= classes


def test_admission_methods() -> None:
    assert set(ADMISSION_METHODS) == {"21", "22", "23", "24", "28"}
    assert "A&E" in ADMISSION_METHODS["21"]
    assert "GP" in ADMISSION_METHODS["22"]
    assert "bed bureau" in ADMISSION_METHODS["23"]
    assert "consultant clinic" in ADMISSION_METHODS["24"]
    assert frozenset(ADMISSION_METHODS) == EMERGENCY_ADMISSION_METHODS
    assert "11" not in EMERGENCY_ADMISSION_METHODS  # elective: waiting list


def test_settings() -> None:
    assert [s.value for s in Setting] == [
        "primary",
        "acute",
        "community",
        "mental-health",
        "social-care",
    ]
    assert Setting("mental-health") is Setting.MENTAL_HEALTH
    assert f"{Setting.SOCIAL_CARE}" == "social-care"
    with pytest.raises(ValueError, match="'hospital'"):
        Setting("hospital")


# --- frailty, HbA1c, roles -------------------------------------------------------------------


def test_frailty() -> None:
    assert FRAILTY.contains(SNOMED, "248279007")
    assert (FRAILTY_MILD, FRAILTY_MODERATE, FRAILTY_SEVERE) == (
        "925791000000100",
        "925831000000107",
        "925861000000102",
    )
    assert all(
        FRAILTY.contains(SNOMED, c) for c in (FRAILTY_MILD, FRAILTY_MODERATE, FRAILTY_SEVERE)
    )


def test_hba1c_and_synthea_observations() -> None:
    assert HBA1C.contains(LOINC, "4548-4")
    assert HBA1C.contains(LOINC, "59261-8")
    assert not HBA1C.contains(LOINC, "4548")
    observations = synthea_resources("Observation")
    hba1c = [o for o in observations if HBA1C.matches(o["code"])]
    assert hba1c
    assert {o["valueQuantity"]["unit"] for o in hba1c} == {"%"}  # 4548-4 is the % code


def test_care_team_roles() -> None:
    assert DIABETIC_MEDICINE_ROLE == "408475000"
    assert CARE_COORDINATOR_ROLE == "768820003"
    assert DIABETIC_MEDICINE.matches(cc(SNOMED, "408475000"))
    assert CARE_COORDINATOR.matches(cc(SNOMED, "768820003"))
    assert not DIABETIC_MEDICINE.matches(cc(SNOMED, "768820003"))


# --- ValueSet behaviour -----------------------------------------------------------------------


def test_matches_any_coding_of_a_codeable_concept() -> None:
    concept = {
        "coding": [
            {"system": "http://example.org/local", "code": "HYPO"},
            {"system": SNOMED, "code": "237633009", "display": "Hypoglycaemia due to diabetes"},
        ],
        "text": "hypo",
    }
    assert HYPOGLYCAEMIA.matches(concept)
    assert not DIABETES.matches(concept)


@pytest.mark.parametrize(
    "concept",
    [
        None,
        {},
        {"text": "hypoglycaemia"},
        {"coding": []},
        {"coding": None},
        {"coding": [{"code": "302866003"}]},  # no system: not a SNOMED code
        {"coding": [{"system": SNOMED}]},
        {"coding": ["302866003"]},
    ],
)
def test_matches_tolerates_missing_parts(concept: Any) -> None:
    assert not HYPOGLYCAEMIA.matches(concept)


def test_matches_any_for_lists_of_concepts() -> None:
    reason_codes = [cc(SNOMED, "386661006"), cc(ICD10, "E16.2")]
    assert HYPOGLYCAEMIA.matches_any(reason_codes)
    assert not HYPOGLYCAEMIA.matches_any([cc(SNOMED, "386661006")])
    assert not HYPOGLYCAEMIA.matches_any(None)


def test_value_sets_are_frozen_and_hashable() -> None:
    with pytest.raises(AttributeError):
        HYPOGLYCAEMIA.name = "other"  # type: ignore[misc]
    assert len({HYPOGLYCAEMIA, HYPOGLYCAEMIA.with_codes([])}) == 1


def test_prefix_matching_can_be_turned_off() -> None:
    exact = ValueSet("exact", "exact ICD-10", frozenset({(ICD10, "E16.0")}), frozenset())
    assert exact.contains(ICD10, "E16.0")
    assert not exact.contains(ICD10, "E160")
    assert not exact.contains(ICD10, "E16.00")


def test_every_named_value_set_has_codes_and_a_description() -> None:
    sets = {name: v for name, v in vars(codes).items() if isinstance(v, ValueSet)}
    assert set(sets) == {
        "HYPOGLYCAEMIA",
        "HYPOGLYCAEMIC_COMA",
        "DIABETES_TYPE_1",
        "DIABETES_TYPE_2",
        "DIABETES",
        "EMERGENCY_ADMISSION",
        "FRAILTY",
        "HBA1C",
        "DIABETIC_MEDICINE",
        "CARE_COORDINATOR",
    }
    for value_set in sets.values():
        assert value_set.codes
        assert value_set.name
        assert value_set.description
