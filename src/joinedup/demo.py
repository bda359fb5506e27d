"""A small built-in demo population, pushed through the real ingest path at start-up.

The synthetic-population issue replaces it with a generated North West London-like world; until
then a few dozen patients of one GP practice, some with diabetes and a diabetes consultant in
their care team, make the platform show something living.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from rich.progress import Progress

from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM, nhs_check_digit
from fhir_common.settings import Settings
from joinedup.tokens import feed_token

DEMO_FEED = Feed(
    id="gp-demo",
    kind=FeedKind.FHIR,
    ods="Y00001",
    setting="primary",
    description="Built-in demo GP practice",
)
SNOMED = "http://snomed.info/sct"
GIVEN = ["Amira", "Ben", "Chloe", "Dev", "Ellen", "Farid", "Grace", "Hugo", "Isla", "Jamal"]
FAMILY = ["Ahmed", "Brown", "Clarke", "Das", "Evans", "Fofana", "Green", "Hussain", "Khan"]


def demo_nhs_number(rng: random.Random) -> str:
    """A valid NHS number in the 999 range, which the NHS reserves for test data."""
    while True:
        first_nine = f"999{rng.randrange(10**6):06d}"
        check = nhs_check_digit(first_nine)
        if check is not None:
            return f"{first_nine}{check}"


def patient_bundle(index: int, rng: random.Random) -> dict[str, Any]:
    patient_id = f"demo-{index:04d}"
    age = rng.choice([34, 52, 67, 71, 76, 79, 83, 88])
    diabetic = rng.random() < 0.4
    entries = [
        _entry(
            {
                "resourceType": "Patient",
                "id": patient_id,
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": demo_nhs_number(rng)}],
                "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN)]}],
                "gender": rng.choice(["female", "male"]),
                "birthDate": f"{2026 - age}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "generalPractitioner": [
                    {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": DEMO_FEED.ods}}
                ],
            }
        ),
        _entry(
            {
                "resourceType": "Encounter",
                "id": f"{patient_id}-gp-1",
                "status": "finished",
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": "AMB",
                },
                "subject": {"reference": f"Patient/{patient_id}"},
                "period": {"start": "2026-10-01T09:00:00Z", "end": "2026-10-01T09:15:00Z"},
            }
        ),
    ]
    if diabetic:
        entries += _diabetes_entries(patient_id, rng)
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _diabetes_entries(patient_id: str, rng: random.Random) -> list[dict[str, Any]]:
    subject = {"reference": f"Patient/{patient_id}"}
    return [
        _entry(
            {
                "resourceType": "Condition",
                "id": f"{patient_id}-dm",
                "clinicalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                            "code": "active",
                        }
                    ]
                },
                "code": {
                    "coding": [{"system": SNOMED, "code": "44054006", "display": "Diabetes type 2"}]
                },
                "subject": subject,
            }
        ),
        _entry(
            {
                "resourceType": "Observation",
                "id": f"{patient_id}-hba1c",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "59261-8"}]},
                "subject": subject,
                "effectiveDateTime": "2026-09-15",
                "valueQuantity": {
                    "value": rng.randint(42, 95),
                    "unit": "mmol/mol",
                    "system": "http://unitsofmeasure.org",
                    "code": "mmol/mol",
                },
            }
        ),
        _entry(
            {
                "resourceType": "CareTeam",
                "id": f"{patient_id}-diabetes-team",
                "status": "active",
                "subject": subject,
                "period": {"start": "2025-01-01"},
                "participant": [
                    {
                        "role": [
                            {
                                "coding": [
                                    {
                                        "system": SNOMED,
                                        "code": "408475000",
                                        "display": "Diabetic medicine",
                                    }
                                ]
                            }
                        ],
                        "member": {"reference": "Practitioner/demo-diabetes-consultant"},
                    }
                ],
            }
        ),
    ]


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{resource['resourceType']}-{resource['id']}",
        "resource": resource,
        "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
    }


def register_demo_feed(data_dir: Path) -> Feed:
    registry = FeedRegistry(Settings(data_dir=data_dir).resolved_feeds_file())
    if registry.get(DEMO_FEED.id) is None:
        registry.add(DEMO_FEED)
    return DEMO_FEED


async def load_demo(app: FastAPI, patients: int = 40, seed: int = 2026) -> int:
    """Push the demo population through ingest-gp; return how many bundles were accepted."""
    data_dir: Path = app.state.data_dir
    feed = register_demo_feed(data_dir)
    token = feed_token(data_dir, feed, ttl_seconds=600)
    rng = random.Random(seed)  # noqa: S311 - repeatable demo data, not secrets
    accepted = 0
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://embedded") as client:
        with Progress(transient=True) as progress:
            task = progress.add_task("Loading demo patients", total=patients)
            for index in range(patients):
                response = await client.post(
                    "/ingest-gp/fhir", json=patient_bundle(index, rng), headers=headers
                )
                response.raise_for_status()
                accepted += 1
                progress.advance(task)
    await app.state.bus.wait_idle()
    return accepted
