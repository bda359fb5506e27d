"""AL1 as a FHIR AllergyIntolerance."""

from __future__ import annotations

from typing import Any

from fhir_common.identifiers import resource_id
from ingest_acute.datatypes import DataTypes
from ingest_acute.parsing import Segment
from ingest_acute.terminology import ALLERGEN_TYPE, ALLERGY_CLINICAL, ALLERGY_CRITICALITY

Json = dict[str, Any]


def allergies(
    feed: str, al1s: list[Segment], patient_ref: str, patient_source: str, types: DataTypes
) -> list[Json]:
    found = []
    for al1 in al1s:
        code = types.codeable_concept(al1.first(3))
        if code is None:
            types.warn("AL1-3", "an allergy without an allergen; left out")
            continue
        coding = (code.get("coding") or [{}])[0]
        identity = "|".join(
            (patient_source, coding.get("system", ""), coding.get("code", code.get("text", "")))
        )
        allergy: Json = {
            "resourceType": "AllergyIntolerance",
            "id": resource_id(feed, "AllergyIntolerance", identity),
            "clinicalStatus": {"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]},
            "code": code,
            "patient": {"reference": patient_ref},
        }
        kind, category = ALLERGEN_TYPE.get(al1.value(2, 1).upper(), (None, None))
        if kind:
            allergy["type"] = kind
        if category:
            allergy["category"] = [category]
        criticality = ALLERGY_CRITICALITY.get(al1.value(4, 1).upper())
        if criticality:
            allergy["criticality"] = criticality
        reactions = [r.value(1) for r in al1.repetitions(5) if r.value(1)]
        if reactions:
            allergy["reaction"] = [{"manifestation": [{"text": text} for text in reactions]}]
        identified = types.date_time(al1.value(6), "AL1-6")
        if identified:
            allergy["recordedDate"] = identified
        found.append(allergy)
    return found
