"""A GP practice's feed: FHIR R4 transaction Bundles, UK Core-shaped, every entry a PUT with the
practice system's own stable id (ingest-gp turns them into deterministic ids).

* One **practice bundle** first: the practice and its MDG (Organization, ``partOf``), the trusts
  and community provider, and the clinicians that care teams name, each a Practitioner with a
  PractitionerRole (the diabetes consultants' role has specialty SNOMED CT 408475000).
* One **registration bundle** per patient: Patient (NHS number, ODS-coded generalPractitioner,
  UK Core ethnic category), problem list (Condition), frailty, smoking status, last HbA1c, current
  medicines (MedicationRequest) and care teams as DESIGN.md "Who is responsible" says: a diabetes
  care team whose consultant participant has role 408475000, and for people in MDG case
  management a care coordinator with role 768820003.
* Then a bundle per consultation (Encounter AMB with its observations, new problem-list entries
  and repeat prescriptions), per laboratory result, and a Patient update when someone dies.
"""

from __future__ import annotations

import random
from typing import Any

from fhir_common import codes
from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    local_identifier_system,
)
from joinedup.synth import clock as clk
from joinedup.synth import identity, vocabulary
from joinedup.synth.clock import Clock
from joinedup.synth.events import Event
from joinedup.synth.person import Person
from joinedup.synth.targets import ETHNIC_DISPLAY
from joinedup.synth.world import Clinician, Practice, World

SNOMED = codes.SNOMED
UCUM = "http://unitsofmeasure.org"
ETHNIC_EXTENSION = "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-EthnicCategory"
ETHNIC_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-EthnicCategoryEngland"
#: Deprivation is derived from where people live; a GP system would hold the postcode, and an
#: analyst the lookup. We carry the decile on the Patient so the risk model can read it.
IMD_EXTENSION = (
    "https://fhir.joinedup.nhs.uk/StructureDefinition/index-of-multiple-deprivation-decile"
)
MDG_SYSTEM = "https://fhir.joinedup.nhs.uk/Id/mdg"
GP_ROLE = ("62247001", "General practitioner")
CONSULTATION = ("11429006", "Consultation")
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"

#: Long-term medicines and who takes them.
MEDICINES_FOR = (
    ("insulin", lambda p: p.insulin),
    ("metformin", lambda p: "diabetes_t2" in p.conditions),
    ("salbutamol", lambda p: bool(p.conditions & {"asthma", "copd"})),
    ("furosemide", lambda p: "heart_failure" in p.conditions),
    ("amlodipine", lambda p: "hypertension" in p.conditions),
)


def _coding(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r) for r in resources],
    }


def _slug(name: str) -> str:
    return name.replace("_", "-")


def patient_id(person: Person) -> str:
    return f"p{person.index:07d}"


def _ods(code: str, display: str | None = None) -> dict[str, Any]:
    reference: dict[str, Any] = {
        "type": "Organization",
        "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": code},
    }
    if display:
        reference["display"] = display
    return reference


