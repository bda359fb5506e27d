"""Transaction bundles of realistic size for the ingest benchmarks.

Built like the GP feed of ``joinedup.synth`` (PUT entries with local ids and ``Patient/<id>``
references that ingest-gp rewrites), but each a GP's view of one person with a history:
a Patient, 3-5 Encounters carrying their reasons and diagnoses inline, 2-4 Conditions and 4-8
Observations, so 10-18 resources a bundle. Every patient has an NHS number of its own.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM, nhs_check_digit

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"

GIVEN = ["Amira", "Ben", "Chloe", "Dev", "Ellen", "Farid", "Grace", "Hugo", "Isla", "Jamal"]
FAMILY = ["Ahmed", "Brown", "Clarke", "Das", "Evans", "Fofana", "Green", "Hussain", "Khan"]
STREETS = ["High Street", "Station Road", "Church Lane", "Park Avenue", "Victoria Road"]
TOWNS = [("Ealing", "W5"), ("Hounslow", "TW3"), ("Harrow", "HA1"), ("Brent", "NW10")]

CONDITIONS = [
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder"),
    ("709044004", "Chronic kidney disease"),
    ("195967001", "Asthma"),
    ("13645005", "Chronic obstructive lung disease"),
    ("49436004", "Atrial fibrillation"),
    ("302866003", "Hypoglycaemia"),
    ("35489007", "Depressive disorder"),
]
# (LOINC code, display, unit, low, high)
OBSERVATIONS = [
    ("59261-8", "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC protocol", "mmol/mol", 38, 96),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 100, 180),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 105),
    ("29463-7", "Body weight", "kg", 48, 130),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18, 42),
    ("33914-3", "Glomerular filtration rate/1.73 sq M.predicted", "mL/min/{1.73_m2}", 15, 110),
    ("15074-8", "Glucose [Moles/volume] in Blood", "mmol/L", 3, 18),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mmol/L", 3, 8),
]
ENCOUNTER_CLASSES = [
    ("AMB", "ambulatory", 0.7),
    ("EMER", "emergency", 0.2),
    ("IMP", "inpatient", 0.1),
]


def nhs_numbers(rng: random.Random) -> Iterator[str]:
    """Distinct valid NHS numbers in the 999 range (reserved for test data), from a random start."""
    start = rng.randrange(10**6)
    for step in range(10**6):
        first_nine = f"999{(start + step) % 10**6:06d}"
        check = nhs_check_digit(first_nine)
        if check is not None:
            yield f"{first_nine}{check}"


@dataclass(frozen=True)
class Population:
    """Bundles ready to send (serialised before any clock starts) and what they hold."""

    bundles: list[bytes]
    resources: int

    @property
    def mean_resources(self) -> float:
        return self.resources / len(self.bundles) if self.bundles else 0.0

    def params(self) -> dict[str, Any]:
        sizes = [len(b) for b in self.bundles]
        return {
            "bundles": len(self.bundles),
            "resources": self.resources,
            "resources_per_bundle": round(self.mean_resources, 2),
            "bundle_kb_mean": round(sum(sizes) / len(sizes) / 1024, 1) if sizes else 0,
        }


def build(count: int, *, prefix: str, ods: str, seed: int, first: int = 0) -> Population:
    """``count`` bundles with local ids ``<prefix>-<n>-...`` for n from ``first``."""
    rng = random.Random(seed)  # noqa: S311 - repeatable test data, not secrets
    numbers = nhs_numbers(rng)
    bundles: list[bytes] = []
    resources = 0
    for index in range(first, first + count):
        bundle = patient_bundle(f"{prefix}-{index:05d}", next(numbers), ods, rng)
        resources += len(bundle["entry"])
        bundles.append(orjson.dumps(bundle))
    return Population(bundles, resources)


def patient_bundle(
    patient_id: str, nhs_number: str, ods: str, rng: random.Random
) -> dict[str, Any]:
    subject = {"reference": f"Patient/{patient_id}"}
    town, postcode = rng.choice(TOWNS)
    age = rng.randint(18, 95)
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": patient_id,
            "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": nhs_number},
                {"system": f"https://fhir.joinedup.nhs.uk/Id/local/{ods}", "value": patient_id},
            ],
            "active": True,
            "name": [
                {"use": "official", "family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}
            ],
            "telecom": [{"system": "phone", "value": f"07700 9{rng.randrange(10**5):05d}"}],
            "gender": rng.choice(["female", "male"]),
            "birthDate": f"{2026 - age}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "address": [
                {
                    "line": [f"{rng.randint(1, 200)} {rng.choice(STREETS)}"],
                    "city": town,
                    "postalCode": f"{postcode} {rng.randint(1, 9)}AB",
                }
            ],
            "generalPractitioner": [
                {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ods}}
            ],
        }
    ]
    conditions: list[dict[str, Any]] = []
    for number, (code, display) in enumerate(rng.sample(CONDITIONS, rng.randint(2, 4))):
        condition = {
            "resourceType": "Condition",
            "id": f"{patient_id}-cond-{number}",
            "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
            "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                            "code": "problem-list-item",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
            "subject": subject,
            "onsetDateTime": f"{rng.randint(2005, 2025)}-{rng.randint(1, 12):02d}-01",
            "recordedDate": f"{rng.randint(2005, 2025)}-{rng.randint(1, 12):02d}-15",
        }
        conditions.append(condition)
    encounters: list[dict[str, Any]] = []
    for number in range(rng.randint(3, 5)):
        class_code, class_display, _ = rng.choices(
            ENCOUNTER_CLASSES, weights=[w for *_, w in ENCOUNTER_CLASSES]
        )[0]
        condition = rng.choice(conditions)
        day = f"2026-{rng.randint(1, 9):02d}-{rng.randint(1, 28):02d}"
        hour = rng.randint(8, 17)
        encounters.append(
            {
                "resourceType": "Encounter",
                "id": f"{patient_id}-enc-{number}",
                "status": "finished",
                "class": {"system": ACT_CODE, "code": class_code, "display": class_display},
                "subject": subject,
                "period": {"start": f"{day}T{hour:02d}:00:00Z", "end": f"{day}T{hour:02d}:20:00Z"},
                "reasonCode": [condition["code"]],
                "diagnosis": [
                    {
                        "condition": {"reference": f"Condition/{condition['id']}"},
                        "use": {"coding": [{"system": DIAGNOSIS_ROLE, "code": "AD"}]},
                        "rank": 1,
                    }
                ],
                "serviceProvider": {
                    "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ods}
                },
            }
        )
    observations: list[dict[str, Any]] = []
    for number, (code, display, unit, low, high) in enumerate(
        rng.sample(OBSERVATIONS, rng.randint(4, 8))
    ):
        encounter = rng.choice(encounters)
        observations.append(
            {
                "resourceType": "Observation",
                "id": f"{patient_id}-obs-{number}",
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "vital-signs"
                                if unit in ("mm[Hg]", "kg", "kg/m2")
                                else "laboratory",
                            }
                        ]
                    }
                ],
                "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{encounter['id']}"},
                "effectiveDateTime": encounter["period"]["start"],
                "valueQuantity": {
                    "value": round(rng.uniform(low, high), 1),
                    "unit": unit,
                    "system": UCUM,
                    "code": unit,
                },
            }
        )
    resources += encounters + conditions + observations
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r) for r in resources],
    }


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{resource['resourceType']}-{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }
