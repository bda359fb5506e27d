"""PV1 and PV2 as a FHIR Encounter, with its status and location history across messages.

An ADT message describes the encounter as it is now, but not where the patient has been:
the location history (Encounter.location, DESIGN "A02 transfer (location history)") and the
status set by earlier events are remembered per encounter (``EncounterState``, stored by
ingest-acute) and carried into every later version of the Encounter.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fhir_common.codes import ADMISSION_METHOD_EXTENSION
from fhir_common.identifiers import local_identifier_system, resource_id
from ingest_acute.datatypes import DataTypes, code_only
from ingest_acute.events import Event, Move
from ingest_acute.parsing import Segment
from ingest_acute.patients import organisation
from ingest_acute.terminology import (
    ADMISSION_METHOD,
    ADMISSION_METHODS,
    ADMISSION_SOURCES,
    DISCHARGE_DESTINATION_SYSTEM,
    DISCHARGE_DESTINATIONS,
    DISCHARGE_METHOD_EXTENSION,
    DISCHARGE_METHOD_SYSTEM,
    DISCHARGE_METHODS,
    SOURCE_OF_ADMISSION_SYSTEM,
    V2_ADMISSION_TYPE,
    V3_PARTICIPATION_TYPE,
    encounter_class,
)

Json = dict[str, Any]

_OVER = frozenset({"finished", "cancelled", "entered-in-error"})
ACTIVE_STATUSES = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave"})
_ADMISSION_TYPES = frozenset("ACELNRU")  # HL7 table 0007
# PV1 fields naming clinicians, and the participation type each becomes.
PARTICIPANTS = (
    (7, "ATND", "attender"),
    (8, "REF", "referrer"),
    (9, "CON", "consultant"),
    (17, "ADM", "admitter"),
)


@dataclass
class EncounterState:
    """What earlier messages established about an encounter."""

    status: str | None = None
    start: str | None = None
    locations: list[Json] = field(default_factory=list)

    def to_json(self) -> Json:
        return {"status": self.status, "start": self.start, "locations": self.locations}

    @classmethod
    def from_json(cls, data: Json | None) -> EncounterState:
        data = data or {}
        return cls(data.get("status"), data.get("start"), list(data.get("locations") or []))


def encounter_source_id(pv1: Segment, patient_source: str, control_id: str) -> str:
    """The visit number (PV1-19); else the patient and admit time; else this message."""
    visit = pv1.value(19)
    if visit:
        return visit
    admitted = pv1.value(44)
    if admitted:
        return f"{patient_source}|admitted|{admitted}"
    return f"{patient_source}|message|{control_id}"


def encounter_id(feed: str, source_id: str) -> str:
    return resource_id(feed, "Encounter", source_id)


@dataclass(frozen=True)
class EncounterInput:
    feed: str
    ods: str
    source_id: str
    patient_ref: str
    event: Event
    event_time: str | None
    reasons: list[Json]
    diagnoses: list[Json]


def encounter(
    given: EncounterInput,
    pv1: Segment,
    pv2: Segment | None,
    prior: EncounterState | None,
    types: DataTypes,
) -> tuple[Json, EncounterState]:
    """The Encounter now, and the state to remember for the next message about it."""
    event = given.event
    state = copy.deepcopy(prior) if prior else EncounterState()
    discharged = types.date_time(pv1.value(45), "PV1-45") if event.honours_discharge_time else None
    start = types.date_time(pv1.value(44), "PV1-44") or state.start
    if start is None and event.move is Move.ARRIVE and event.status:
        start = given.event_time  # an admit or registration without PV1-44 began when it happened
    if discharged and start and not not_before(discharged, start):
        types.warn("PV1-45", f"discharge {discharged} is before admission {start}; left out")
        discharged = None
    status = _status(event, state, pv1, discharged)
    current = types.location(rep) if (rep := pv1.first(3)) else None
    previous = types.location(rep) if (rep := pv1.first(6)) else None
    at = given.event_time or start
    state.locations = _moved(state.locations, event.move, current, previous, at, discharged)
    state.locations = _settled(state.locations, status, discharged or at)
    state.status, state.start = status, start

    resource: Json = {
        "resourceType": "Encounter",
        "id": encounter_id(given.feed, given.source_id),
        "status": status,
        "class": encounter_class(pv1.value(2)),
        "subject": {"reference": given.patient_ref},
        "serviceProvider": organisation(given.ods),
    }
    if pv1.value(19):
        resource["identifier"] = [
            {"system": local_identifier_system(given.ods, "visit-number"), "value": pv1.value(19)}
        ]
    _admission(resource, pv1)
    period = {k: v for k, v in (("start", start), ("end", discharged)) if v}
    if status == "finished" and "end" not in period and event.move is Move.LEAVE and at:
        period["end"] = at
    if period:
        resource["period"] = period
    participants = _participants(pv1, types)
    if participants:
        resource["participant"] = participants
    if pv1.value(10):
        resource["serviceType"] = {"coding": [{"code": pv1.value(10)}]}
    reasons = list(given.reasons)
    if pv2 is not None and (reason := types.codeable_concept(pv2.first(3))):
        reasons.insert(0, reason)
    if reasons:
        resource["reasonCode"] = reasons
    if given.diagnoses:
        resource["diagnosis"] = given.diagnoses
    if state.locations:
        resource["location"] = copy.deepcopy(state.locations)
    return resource, state


def _status(event: Event, state: EncounterState, pv1: Segment, discharged: str | None) -> str:
    status = event.status or state.status
    if status is None:
        status = "planned" if pv1.value(2).upper() == "P" else "in-progress"
    if discharged and status in ACTIVE_STATUSES:
        status = "finished"
    return status


def _admission(resource: Json, pv1: Segment) -> None:
    """Admission method (PV1-4), source (PV1-14), discharge method and destination (PV1-36/37).

    English feeds send NHS Data Dictionary codes in these fields; those carry the UK Core
    systems (admission method as the UK Core extension DESIGN.md names). Other codes are kept
    as the feed sent them, without a system.
    """
    hospitalization: Json = {}
    admission = pv1.value(4).upper()
    if admission in ADMISSION_METHODS:
        coding = {"system": ADMISSION_METHOD, "code": admission}
        hospitalization["extension"] = [
            {"url": ADMISSION_METHOD_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}
        ]
    elif admission:
        system = V2_ADMISSION_TYPE if admission in _ADMISSION_TYPES else None
        resource["type"] = [code_only(pv1.first(4), system)]
    source = pv1.value(14)
    if source:
        system = SOURCE_OF_ADMISSION_SYSTEM if source in ADMISSION_SOURCES else None
        hospitalization["admitSource"] = code_only(pv1.first(14), system)
    method = pv1.value(36)
    destination = pv1.value(37)
    if method in DISCHARGE_METHODS:
        coding = {"system": DISCHARGE_METHOD_SYSTEM, "code": method}
        resource["extension"] = [
            {"url": DISCHARGE_METHOD_EXTENSION, "valueCodeableConcept": {"coding": [coding]}}
        ]
    elif method:
        hospitalization["dischargeDisposition"] = code_only(pv1.first(36))
    if destination in DISCHARGE_DESTINATIONS:
        coding = {"system": DISCHARGE_DESTINATION_SYSTEM, "code": destination}
        hospitalization["dischargeDisposition"] = {"coding": [coding]}
    if hospitalization:
        resource["hospitalization"] = hospitalization


def _participants(pv1: Segment, types: DataTypes) -> list[Json]:
    found: list[Json] = []
    for field_number, code, display in PARTICIPANTS:
        for rep in pv1.repetitions(field_number):
            individual = types.practitioner(rep)
            if individual is None:
                continue
            kind = {"system": V3_PARTICIPATION_TYPE, "code": code, "display": display}
            who: Json = {"type": "Practitioner", **individual}
            found.append({"type": [{"coding": [kind]}], "individual": who})
    return found


# -- location history ---------------------------------------------------------------------


def _key(entry_or_location: Json) -> str:
    location = entry_or_location.get("location", entry_or_location)
    return str(location.get("identifier", {}).get("value", location.get("display", "")))


def _entry(location: Json, status: str, start: str | None = None) -> Json:
    entry: Json = {"location": location, "status": status}
    if start:
        entry["period"] = {"start": start}
    return entry


def _close(entry: Json, at: str | None) -> None:
    entry["status"] = "completed"
    period = entry.setdefault("period", {})
    if at and not_before(at, period.get("start")):
        period["end"] = at
    if not period:
        del entry["period"]


def not_before(later: str, earlier: str | None) -> bool:
    """Whether FHIR time ``later`` is at or after ``earlier`` (instants compared, offsets and
    all); a partial date against a full time is compared as text."""
    if not earlier:
        return True
    try:
        return datetime.fromisoformat(later) >= datetime.fromisoformat(earlier)
    except (ValueError, TypeError):
        return later >= earlier


def _reopen(entry: Json) -> None:
    entry["status"] = "active"
    entry.get("period", {}).pop("end", None)
    if entry.get("period") == {}:
        del entry["period"]


def _arrive(history: list[Json], current: Json | None, at: str | None) -> list[Json]:
    if current is None:
        return history
    active = [e for e in history if e["status"] == "active"]
    if any(_key(e) == _key(current) for e in active):
        return history
    for entry in active:
        _close(entry, at)
    history = [e for e in history if not (e["status"] == "planned" and _key(e) == _key(current))]
    return [*history, _entry(current, "active", at)]


def _moved(
    history: list[Json],
    move: Move,
    current: Json | None,
    previous: Json | None,
    at: str | None,
    discharged: str | None,
) -> list[Json]:
    history = [copy.deepcopy(e) for e in history]
    if move is Move.TRANSFER:
        if not history and previous is not None:
            history = [_entry(previous, "active")]
        return _arrive(history, current, at)
    if move is Move.ARRIVE:
        return _arrive(history, current, at)
    if move is Move.LEAVE:
        history = _arrive(history, current, at)
        for entry in history:
            if entry["status"] == "active":
                _close(entry, discharged or at)
        return history
    if move is Move.PLAN:
        history = [e for e in history if e["status"] != "planned"]
        return [*history, _entry(current, "planned")] if current else history
    if move is Move.UNDO_TRANSFER:
        if (
            history
            and history[-1]["status"] == "active"
            and (current is None or _key(history[-1]) != _key(current))
        ):
            history.pop()
        return _reopen_last(history, current)
    if move is Move.UNDO_LEAVE:
        return _reopen_last(history, current)
    if not history and current is not None:
        return [_entry(current, "active")]
    return history


def _reopen_last(history: list[Json], current: Json | None) -> list[Json]:
    for entry in reversed(history):
        if current is None or _key(entry) == _key(current):
            _reopen(entry)
            return history
    return [*history, _entry(current, "active")] if current else history


def _settled(history: list[Json], status: str, at: str | None) -> list[Json]:
    """Location statuses that agree with the Encounter's: nobody is still in a bed of a
    finished, cancelled or mistaken encounter, and a planned one occupies nothing yet."""
    for entry in history:
        if status == "finished" and entry["status"] == "active":
            _close(entry, at)
        elif status in _OVER and entry["status"] in {"active", "planned"}:
            entry["status"] = "completed"
        elif status == "planned" and entry["status"] == "active":
            entry["status"] = "planned"
    return history