class GpFeed:
    """Writes the FHIR bundles of one practice."""

    def __init__(self, world: World, practice: Practice, clock: Clock) -> None:
        self.world = world
        self.practice = practice
        self.clock = clock
        self.patient_system = local_identifier_system(practice.ods, "patient-id")

    # --- the practice bundle -----------------------------------------------------------------

    def practice_bundle(self) -> dict[str, Any]:
        p = self.practice
        resources: list[dict[str, Any]] = [
            {
                "resourceType": "Organization",
                "id": f"mdg-{p.mdg.lower()}",
                "identifier": [{"system": MDG_SYSTEM, "value": p.mdg}],
                "active": True,
                "type": [{"text": "Multidisciplinary group of GP practices"}],
                "name": f"{p.mdg} multidisciplinary group",
            },
            {
                "resourceType": "Organization",
                "id": f"org-{p.ods.lower()}",
                "identifier": [{"system": ODS_ORGANIZATION_SYSTEM, "value": p.ods}],
                "active": True,
                "name": p.name,
                "partOf": {"reference": f"Organization/mdg-{p.mdg.lower()}"},
            },
        ]
        others = [(h.ods, h.name) for h in self.world.hospitals]
        others.append((self.world.community.ods, self.world.community.name))
        for ods, name in others:
            resources.append(
                {
                    "resourceType": "Organization",
                    "id": f"org-{ods.lower()}",
                    "identifier": [{"system": ODS_ORGANIZATION_SYSTEM, "value": ods}],
                    "active": True,
                    "name": name,
                }
            )
        for gp in p.gps:
            resources += self._clinician(gp, _coding(SNOMED, *GP_ROLE), None)
        diabetic_medicine = _coding(SNOMED, codes.DIABETIC_MEDICINE_ROLE, "Diabetic medicine")
        for hospital in self.world.hospitals:
            for consultant in hospital.consultants:
                code = _coding(SNOMED, "309343006", "Physician")
                resources += self._clinician(consultant, code, diabetic_medicine)
        coordinator_role = _coding(SNOMED, codes.CARE_COORDINATOR_ROLE, "Care coordinator")
        for coordinator in self.world.practice_coordinators(self.practice):
            resources += self._clinician(coordinator, coordinator_role, None)
        return bundle(resources)

    def _clinician(
        self, clinician: Clinician, code: dict[str, Any], specialty: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        practitioner = {
            "resourceType": "Practitioner",
            "id": clinician.local_id,
            "identifier": [
                {"system": clinician.registration_system, "value": clinician.registration}
            ],
            "active": True,
            "name": [{"family": clinician.family, "given": [clinician.given]}],
        }
        role: dict[str, Any] = {
            "resourceType": "PractitionerRole",
            "id": f"role-{clinician.local_id}",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{clinician.local_id}"},
            "organization": {"reference": f"Organization/org-{clinician.organisation.lower()}"},
            "code": [code],
        }
        if specialty is not None:
            role["specialty"] = [specialty]
        return [practitioner, role]

    # --- a patient ------------------------------------------------------------------------------

    def patient(self, person: Person, nhs: str, died_at: int | None = None) -> dict[str, Any]:
        given, family = identity.person_name(person.index, person.female)
        line, postcode = identity.address(person.index)
        resource: dict[str, Any] = {
            "resourceType": "Patient",
            "id": patient_id(person),
            "extension": [
                {
                    "url": ETHNIC_EXTENSION,
                    "valueCodeableConcept": _coding(
                        ETHNIC_SYSTEM, person.ethnicity, ETHNIC_DISPLAY[person.ethnicity]
                    ),
                },
                {"url": IMD_EXTENSION, "valueInteger": person.imd_decile},
            ],
            "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": nhs},
                {"system": self.patient_system, "value": patient_id(person)},
            ],
            "name": [{"use": "official", "family": family, "given": [given]}],
            "gender": "female" if person.female else "male",
            "birthDate": person.birth_date,
            "address": [{"use": "home", "line": [line], "city": "London", "postalCode": postcode}],
            "generalPractitioner": [_ods(self.practice.ods, self.practice.name)],
        }
        if died_at is not None:
            resource["deceasedDateTime"] = clk.iso(died_at)
        return resource

    def registration(self, person: Person, nhs: str, rng: random.Random) -> dict[str, Any]:
        """What the practice system holds about someone when the feed starts."""
        pid = patient_id(person)
        subject = {"reference": f"Patient/{pid}"}
        start = self.clock.start_epoch
        resources = [self.patient(person, nhs)]
        for name in sorted(person.conditions - person.uncoded):
            years = rng.uniform(0.3, min(15.0, max(0.5, person.age - 0.5)))
            onset = start - int(years * 365.25 * 86_400)
            resources.append(self._condition(pid, name, vocabulary.CONDITIONS[name], onset, onset))
        frailty = vocabulary.FRAILTY[person.frailty]
        if frailty is not None:
            assessed = start - rng.randrange(30, 365) * 86_400
            resources.append(self._condition(pid, "efi", frailty, assessed, assessed))
        if person.smoking >= 0:
            code, display = vocabulary.SMOKING[person.smoking]
            resources.append(
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-smoking",
                    "status": "final",
                    "category": [_coding(OBSERVATION_CATEGORY, "social-history", "Social History")],
                    "code": _coding(
                        codes.LOINC, vocabulary.SMOKING_STATUS_LOINC, "Tobacco smoking status"
                    ),
                    "subject": subject,
                    "effectiveDateTime": clk.iso_date(start - rng.randrange(30, 720) * 86_400),
                    "valueCodeableConcept": _coding(SNOMED, code, display),
                }
            )
        if person.hba1c is not None:
            measured = start - rng.randrange(20, 170) * 86_400
            value = float(round(person.hba1c + rng.gauss(0.0, 4.0)))
            resources.append(self._observation(pid, "last-hba1c", "hba1c", value, measured, None))
        for medicine, takes in MEDICINES_FOR:
            if takes(person):
                issued = start - rng.randrange(1, 56) * 86_400
                resources.append(self._prescription(pid, medicine, "start", issued))
        resources += self._care_teams(person, pid)
        return bundle(resources)

    def _care_teams(self, person: Person, pid: str) -> list[dict[str, Any]]:
        teams: list[dict[str, Any]] = []
        subject = {"reference": f"Patient/{pid}"}
        gp = self.practice.gps[person.index % len(self.practice.gps)]
        gp_participant = {
            "role": [_coding(SNOMED, *GP_ROLE)],
            "member": {"reference": f"PractitionerRole/role-{gp.local_id}"},
        }
        coordinator = self.world.care_coordinator(self.practice, person.index)
        coordinator_participant = {
            "role": [_coding(SNOMED, codes.CARE_COORDINATOR_ROLE, "Care coordinator")],
            "member": {"reference": f"PractitionerRole/role-{coordinator.local_id}"},
        }
        since = clk.iso_date(self.clock.start_epoch - (person.index % 700 + 30) * 86_400)
        if person.diabetes_type:
            trust = self.world.hospitals[person.main_trust]
            consultant = self.world.diabetes_consultant(person.main_trust, person.index)
            participants = [
                {
                    "role": [_coding(SNOMED, codes.DIABETIC_MEDICINE_ROLE, "Diabetic medicine")],
                    "member": {"reference": f"PractitionerRole/role-{consultant.local_id}"},
                    "onBehalfOf": {"reference": f"Organization/org-{trust.ods.lower()}"},
                },
                gp_participant,
            ]
            if person.care_coordinated:
                participants.append(coordinator_participant)
            teams.append(
                {
                    "resourceType": "CareTeam",
                    "id": f"{pid}-ct-diabetes",
                    "status": "active",
                    "name": "Diabetes care team",
                    "subject": subject,
                    "period": {"start": since},
                    "participant": participants,
                    "managingOrganization": [_ods(self.practice.ods)],
                }
            )
        if person.care_coordinated:
            teams.append(
                {
                    "resourceType": "CareTeam",
                    "id": f"{pid}-ct-mdg",
                    "status": "active",
                    "name": f"{self.practice.mdg} case management",
                    "subject": subject,
                    "period": {"start": since},
                    "participant": [coordinator_participant, gp_participant],
                    "managingOrganization": [_ods(self.practice.ods)],
                }
            )
        return teams

    # --- building blocks ------------------------------------------------------------------------

    def _condition(
        self, pid: str, key: str, concept: vocabulary.Concept, onset: int, recorded: int
    ) -> dict[str, Any]:
        return {
            "resourceType": "Condition",
            "id": f"{pid}-c-{_slug(key)}",
            "clinicalStatus": _coding(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": _coding(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
            "category": [_coding(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": _coding(SNOMED, concept.snomed, concept.display),
            "subject": {"reference": f"Patient/{pid}"},
            "onsetDateTime": clk.iso_date(onset),
            "recordedDate": clk.iso_date(recorded),
        }

    def _observation(
        self, pid: str, local: str, key: str, value: float, at: int, encounter: str | None
    ) -> dict[str, Any]:
        loinc, display, unit = vocabulary.OBSERVATIONS[key]
        category = "laboratory" if key == "hba1c" else "vital-signs"
        resource: dict[str, Any] = {
            "resourceType": "Observation",
            "id": f"{pid}-o-{local}",
            "status": "final",
            "category": [
                _coding(OBSERVATION_CATEGORY, category, category.replace("-", " ").title())
            ],
            "code": _coding(codes.LOINC, loinc, display),
            "subject": {"reference": f"Patient/{pid}"},
            "effectiveDateTime": clk.iso(at),
            "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit},
        }
        if encounter is not None:
            resource["encounter"] = {"reference": f"Encounter/{encounter}"}
        return resource

    def _prescription(self, pid: str, medicine: str, issue: str, at: int) -> dict[str, Any]:
        code, display = vocabulary.MEDICINES[medicine]
        return {
            "resourceType": "MedicationRequest",
            "id": f"{pid}-m-{medicine}-{issue}",
            "status": "active",
            "intent": "order",
            "courseOfTherapyType": _coding(
                "http://terminology.hl7.org/CodeSystem/medicationrequest-course-of-therapy",
                "continuous",
                "Continuous long term therapy",
            ),
            "medicationCodeableConcept": _coding(SNOMED, code, display),
            "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": clk.iso(at),
        }

    # --- events -------------------------------------------------------------------------------

    def consultation(self, person: Person, event: Event, rng: random.Random) -> dict[str, Any]:
        pid = patient_id(person)
        at = self.clock.epoch(event.start)
        encounter_id = f"{pid}-e-{event.serial}"
        gp = self.practice.gps[(person.index + event.serial) % len(self.practice.gps)]
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": encounter_id,
            "status": "finished",
            "class": codes.encounter_class(codes.AMB),
            "type": [_coding(SNOMED, *CONSULTATION)],
            "subject": {"reference": f"Patient/{pid}"},
            "participant": [{"individual": {"reference": f"Practitioner/{gp.local_id}"}}],
            "period": {"start": clk.iso(at), "end": clk.iso(at + 600)},
            "serviceProvider": _ods(self.practice.ods),
        }
        resources = [encounter]
        if event.newly_coded:
            encounter["reasonCode"] = []
            for name in event.newly_coded:
                concept = vocabulary.CONDITIONS[name]
                encounter["reasonCode"].append(_coding(SNOMED, concept.snomed, concept.display))
                onset = at - rng.randrange(30, 3 * 365) * 86_400
                resources.append(self._condition(pid, name, concept, onset, at))
        for number, (key, value) in enumerate(event.observations):
            local = f"{event.serial}-{number}"
            resources.append(self._observation(pid, local, key, value, at, encounter_id))
        if rng.random() < 0.4:
            for medicine, takes in MEDICINES_FOR:
                if takes(person):
                    resources.append(self._prescription(pid, medicine, str(event.serial), at))
        return bundle(resources)

    def lab_result(self, person: Person, event: Event) -> dict[str, Any]:
        pid = patient_id(person)
        at = self.clock.epoch(event.start)
        key, value = event.observations[0]
        return bundle([self._observation(pid, str(event.serial), key, value, at, None)])

    def death(self, person: Person, nhs: str, at: int) -> dict[str, Any]:
        return bundle([self.patient(person, nhs, died_at=at)])
