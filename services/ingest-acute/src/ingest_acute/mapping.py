"""One HL7 v2 message into the FHIR resources it stands for, each with its Kafka key.

Mapping is pure: ``plan`` reads who and what the message is about; the intake then looks up
what earlier messages established (``Known``: merges, patient keys, encounter histories)
and ``build`` makes the resources. docs/ingest-acute.md has the field-by-field table.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from fhir_common.feeds import Feed
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, is_valid_nhs_number
from ingest_acute.allergies import allergies
from ingest_acute.datatypes import DataTypes
from ingest_acute.diagnoses import diagnoses
from ingest_acute.encounters import (
    EncounterInput,
    EncounterState,
    encounter,
    encounter_id,
    encounter_source_id,
)
from ingest_acute.events import ADT_EVENTS, ORU_RESULT, Event
from ingest_acute.identity import NHS_SOURCE_PREFIX, PatientIdentity, identify
from ingest_acute.observations import observations
from ingest_acute.outcome import ErrorCode, Rejected
from ingest_acute.parsing import Segment, V2Message
from ingest_acute.patients import (
    carry_mrn_of_survivor,
    link_replaces,
    merged_patient,
    patient,
    patient_id,
)

Json = dict[str, Any]

SETTING_TAG_SYSTEM = "https://fhir.joinedup.nhs.uk/CodeSystem/care-setting"
FEED_SOURCE_BASE = "https://fhir.joinedup.nhs.uk/feed/"


@dataclass(frozen=True)
class Subject:
    """A patient the message is about and, for a merge, the patients merged into it."""

    pid: Segment
    identity: PatientIdentity
    mrg: Segment | None = None
    retired: PatientIdentity | None = None


@dataclass
class Plan:
    message: V2Message
    feed: Feed
    event: Event
    subjects: list[Subject]
    event_time: str | None
    types: DataTypes

    @property
    def laboratory(self) -> bool:
        return self.event is ORU_RESULT


@dataclass(frozen=True)
class Lookup:
    """What a message needs to know from earlier ones."""

    feed: str
    sources: tuple[str, ...] = ()  # patient source ids: were they merged away?
    patient_refs: tuple[str, ...] = ()  # Patient/<id>: their keys, when seen before
    encounter_ids: tuple[str, ...] = ()  # their state so far

    def __bool__(self) -> bool:
        return bool(self.sources or self.patient_refs or self.encounter_ids)


@dataclass
class Known:
    survivors: dict[str, str] = field(default_factory=dict)  # old source id -> survivor's
    keys: dict[str, str] = field(default_factory=dict)  # Patient/<id> -> patient key
    encounters: dict[str, EncounterState] = field(default_factory=dict)

    def add(self, other: Known) -> None:
        self.survivors.update(other.survivors)
        self.keys.update(other.keys)
        self.encounters.update(other.encounters)


@dataclass
class Mapped:
    """The resources of one message, in publishing order, with what to remember."""

    resources: list[tuple[str, Json]] = field(default_factory=list)  # (patient key, resource)
    keys: dict[str, str] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)
    encounters: dict[str, EncounterState] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    occurred_at: str | None = None


def event_of(message: V2Message) -> Event:
    header = message.header
    if header.message_type == "ADT":
        event = ADT_EVENTS.get(header.trigger)
        if event is None:
            supported = ", ".join(sorted(ADT_EVENTS))
            raise Rejected.reject(
                f"ADT^{header.trigger} is not supported (supported: {supported})",
                ErrorCode.UNSUPPORTED_EVENT_CODE,
                "MSH",
                9,
            )
        return event
    if header.message_type == "ORU" and header.trigger == "R01":
        return ORU_RESULT
    raise Rejected.reject(
        f"{header.kind} is not supported: ingest-acute takes ADT and ORU^R01",
        ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        "MSH",
        9,
    )


def plan(
    message: V2Message, feed: Feed, zone: ZoneInfo, placeholders: Collection[str] = ()
) -> Plan:
    """Who and what the message is about; ``Rejected`` when it cannot be mapped at all."""
    event = event_of(message)
    types = DataTypes(feed.ods, zone)
    pids = message.all("PID")
    if not pids:
        raise Rejected.error("the message has no PID segment", ErrorCode.SEGMENT_SEQUENCE, "PID")
    subjects = []
    if event.merge:
        for pid, mrg in _merge_pairs(message):
            survivor = identify(pid, types, placeholders)
            retired = identify(mrg, types, placeholders, where="MRG")
            subjects.append(Subject(pid, survivor, mrg, retired))
    else:
        if len(pids) > 1:
            types.warn("PID", f"{len(pids)} patients in one message; only the first is read")
        subjects.append(Subject(pids[0], identify(pids[0], types, placeholders)))
    return Plan(message, feed, event, subjects, _event_time(message, types), types)


def _merge_pairs(message: V2Message) -> list[tuple[Segment, Segment]]:
    pairs = []
    pid: Segment | None = None
    for segment in message.segments:
        if segment.name == "PID":
            pid = segment
        elif segment.name == "MRG" and pid is not None:
            pairs.append((pid, segment))
            pid = None
    if not pairs:
        raise Rejected.error(
            "a merge needs an MRG segment after each PID", ErrorCode.SEGMENT_SEQUENCE, "MRG"
        )
    return pairs


def _event_time(message: V2Message, types: DataTypes) -> str | None:
    evn = message.first("EVN")
    for where, value in (
        ("EVN-6", evn.value(6) if evn else ""),
        ("EVN-2", evn.value(2) if evn else ""),
        ("MSH-7", message.header.timestamp),
    ):
        moment = types.date_time(value, where)
        if moment:
            return moment
    return None


def first_lookup(plan: Plan) -> Lookup:
    feed = plan.feed.id
    sources = [s.identity.source_id for s in plan.subjects]
    sources += [s.retired.source_id for s in plan.subjects if s.retired]
    encounters = []
    pv1 = plan.message.first("PV1")
    if pv1 is not None and plan.event.encounter:
        source = encounter_source_id(pv1, sources[0], plan.message.header.control_id)
        encounters.append(encounter_id(feed, source))
    return Lookup(
        feed,
        tuple(sources),
        tuple(f"Patient/{patient_id(feed, s)}" for s in sources),
        tuple(encounters),
    )


def second_lookup(plan: Plan, known: Known) -> Lookup:
    """What to look up once merges are known: the survivors' keys and encounters."""
    redirected = [known.survivors[s] for s in first_lookup(plan).sources if s in known.survivors]
    if not redirected:
        return Lookup(plan.feed.id)
    feed = plan.feed.id
    first = plan.subjects[0]
    source = known.survivors.get(first.identity.source_id, first.identity.source_id)
    encounters = []
    pv1 = plan.message.first("PV1")
    if pv1 is not None and plan.event.encounter:
        encounters.append(
            encounter_id(feed, encounter_source_id(pv1, source, plan.message.header.control_id))
        )
    refs = tuple(f"Patient/{patient_id(feed, s)}" for s in redirected)
    return Lookup(feed, (), refs, tuple(e for e in encounters if e not in known.encounters))


