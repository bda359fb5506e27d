"""DG1 as a FHIR Condition, and the same diagnosis inline on the Encounter.

DESIGN.md wants an Encounter to carry its diagnosis codes itself, so that encounter rules
need no join: each DG1 becomes a Condition (category encounter-diagnosis), an entry of
Encounter.diagnosis pointing at it, and its code in Encounter.reasonCode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_common.identifiers import resource_id
from ingest_acute.datatypes import DataTypes
from ingest_acute.parsing import Segment
from ingest_acute.terminology import (
    CONDITION_CATEGORY,
    CONDITION_CLINICAL,
    CONDITION_VERIFICATION,
    DIAGNOSIS_ROLE,
    DIAGNOSIS_TYPE,
    DIAGNOSIS_USE_DISPLAY,
)

Json = dict[str, Any]


@dataclass(frozen=True)
class Diagnosis:
    condition: Json
    on_encounter: Json  # the Encounter.diagnosis entry
    code: Json  # the CodeableConcept, for Encounter.reasonCode


def diagnoses(
    feed: str,
    dg1s: list[Segment],
    patient_ref: str,
    encounter_ref: str | None,
    encounter_source: str,
    entered_in_error: bool,
    types: DataTypes,
) -> list[Diagnosis]:
    found = []
    for dg1 in dg1s:
        made = _diagnosis(feed, dg1, patient_ref, encounter_ref, encounter_source, types)
        if made is None:
            continue
        if entered_in_error:
            made.condition.pop("clinicalStatus", None)
            made.condition["verificationStatus"] = _concept(
                CONDITION_VERIFICATION, "entered-in-error"
            )
        found.append(made)
    return found


def _diagnosis(
    feed: str,
    dg1: Segment,
    patient_ref: str,
    encounter_ref: str | None,
    encounter_source: str,
    types: DataTypes,
) -> Diagnosis | None:
    code = types.codeable_concept(dg1.first(3), text=dg1.value(4))
    if code is None:
        types.warn("DG1-3", "a diagnosis without a code or description; left out")
        return None
    coding = (code.get("coding") or [{}])[0]
    identity = dg1.value(20) or "|".join(
        (encounter_source, coding.get("system", ""), coding.get("code", code.get("text", "")))
    )
    use, verification = DIAGNOSIS_TYPE.get(dg1.value(6).upper(), (None, None))
    condition: Json = {
        "resourceType": "Condition",
        "id": resource_id(feed, "Condition", identity),
        "clinicalStatus": _concept(CONDITION_CLINICAL, "active"),
        "category": [_concept(CONDITION_CATEGORY, "encounter-diagnosis")],
        "code": code,
        "subject": {"reference": patient_ref},
    }
    if verification:
        condition["verificationStatus"] = _concept(CONDITION_VERIFICATION, verification)
    if encounter_ref:
        condition["encounter"] = {"reference": encounter_ref}
    onset = types.date_time(dg1.value(5), "DG1-5")
    if onset:
        condition["onsetDateTime"] = onset
    clinician = dg1.first(16)
    asserter = types.practitioner(clinician) if clinician else None
    if asserter:
        condition["asserter"] = {"type": "Practitioner", **asserter}
    entry: Json = {"condition": {"reference": f"Condition/{condition['id']}"}}
    if use:
        entry["use"] = {
            "coding": [
                {"system": DIAGNOSIS_ROLE, "code": use, "display": DIAGNOSIS_USE_DISPLAY[use]}
            ]
        }
    if dg1.value(15).isdigit() and int(dg1.value(15)) > 0:
        entry["rank"] = int(dg1.value(15))
    return Diagnosis(condition, entry, code)


def _concept(system: str, code: str) -> Json:
    return {"coding": [{"system": system, "code": code}]}
