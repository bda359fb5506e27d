"""OBX (with its OBR) as a FHIR Observation: lab results from ORU^R01, and the observations
some ADT messages carry (height, weight).

An Observation's id comes from its order (OBR-3 filler, else OBR-2 placer order number), its
code and sub-id, so a corrected result (OBX-11 ``C``) updates the first one.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_common.identifiers import resource_id
from ingest_acute.datatypes import DataTypes
from ingest_acute.parsing import Repetition, Segment
from ingest_acute.terminology import (
    INTERPRETATIONS,
    OBSERVATION_CATEGORY,
    OBSERVATION_STATUS,
    UCUM,
    V3_OBSERVATION_INTERPRETATION,
)

Json = dict[str, Any]

_COMPARATORS = frozenset({"<", "<=", ">=", ">"})
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?")
_UCUM_NAMES = frozenset({"UCUM", "ISO+", "ANS+"})


def observations(
    feed: str,
    segments: list[Segment],
    patient_ref: str,
    encounter_ref: str | None,
    context_source: str,
    laboratory: bool,
    types: DataTypes,
) -> list[Json]:
    """Every OBX of the message, each with the OBR before it (if any)."""
    found = []
    order: Segment | None = None
    for segment in segments:
        if segment.name == "OBR":
            order = segment
        elif segment.name == "OBX":
            made = _observation(
                feed, segment, order, patient_ref, encounter_ref, context_source, types
            )
            if made is None:
                continue
            if laboratory:
                made["category"] = [
                    {"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}
                ]
            found.append(made)
    return found


def _observation(
    feed: str,
    obx: Segment,
    order: Segment | None,
    patient_ref: str,
    encounter_ref: str | None,
    context_source: str,
    types: DataTypes,
) -> Json | None:
    code = types.codeable_concept(obx.first(3))
    if code is None:
        types.warn("OBX-3", f"observation {obx.value(1) or '?'} has no code; left out")
        return None
    coding = (code.get("coding") or [{}])[0]
    placed = (order.value(3) or order.value(2)) if order else ""
    identity = "|".join(
        (
            placed or context_source,
            coding.get("system", ""),
            coding.get("code", code.get("text", "")),
            obx.value(4),
        )
    )
    observation: Json = {
        "resourceType": "Observation",
        "id": resource_id(feed, "Observation", identity),
        "status": OBSERVATION_STATUS.get(obx.value(11).upper(), "unknown"),
        "code": code,
        "subject": {"reference": patient_ref},
    }
    if encounter_ref:
        observation["encounter"] = {"reference": encounter_ref}
    when = obx.value(14) or (order.value(7) if order else "")
    effective = types.date_time(when, "OBX-14")
    if effective:
        observation["effectiveDateTime"] = effective
    observation.update(_value(obx, types))
    flags = [f.value(1) for f in obx.repetitions(8) if f.value(1)]
    if flags:
        observation["interpretation"] = [_interpretation(flag) for flag in flags]
    if obx.value(7):
        observation["referenceRange"] = [{"text": obx.value(7)}]
    performer = obx.first(16)
    reference = types.practitioner(performer) if performer else None
    if reference:
        observation["performer"] = [{"type": "Practitioner", **reference}]
    return observation


def _value(obx: Segment, types: DataTypes) -> Json:
    """OBX-5 as value[x], by OBX-2; a value we cannot read as its type is kept as text."""
    kind = obx.value(2).upper()
    values = obx.repetitions(5)
    if not values:
        return {}
    first = values[0]
    if kind == "NM":
        number = _number(first.value(1))
        if number is None:
            types.warn("OBX-5", f"{first.value(1)!r} is not a number; kept as text")
            return {"valueString": first.value(1)}
        return {"valueQuantity": _quantity(number, obx.first(6))}
    if kind == "SN":
        return _structured_numeric(first, obx.first(6))
    if kind in {"CE", "CWE", "CNE", "CF"}:
        concept = types.codeable_concept(first)
        return {"valueCodeableConcept": concept} if concept else {}
    if kind in {"DT", "DTM", "TS"}:
        moment = types.date_time(first.value(1), "OBX-5")
        return {"valueDateTime": moment} if moment else {}
    if kind == "TM":
        match = _TIME.match(first.value(1))
        if match:
            hours, minutes, seconds = (g or "00" for g in match.groups())
            return {"valueTime": f"{hours}:{minutes}:{seconds}"}
        return {}
    if kind in {"ST", "TX", "FT", "ID", "IS"}:
        text = "\n".join(v.value(1) for v in values)
        return {"valueString": text} if text else {}
    return {}  # ED, RP and the like: a reference or document, not a value we carry


def _number(text: str) -> int | float | None:
    try:
        number = Decimal(text)
    except InvalidOperation:
        return None
    if not number.is_finite():
        return None
    return (
        int(number) if number == number.to_integral_value() and "." not in text else float(number)
    )


def _quantity(number: int | float, units: Repetition | None) -> Json:
    quantity: Json = {"value": number}
    if units is None:
        return quantity
    code, text, system = units.value(1), units.value(2), units.value(3).upper()
    quantity["unit"] = text or code
    if code and system in _UCUM_NAMES:
        quantity["system"] = UCUM
        quantity["code"] = code
    return quantity


def _structured_numeric(value: Repetition, units: Repetition | None) -> Json:
    """SN: comparator^number (``>^5``, ``^182``); ranges and ratios are kept as text."""
    comparator, first, separator, second = (value.value(c) for c in (1, 2, 3, 4))
    number = _number(first)
    if number is not None and not separator and not second:
        quantity = _quantity(number, units)
        if comparator in _COMPARATORS:
            quantity["comparator"] = comparator
        return {"valueQuantity": quantity}
    text = "".join((comparator, first, separator, second))
    return {"valueString": text} if text else {}


def _interpretation(flag: str) -> Json:
    coding: Json = {"code": flag}
    if flag.upper() in INTERPRETATIONS:
        coding = {"system": V3_OBSERVATION_INTERPRETATION, "code": flag.upper()}
    return {"coding": [coding]}