def build(plan: Plan, known: Known) -> Mapped:
    """The resources of a planned message, given what earlier messages established."""
    mapped = Mapped(occurred_at=plan.event_time)
    for index, subject in enumerate(plan.subjects):
        _subject(plan, subject, known, mapped, with_clinical_content=index == 0)
    feed = plan.feed
    for _, resource in mapped.resources:
        _stamp(resource, feed)
    mapped.warnings = list(dict.fromkeys(plan.types.warnings))
    return mapped


def _subject(
    plan: Plan, subject: Subject, known: Known, mapped: Mapped, *, with_clinical_content: bool
) -> None:
    feed, ods, types = plan.feed.id, plan.feed.ods, plan.types
    identity = subject.identity
    source = known.survivors.get(identity.source_id, identity.source_id)
    pd1 = plan.message.first("PD1")
    person = patient(feed, ods, subject.pid, pd1, identity, types)
    person["id"] = patient_id(feed, source)
    if source != identity.source_id and identity.mrn:
        carry_mrn_of_survivor(person, ods, source, identity.mrn)
    key = _key(feed, source, identity, known)
    if identity.nhs_number is None and is_valid_nhs_number(key):
        # The feed linked this MRN to an NHS number before: keep it, so the key and the
        # Patient agree and a later message without it does not erase it from the record.
        person["identifier"].insert(0, {"system": NHS_NUMBER_SYSTEM, "value": key})
    patient_ref = f"Patient/{person['id']}"
    mapped.keys[patient_ref] = key
    mapped.resources.append((key, person))
    if subject.retired is not None:
        _retire(plan, subject, person, source, known, mapped)
    if not with_clinical_content:
        return
    message, event = plan.message, plan.event
    pv1 = message.first("PV1")
    encounter_ref = None
    encounter_source = source
    if pv1 is not None and (event.encounter or plan.laboratory) and not _empty_visit(pv1):
        encounter_source = encounter_source_id(pv1, source, message.header.control_id)
        encounter_ref = f"Encounter/{encounter_id(feed, encounter_source)}"
    found = diagnoses(
        feed,
        message.all("DG1"),
        patient_ref,
        encounter_ref if event.encounter else None,
        encounter_source,
        event.status == "entered-in-error",
        types,
    )
    if pv1 is not None and encounter_ref and event.encounter:
        given = EncounterInput(
            feed=feed,
            ods=ods,
            source_id=encounter_source,
            patient_ref=patient_ref,
            event=event,
            event_time=plan.event_time,
            reasons=[d.code for d in found],
            diagnoses=[d.on_encounter for d in found],
        )
        prior = known.encounters.get(encounter_id(feed, encounter_source))
        resource, state = encounter(given, pv1, message.first("PV2"), prior, types)
        mapped.resources.append((key, resource))
        mapped.encounters[resource["id"]] = state
    mapped.resources.extend((key, d.condition) for d in found)
    mapped.resources.extend(
        (key, a) for a in allergies(feed, message.all("AL1"), patient_ref, source, types)
    )
    found_observations = observations(
        feed,
        message.segments,
        patient_ref,
        encounter_ref,
        encounter_source,
        plan.laboratory,
        types,
    )
    mapped.resources.extend((key, o) for o in found_observations)


def _retire(
    plan: Plan, subject: Subject, survivor: Json, survivor_source: str, known: Known, mapped: Mapped
) -> None:
    retired = subject.retired
    assert retired is not None
    assert subject.mrg is not None
    feed = plan.feed.id
    old_source = retired.source_id
    if known.survivors.get(old_source, old_source) == survivor_source:
        plan.types.warn("MRG-1", f"{old_source} is already this patient; nothing to merge")
        return
    prior_names = [n for r in subject.mrg.repetitions(7) if (n := plan.types.human_name(r))]
    old = merged_patient(feed, plan.feed.ods, retired, survivor, prior_names)
    link_replaces(survivor, [old["id"]])
    old_key = _key(feed, old_source, retired, known)
    mapped.resources.append((old_key, old))
    mapped.merges[old_source] = survivor_source


def _key(feed: str, source: str, identity: PatientIdentity, known: Known) -> str:
    """DESIGN.md's patient key: the NHS number if valid, else ``<feed>|<MRN>``; a patient
    sent without its NHS number keeps the key it had when the number was sent."""
    if identity.nhs_number:
        return identity.nhs_number
    if source.startswith(NHS_SOURCE_PREFIX):
        return source.removeprefix(NHS_SOURCE_PREFIX)
    remembered = known.keys.get(f"Patient/{patient_id(feed, source)}")
    return remembered or f"{feed}|{source}"


def _empty_visit(pv1: Segment) -> bool:
    """A28/A31 often carry ``PV1||N``: no visit at all."""
    return not any(pv1.value(f) for f in (3, 19, 44)) and pv1.value(2).upper() in {"", "N"}


def _stamp(resource: Json, feed: Feed) -> None:
    """meta.source names the feed and a tag carries its care setting (as ingest-gp does)."""
    resource["meta"] = {
        "source": f"{FEED_SOURCE_BASE}{feed.id}",
        "tag": [{"system": SETTING_TAG_SYSTEM, "code": feed.setting}],
    }
