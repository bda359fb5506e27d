"""The search parameters the record supports, per resource type: what each one is called, its
FHIR type, and where its values live in the resource.

This table drives three things, so they can never disagree: what is indexed when a resource is
stored (``indexing``), what a search may ask for (``search``), and what the CapabilityStatement
says (``capability``).

Paths are dotted element names; a step over a list visits every item. A choice element is listed
once per type it may take (``effectiveDateTime``, ``effectivePeriod``). Parameters that read the
same element with a narrower target share its index rows: ``patient`` is ``subject`` restricted to
Patient references (``stored_as="subject"``), so a resource's subject is indexed once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

ParamType = Literal["token", "string", "date", "reference", "quantity"]

ADMINISTRATIVE_GENDER = "http://hl7.org/fhir/administrative-gender"


@dataclass(frozen=True)
class SearchParam:
    name: str
    type: ParamType
    paths: tuple[str, ...]
    documentation: str = ""
    # reference parameters: the resource types they may point to (empty: any)
    targets: tuple[str, ...] = ()
    # token parameters over a plain ``code`` element: the system it implicitly belongs to
    system: str = ""
    # the parameter whose index rows this one reads (``patient`` reads ``subject``'s rows)
    stored_as: str = ""
    # a reference parameter that only matches references to these types
    only_targets: tuple[str, ...] = ()

    @property
    def column(self) -> str:
        """The ``param`` value its index rows carry."""
        return self.stored_as or self.name

    @property
    def indexed(self) -> bool:
        """Whether this parameter writes index rows of its own."""
        return not self.stored_as


@dataclass(frozen=True)
class ResourceSearch:
    resource_type: str
    params: Mapping[str, SearchParam] = field(default_factory=dict)

    def indexed(self) -> list[SearchParam]:
        return [p for p in self.params.values() if p.indexed]


def token(name: str, *paths: str, system: str = "", doc: str = "") -> SearchParam:
    return SearchParam(name, "token", paths, doc, system=system)


def string(name: str, *paths: str, doc: str = "") -> SearchParam:
    return SearchParam(name, "string", paths, doc)


def date(name: str, *paths: str, doc: str = "") -> SearchParam:
    return SearchParam(name, "date", paths, doc)


def quantity(name: str, *paths: str, doc: str = "") -> SearchParam:
    return SearchParam(name, "quantity", paths, doc)


def reference(name: str, *paths: str, targets: Iterable[str] = (), doc: str = "") -> SearchParam:
    return SearchParam(name, "reference", paths, doc, targets=tuple(targets))


def patient_of(stored: str, doc: str = "") -> SearchParam:
    """``patient``: the ``stored`` reference, restricted to Patients."""
    return SearchParam(
        "patient",
        "reference",
        (),
        doc or f"the Patient this is about ({stored} that is a Patient)",
        targets=("Patient",),
        stored_as=stored,
        only_targets=("Patient",),
    )


def subject(*targets: str) -> SearchParam:
    return reference("subject", "subject", targets=targets, doc="who or what this is about")


def encounter() -> SearchParam:
    return reference("encounter", "encounter", targets=("Encounter",), doc="the Encounter")


def status(path: str = "status") -> SearchParam:
    return token("status", path, doc="status code")


def code(*paths: str) -> SearchParam:
    return token("code", *(paths or ("code",)), doc="system|code of the code element")


def identifier() -> SearchParam:
    return token("identifier", "identifier", doc="system|value of a business identifier")


CLINICAL_STATUS = "clinicalStatus"
GENDER_SYSTEM = ADMINISTRATIVE_GENDER


def _types(*entries: tuple[str, list[SearchParam]]) -> Mapping[str, ResourceSearch]:
    return MappingProxyType(
        {
            name: ResourceSearch(name, MappingProxyType({p.name: p for p in params}))
            for name, params in entries
        }
    )


REGISTRY: Mapping[str, ResourceSearch] = _types(
    (
        "Patient",
        [
            identifier(),
            string("name", "name", doc="any part of a name (family, given, prefix, suffix, text)"),
            string("family", "name.family", doc="family name"),
            string("given", "name.given", doc="given name"),
            date("birthdate", "birthDate", doc="date of birth"),
            token("gender", "gender", system=GENDER_SYSTEM, doc="administrative gender"),
            reference(
                "general-practitioner",
                "generalPractitioner",
                targets=("Organization", "Practitioner", "PractitionerRole"),
                doc="registered GP practice or GP",
            ),
            reference("link", "link.other", targets=("Patient",), doc="linked Patient (merges)"),
            token("active", "active", doc="whether the record is in active use"),
            string("address-postalcode", "address.postalCode", doc="postcode"),
        ],
    ),
    (
        "Encounter",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            date("date", "period", doc="the period of the encounter"),
            token("class", "class", doc="v3 ActCode: EMER, IMP, AMB ..."),
            status(),
            token("type", "type", doc="the type of encounter"),
            token("reason-code", "reasonCode", doc="why the encounter took place"),
            reference(
                "service-provider",
                "serviceProvider",
                targets=("Organization",),
                doc="the organisation responsible (also :identifier=ODS system|code)",
            ),
            reference(
                "participant",
                "participant.individual",
                targets=("Practitioner", "PractitionerRole", "RelatedPerson"),
                doc="people involved",
            ),
        ],
    ),
    (
        "Condition",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            code(),
            token("clinical-status", CLINICAL_STATUS, doc="active, resolved, ..."),
            token("verification-status", "verificationStatus", doc="confirmed, refuted, ..."),
            token("category", "category", doc="problem-list-item, encounter-diagnosis"),
            date(
                "onset-date", "onsetDateTime", "onsetPeriod.start", doc="when the condition began"
            ),
            date("recorded-date", "recordedDate", doc="when it was first recorded"),
        ],
    ),
    (
        "Observation",
        [
            subject("Patient", "Group", "Device", "Location"),
            patient_of("subject"),
            encounter(),
            code(),
            token("category", "category", doc="vital-signs, laboratory, ..."),
            date(
                "date",
                "effectiveDateTime",
                "effectivePeriod",
                "effectiveInstant",
                doc="when it was observed",
            ),
            quantity("value-quantity", "valueQuantity", doc="[prefix]number|system|code"),
        ],
    ),
    (
        "MedicationRequest",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            status(),
            token("intent", "intent", doc="proposal, plan, order, ..."),
            code("medicationCodeableConcept"),
            reference("medication", "medicationReference", targets=("Medication",)),
            date("authoredon", "authoredOn", doc="when the prescription was written"),
            reference(
                "requester",
                "requester",
                targets=("Practitioner", "PractitionerRole", "Organization"),
            ),
        ],
    ),
    (
        "MedicationStatement",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            status(),
            code("medicationCodeableConcept"),
            reference("medication", "medicationReference", targets=("Medication",)),
            date("effective", "effectiveDateTime", "effectivePeriod", doc="when it was taken"),
        ],
    ),
    (
        "AllergyIntolerance",
        [
            identifier(),
            reference("patient", "patient", targets=("Patient",), doc="who has the allergy"),
            code(),
            token("clinical-status", CLINICAL_STATUS, doc="active, inactive, resolved"),
            token("criticality", "criticality", doc="low, high, unable-to-assess"),
            date("date", "recordedDate", doc="when it was recorded"),
        ],
    ),
    (
        "CarePlan",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            status(),
            token("intent", "intent"),
            token("category", "category"),
            date("date", "period", doc="the period the plan covers"),
            reference("care-team", "careTeam", targets=("CareTeam",)),
            reference(
                "author", "author", targets=("Practitioner", "PractitionerRole", "Organization")
            ),
        ],
    ),
    (
        "CareTeam",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            status(),
            token("category", "category"),
            date("date", "period", doc="the period the team is active"),
            reference(
                "participant",
                "participant.member",
                targets=("Practitioner", "PractitionerRole", "Organization", "CareTeam"),
            ),
            token("role", "participant.role", doc="a participant's role (SNOMED CT)"),
        ],
    ),
    (
        "Task",
        [
            identifier(),
            reference("subject", "for", targets=(), doc="the beneficiary (Task.for)"),
            patient_of("subject", "the Patient the task is for"),
            encounter(),
            status(),
            token("business-status", "businessStatus"),
            token("intent", "intent"),
            token("priority", "priority"),
            code(),
            reference("focus", "focus", targets=()),
            reference(
                "owner",
                "owner",
                targets=("Practitioner", "PractitionerRole", "Organization", "CareTeam"),
            ),
            reference("based-on", "basedOn", targets=()),
            date("authored-on", "authoredOn"),
            date("period", "executionPeriod"),
        ],
    ),
    (
        "RiskAssessment",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            status(),
            token("method", "method"),
            code(),
            date("date", "occurrenceDateTime", "occurrencePeriod", doc="when it was assessed"),
            reference("condition", "condition", targets=("Condition",)),
        ],
    ),
    (
        "Communication",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            status(),
            token("category", "category"),
            date("sent", "sent"),
            reference(
                "recipient",
                "recipient",
                targets=("Practitioner", "PractitionerRole", "Organization", "CareTeam", "Patient"),
            ),
            reference("sender", "sender", targets=()),
            reference("about", "about", targets=()),
        ],
    ),
    (
        "Flag",
        [
            identifier(),
            subject("Patient", "Location", "Group", "Organization", "Practitioner"),
            patient_of("subject"),
            encounter(),
            status(),
            token("category", "category"),
            code(),
            date("date", "period"),
        ],
    ),
    (
        "Procedure",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            encounter(),
            status(),
            code(),
            date("date", "performedDateTime", "performedPeriod"),
        ],
    ),
    (
        "Immunization",
        [
            identifier(),
            reference("patient", "patient", targets=("Patient",)),
            status(),
            token("vaccine-code", "vaccineCode"),
            date("date", "occurrenceDateTime"),
        ],
    ),
    (
        "DiagnosticReport",
        [
            identifier(),
            subject("Patient", "Group", "Device", "Location"),
            patient_of("subject"),
            encounter(),
            status(),
            code(),
            token("category", "category"),
            date("date", "effectiveDateTime", "effectivePeriod"),
            reference("result", "result", targets=("Observation",)),
        ],
    ),
    (
        "Claim",
        [identifier(), reference("patient", "patient", targets=("Patient",)), status()],
    ),
    (
        "ExplanationOfBenefit",
        [identifier(), reference("patient", "patient", targets=("Patient",)), status()],
    ),
    (
        "Goal",
        [
            identifier(),
            subject("Patient", "Group", "Organization"),
            patient_of("subject"),
            token("lifecycle-status", "lifecycleStatus"),
        ],
    ),
    (
        "ImagingStudy",
        [identifier(), subject("Patient", "Device", "Group"), patient_of("subject"), status()],
    ),
    (
        "DocumentReference",
        [
            identifier(),
            subject("Patient", "Practitioner", "Group", "Device"),
            patient_of("subject"),
            status(),
            token("type", "type"),
            date("date", "date"),
        ],
    ),
    (
        "EpisodeOfCare",
        [
            identifier(),
            reference("patient", "patient", targets=("Patient",)),
            status(),
            token("type", "type"),
            date("date", "period"),
            reference("organization", "managingOrganization", targets=("Organization",)),
        ],
    ),
    (
        "ServiceRequest",
        [
            identifier(),
            subject("Patient", "Group", "Location", "Device"),
            patient_of("subject"),
            encounter(),
            status(),
            code(),
            date("authored", "authoredOn"),
        ],
    ),
    (
        "MedicationAdministration",
        [
            identifier(),
            subject("Patient", "Group"),
            patient_of("subject"),
            status(),
            code("medicationCodeableConcept"),
            date("effective-time", "effectiveDateTime", "effectivePeriod"),
        ],
    ),
    (
        "Coverage",
        [
            identifier(),
            reference("beneficiary", "beneficiary", targets=("Patient",)),
            patient_of("beneficiary", "the beneficiary"),
            status(),
        ],
    ),
    (
        "Device",
        [identifier(), reference("patient", "patient", targets=("Patient",)), status()],
    ),
    (
        "Appointment",
        [
            identifier(),
            reference("actor", "participant.actor", targets=()),
            patient_of("actor", "a participant that is a Patient"),
            status(),
            date("date", "start"),
        ],
    ),
    (
        "DetectedIssue",
        [identifier(), reference("patient", "patient", targets=("Patient",)), code()],
    ),
    (
        "Organization",
        [
            identifier(),
            string("name", "name", "alias", doc="name or alias"),
            token("type", "type"),
            reference("partof", "partOf", targets=("Organization",)),
        ],
    ),
    (
        "Practitioner",
        [
            identifier(),
            string("name", "name"),
            string("family", "name.family"),
        ],
    ),
    (
        "PractitionerRole",
        [
            identifier(),
            reference("practitioner", "practitioner", targets=("Practitioner",)),
            reference("organization", "organization", targets=("Organization",)),
            token("role", "code"),
            token("specialty", "specialty"),
        ],
    ),
    (
        "Location",
        [
            identifier(),
            string("name", "name", "alias"),
            reference("organization", "managingOrganization", targets=("Organization",)),
        ],
    ),
    (
        "Medication",
        [identifier(), code()],
    ),
)


# Parameters every type has, served from the resources table itself.
COMMON_PARAMS: Mapping[str, SearchParam] = MappingProxyType(
    {
        "_id": SearchParam("_id", "token", (), "logical id"),
        "_lastUpdated": SearchParam("_lastUpdated", "date", (), "when the record stored it"),
    }
)


def supported_types() -> list[str]:
    return sorted(REGISTRY)


def search_params(resource_type: str) -> Mapping[str, SearchParam]:
    """Every search parameter of ``resource_type``, common ones included."""
    found = REGISTRY.get(resource_type)
    params: dict[str, SearchParam] = dict(COMMON_PARAMS)
    if found:
        params.update(found.params)
    return params


def param(resource_type: str, name: str) -> SearchParam | None:
    return search_params(resource_type).get(name)
