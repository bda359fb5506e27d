"""The clinician's summary of one person across providers (``GET /record/summary/{patient}``).

One read of the person's resources of the types shown (not their Observations, the bulk of a
record), parsed once and arranged: demographics and registered GP; active problems (the same code
from several providers is one problem, with every provider named); current medications;
allergies; recent encounters by care setting (GP, emergency, inpatient, outpatient, community,
mental health, social care) with the providing organisation; care plans and care teams; the
latest risk score with its reasons; open alerts. Every item says which provider it came from.

A type the token may not read is left out and named under ``withheld``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.errors import FhirError
from fhir_common.feeds import FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM, is_valid_nhs_number
from record import persons, repository
from record.indexing import date_range, parse_reference
from record.repository import StoredResource

Json = dict[str, Any]

SHOWN = (
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "AllergyIntolerance",
    "Encounter",
    "CarePlan",
    "CareTeam",
    "RiskAssessment",
    "Flag",
    "Communication",
)
GROUPS = (
    "gp",
    "emergency",
    "inpatient",
    "outpatient",
    "community",
    "mental-health",
    "social-care",
    "other",
)
ACTIVE_PROBLEM = {"active", "recurrence", "relapse"}
NOT_TRUE = {"refuted", "entered-in-error"}
CLOSED_COMMUNICATION = {"completed", "entered-in-error", "stopped", "not-done"}
INPATIENT_CLASSES = {"IMP", "ACUTE", "NONAC", "SS", "OBSENC"}
MAX_SHOWN = 10_000


async def build(
    session: AsyncSession,
    patient_ref: str,
    *,
    readable: Callable[[str], bool],
    feeds: FeedRegistry,
    recent: int,
) -> Json:
    person = await persons.person_of_patient(session, patient_ref)
    if person is None and is_valid_nhs_number(patient_ref):
        person = await persons.person_of_key(session, patient_ref)
    if person is None:
        raise FhirError.single(404, "not-found", f"no Patient {patient_ref} in the record")
    keys = person.keys
    patients = await repository.patients_of(session, keys) if keys else []
    if not keys:  # a Patient stored without a patient key
        patients = await repository.read_many(session, [("Patient", patient_ref)])
    if not patients:
        raise FhirError.single(404, "not-found", f"no Patient {patient_ref} in the record")
    allowed = [t for t in SHOWN if readable(t)]
    found = (
        await repository.for_patient(session, keys, types=allowed, limit=MAX_SHOWN) if keys else []
    )
    by_type: dict[str, list[StoredResource]] = {t: [] for t in SHOWN}
    for resource in found:
        by_type[resource.resource_type].append(resource)
    sources = _Sources(feeds)
    main = _main_patient(patients, patient_ref)
    referenced = await _referenced(session, [*patients, *by_type["Encounter"]], readable)
    summary: Json = {
        "person": _person(person, patients),
        "patient": _demographics(main, patients, referenced),
        "records": [_record(p, sources) for p in sorted(patients, key=lambda p: p.id)],
    }
    sections: dict[str, tuple[tuple[str, ...], Callable[[], Any]]] = {
        "problems": (("Condition",), lambda: _problems(by_type["Condition"], sources)),
        "medications": (
            ("MedicationRequest", "MedicationStatement"),
            lambda: _medications(
                by_type["MedicationRequest"] + by_type["MedicationStatement"], sources
            ),
        ),
        "allergies": (
            ("AllergyIntolerance",),
            lambda: _allergies(by_type["AllergyIntolerance"], sources),
        ),
        "encounters": (
            ("Encounter",),
            lambda: _encounters(by_type["Encounter"], sources, referenced, recent),
        ),
        "carePlans": (("CarePlan",), lambda: _care_plans(by_type["CarePlan"], sources)),
        "careTeams": (("CareTeam",), lambda: _care_teams(by_type["CareTeam"], sources)),
        "risk": (("RiskAssessment",), lambda: _risk(by_type["RiskAssessment"], sources)),
        "alerts": (
            ("Flag", "Communication"),
            lambda: _alerts(by_type["Flag"] + by_type["Communication"], sources),
        ),
    }
    withheld: list[str] = []
    for name, (types, make) in sections.items():
        if all(t in allowed for t in types):
            summary[name] = make()
        else:
            withheld.extend(t for t in types if t not in allowed)
    summary["withheld"] = withheld
    return summary


# --- where things came from ----------------------------------------------------------------------


class _Sources:
    def __init__(self, feeds: FeedRegistry) -> None:
        self.feeds = feeds
        self._cache: dict[tuple[str | None, str | None], Json] = {}

    def of(self, resource: StoredResource) -> Json:
        cache_key = (resource.source, resource.setting)
        if cache_key not in self._cache:
            feed = self.feeds.get(resource.source) if resource.source else None
            found: Json = {"feed": resource.source, "setting": resource.setting}
            if feed is not None:
                found["setting"] = resource.setting or feed.setting
                found["organisation"] = {"ods": feed.ods, "name": feed.description or None}
            self._cache[cache_key] = found
        return dict(self._cache[cache_key])


def _item(resource: StoredResource, sources: _Sources, **fields: Any) -> Json:
    return {
        **{k: v for k, v in fields.items() if v not in (None, [], "")},
        "reference": f"{resource.resource_type}/{resource.id}",
        "source": sources.of(resource),
    }


# --- FHIR datatypes as text ----------------------------------------------------------------------


def text_of(concept: Any) -> str | None:
    """A CodeableConcept, Coding or Reference as a person would read it."""
    if isinstance(concept, list):
        texts = [t for t in (text_of(c) for c in concept) if t]
        return "; ".join(texts) or None
    if not isinstance(concept, dict):
        return concept if isinstance(concept, str) else None
    if concept.get("text"):
        return str(concept["text"])
    if concept.get("display"):
        return str(concept["display"])
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and (coding.get("display") or coding.get("code")):
            return str(coding.get("display") or coding.get("code"))
    if concept.get("code"):
        return str(concept["code"])
    identifier = concept.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        return str(identifier["value"])
    return None


def code_of(concept: Any) -> Json | None:
    """The first coding of a CodeableConcept: ``{system, code, display}``."""
    if isinstance(concept, dict):
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return {k: coding[k] for k in ("system", "code", "display") if coding.get(k)}
    return None


def status_code(concept: Any) -> str | None:
    found = code_of(concept)
    return found["code"] if found else None


def _when(resource: Json, *elements: str) -> str | None:
    for element in elements:
        value = resource.get(element)
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and (value.get("start") or value.get("end")):
            return str(value.get("start") or value.get("end"))
    return None


def _sort_key(moment: str | None) -> float:
    found = date_range(moment) if moment else None
    return found[0].timestamp() if found else float("-inf")


def _name(patient: Json) -> str | None:
    names = patient.get("name") or []
    chosen = next((n for n in names if isinstance(n, dict) and n.get("use") == "official"), None)
    chosen = chosen or next((n for n in names if isinstance(n, dict)), None)
    if not chosen:
        return None
    if chosen.get("text"):
        return str(chosen["text"])
    parts = [*chosen.get("prefix", []), *chosen.get("given", []), chosen.get("family")]
    return " ".join(str(p) for p in parts if p) or None


def _period(content: Json) -> Json:
    period = content.get("period")
    return period if isinstance(period, dict) else {}


# --- sections ------------------------------------------------------------------------------------


def _person(person: persons.Person, patients: list[StoredResource]) -> Json:
    nhs = person.nhs_number
    found: Json = {
        "key": person.key if person.keys else None,
        "nhsNumber": nhs,
        "joined": nhs is not None,
        "providers": sorted({p.source for p in patients if p.source}),
    }
    if nhs is None:
        found["note"] = (
            "No NHS number: this is one provider's record, not joined with other "
            "providers' records about the same person."
        )
    return found


def _main_patient(patients: list[StoredResource], asked: str) -> StoredResource:
    def rank(p: StoredResource) -> tuple[int, int, int, float]:
        content = p.content
        active = content.get("active") is not False
        has_nhs = any(
            isinstance(i, dict) and i.get("system") == NHS_NUMBER_SYSTEM
            for i in content.get("identifier") or []
        )
        return (
            int(p.id == asked and active),
            int(active),
            int(has_nhs),
            p.last_updated.timestamp(),
        )

    return max(patients, key=rank)


async def _referenced(
    session: AsyncSession, resources: Iterable[StoredResource], readable: Callable[[str], bool]
) -> dict[str, Json]:
    """Organisations and practitioners referred to (GP, service provider), by reference."""
    wanted: set[tuple[str, str]] = set()
    for resource in resources:
        content = resource.content
        refs = [*(content.get("generalPractitioner") or []), content.get("serviceProvider")]
        for ref in refs:
            text = ref.get("reference") if isinstance(ref, dict) else None
            target = parse_reference(text) if isinstance(text, str) else None
            if target and readable(target[0]):
                wanted.add(target)
    found = await repository.read_many(session, wanted)
    return {f"{r.resource_type}/{r.id}": r.content for r in found}


def _party(reference: Any, referenced: dict[str, Json]) -> Json | None:
    """An organisation or practitioner from a Reference: its ODS code and name."""
    if not isinstance(reference, dict):
        return None
    party: Json = {}
    text = reference.get("reference")
    target = referenced.get(text) if isinstance(text, str) else None
    identifier = reference.get("identifier")
    identifiers = [identifier] if isinstance(identifier, dict) else []
    if target:
        identifiers += [i for i in target.get("identifier") or [] if isinstance(i, dict)]
        name = target.get("name")
        party["name"] = name if isinstance(name, str) else _name(target)
    for found in identifiers:
        if found.get("system") == ODS_ORGANIZATION_SYSTEM and found.get("value"):
            party["ods"] = found["value"]
            break
    if reference.get("display"):
        party.setdefault("name", reference["display"])
    if text:
        party["reference"] = text
    kind = reference.get("type") or (text.split("/", 1)[0] if isinstance(text, str) else None)
    if kind:
        party["type"] = kind
    return {k: v for k, v in party.items() if v} or None


def _demographics(
    patient: StoredResource, patients: list[StoredResource], referenced: dict[str, Json]
) -> Json:
    """The chosen record's demographics; the registered GP from any record that names one
    (the chosen one first)."""
    content = patient.content
    gp: list[Json] = []
    for record in [patient, *(p for p in patients if p is not patient)]:
        for reference in record.content.get("generalPractitioner") or []:
            party = _party(reference, referenced)
            if party and party not in gp:
                gp.append(party)
    found: Json = {
        "id": patient.id,
        "name": _name(content),
        "birthDate": content.get("birthDate"),
        "gender": content.get("gender"),
        "deceased": content.get("deceasedDateTime") or content.get("deceasedBoolean"),
        "address": text_of(content.get("address")) or _address(content),
        "registeredGp": gp,
    }
    return {k: v for k, v in found.items() if v not in (None, [], "")}


def _address(patient: Json) -> str | None:
    for address in patient.get("address") or []:
        if isinstance(address, dict):
            parts = [*address.get("line", []), address.get("city"), address.get("postalCode")]
            text = ", ".join(str(p) for p in parts if p)
            if text:
                return text
    return None


def _record(patient: StoredResource, sources: _Sources) -> Json:
    content = patient.content
    replaced_by = [
        link["other"].get("reference")
        for link in content.get("link") or []
        if isinstance(link, dict)
        and link.get("type") == "replaced-by"
        and isinstance(link.get("other"), dict)
    ]
    return _item(
        patient,
        sources,
        id=patient.id,
        active=content.get("active", True),
        name=_name(content),
        identifiers=[
            {"system": i.get("system"), "value": i.get("value")}
            for i in content.get("identifier") or []
            if isinstance(i, dict) and i.get("value") and i.get("use") != "old"
        ],
        replacedBy=replaced_by[0] if replaced_by else None,
    )


def _problems(conditions: list[StoredResource], sources: _Sources) -> list[Json]:
    grouped: dict[tuple[str, str], Json] = {}
    for resource in conditions:
        content = resource.content
        clinical = status_code(content.get("clinicalStatus"))
        verification = status_code(content.get("verificationStatus"))
        if (clinical and clinical not in ACTIVE_PROBLEM) or verification in NOT_TRUE:
            continue
        code = code_of(content.get("code"))
        label = text_of(content.get("code")) or "(no code)"
        group_key = (code["system"], code["code"]) if code and "system" in code else ("", label)
        onset = _when(content, "onsetDateTime", "onsetPeriod", "recordedDate")
        entry = grouped.get(group_key)
        item = _item(
            resource,
            sources,
            onset=onset,
            category=text_of(content.get("category")),
            clinicalStatus=clinical,
            verificationStatus=verification,
        )
        if entry is None:
            grouped[group_key] = {"problem": label, "code": code, "onset": onset, "seenBy": [item]}
        else:
            entry["seenBy"].append(item)
            if onset and (not entry["onset"] or _sort_key(onset) < _sort_key(entry["onset"])):
                entry["onset"] = onset
    problems = list(grouped.values())
    problems.sort(key=lambda p: -_sort_key(p["onset"]))
    return problems


def _medications(found: list[StoredResource], sources: _Sources) -> list[Json]:
    items = []
    for resource in found:
        content = resource.content
        status = content.get("status")
        if resource.resource_type == "MedicationRequest":
            if status not in ("active", "on-hold") or content.get("intent") == "proposal":
                continue
            when = content.get("authoredOn")
        else:
            if status not in ("active", "intended"):
                continue
            when = _when(content, "effectiveDateTime", "effectivePeriod", "dateAsserted")
        medication = text_of(content.get("medicationCodeableConcept")) or text_of(
            content.get("medicationReference")
        )
        dosage = [
            d.get("text")
            for d in content.get("dosage") or content.get("dosageInstruction") or []
            if isinstance(d, dict) and d.get("text")
        ]
        items.append(
            _item(
                resource,
                sources,
                medication=medication or "(unnamed medication)",
                code=code_of(content.get("medicationCodeableConcept")),
                status=status,
                kind="prescription"
                if resource.resource_type == "MedicationRequest"
                else "statement",
                since=when,
                dosage="; ".join(str(d) for d in dosage) or None,
            )
        )
    items.sort(key=lambda i: -_sort_key(i.get("since")))
    return items


def _allergies(found: list[StoredResource], sources: _Sources) -> list[Json]:
    items = []
    for resource in found:
        content = resource.content
        clinical = status_code(content.get("clinicalStatus"))
        if (clinical and clinical != "active") or status_code(
            content.get("verificationStatus")
        ) in NOT_TRUE:
            continue
        reactions = [
            text_of(m)
            for r in content.get("reaction") or []
            if isinstance(r, dict)
            for m in r.get("manifestation") or []
        ]
        items.append(
            _item(
                resource,
                sources,
                substance=text_of(content.get("code")) or "(unspecified)",
                code=code_of(content.get("code")),
                criticality=content.get("criticality"),
                category=content.get("category"),
                reactions=[r for r in reactions if r],
                recorded=content.get("recordedDate") or content.get("onsetDateTime"),
            )
        )
    return items


def encounter_group(setting: str | None, encounter: Json) -> str:
    cls = encounter.get("class")
    code = cls.get("code") if isinstance(cls, dict) else None
    if setting == "primary":
        return "gp"
    if setting in ("community", "mental-health", "social-care"):
        return setting
    if code == "EMER":
        return "emergency"
    if code in INPATIENT_CLASSES:
        return "inpatient"
    if setting == "acute" or code == "AMB":
        return "outpatient"
    return "other"


def _encounters(
    found: list[StoredResource], sources: _Sources, referenced: dict[str, Json], recent: int
) -> Json:
    groups: dict[str, list[Json]] = {g: [] for g in GROUPS}
    for resource in found:
        content = resource.content
        if content.get("status") in ("entered-in-error", "cancelled"):
            continue
        period = _period(content)
        source = sources.of(resource)
        provider = _party(content.get("serviceProvider"), referenced) or source.get("organisation")
        groups[encounter_group(resource.setting, content)].append(
            _item(
                resource,
                sources,
                start=period.get("start"),
                end=period.get("end"),
                status=content.get("status"),
                type=text_of(content.get("type")),
                reason=text_of(content.get("reasonCode")),
                diagnoses=[
                    text_of(d.get("condition"))
                    for d in content.get("diagnosis") or []
                    if isinstance(d, dict) and text_of(d.get("condition"))
                ],
                provider=provider,
            )
        )
    result: Json = {}
    for name, items in groups.items():
        if not items:
            continue
        items.sort(key=lambda i: -_sort_key(i.get("start")))
        result[name] = {"total": len(items), "recent": items[:recent]}
    return result


def _care_plans(found: list[StoredResource], sources: _Sources) -> list[Json]:
    items = []
    for resource in found:
        content = resource.content
        if content.get("status") not in ("active", "draft", "on-hold"):
            continue
        period = _period(content)
        items.append(
            _item(
                resource,
                sources,
                title=content.get("title") or text_of(content.get("category")) or "(care plan)",
                description=content.get("description"),
                status=content.get("status"),
                start=period.get("start"),
                end=period.get("end"),
                activities=[
                    text_of(a.get("detail", {}).get("code"))
                    for a in content.get("activity") or []
                    if isinstance(a, dict) and text_of(a.get("detail", {}).get("code"))
                ],
            )
        )
    items.sort(key=lambda i: -_sort_key(i.get("start")))
    return items


def _care_teams(found: list[StoredResource], sources: _Sources) -> list[Json]:
    items = []
    for resource in found:
        content = resource.content
        if content.get("status") not in (None, "active", "proposed"):
            continue
        members = [
            {
                "role": text_of(p.get("role")),
                "member": text_of(p.get("member")) or (p.get("member") or {}).get("reference"),
            }
            for p in content.get("participant") or []
            if isinstance(p, dict)
        ]
        items.append(
            _item(
                resource,
                sources,
                name=content.get("name") or text_of(content.get("category")),
                status=content.get("status"),
                members=members,
            )
        )
    return items


def _risk(found: list[StoredResource], sources: _Sources) -> Json | None:
    usable = [r for r in found if r.content.get("status") not in ("entered-in-error", "cancelled")]
    if not usable:
        return None

    def when(resource: StoredResource) -> float:
        moment = _when(resource.content, "occurrenceDateTime", "occurrencePeriod")
        return _sort_key(moment) if moment else resource.last_updated.timestamp()

    latest = max(usable, key=when)
    content = latest.content
    prediction = next((p for p in content.get("prediction") or [] if isinstance(p, dict)), {})
    reasons = [
        *(text_of(r) for r in content.get("reasonCode") or []),
        *(text_of(b) for b in content.get("basis") or []),
        prediction.get("rationale"),
        *(n.get("text") for n in content.get("note") or [] if isinstance(n, dict)),
    ]
    return _item(
        latest,
        sources,
        date=_when(content, "occurrenceDateTime", "occurrencePeriod"),
        status=content.get("status"),
        method=text_of(content.get("method")),
        outcome=text_of(prediction.get("outcome")),
        probability=prediction.get("probabilityDecimal"),
        qualitative=text_of(prediction.get("qualitativeRisk")),
        reasons=[r for r in reasons if r],
        assessments=len(usable),
    )


def _alerts(found: list[StoredResource], sources: _Sources) -> list[Json]:
    items = []
    for resource in found:
        content = resource.content
        status = content.get("status")
        if resource.resource_type == "Flag":
            if status != "active":
                continue
            text = text_of(content.get("code"))
            when = _when(content, "period")
        else:
            if status in CLOSED_COMMUNICATION:
                continue
            payload = [
                p.get("contentString")
                for p in content.get("payload") or []
                if isinstance(p, dict) and p.get("contentString")
            ]
            text = (
                "; ".join(str(p) for p in payload)
                or text_of(content.get("topic"))
                or text_of(content.get("reasonCode"))
            )
            when = content.get("sent") or content.get("received")
        items.append(
            _item(
                resource,
                sources,
                kind=resource.resource_type,
                text=text or "(alert)",
                category=text_of(content.get("category")),
                priority=content.get("priority"),
                status=status,
                date=when,
            )
        )
    items.sort(key=lambda i: -_sort_key(i.get("date")))
    return items
