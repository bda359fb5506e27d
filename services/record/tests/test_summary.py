"""The clinician's summary (``GET /summary/{patient}``) of one person seen by a GP practice, a
hospital (ED and ward), community and mental-health services, with a risk score, a care plan and
alerts: each item says which provider it came from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM
from fhir_common.settings import Settings

N1 = "9434765919"
SNOMED = "http://snomed.info/sct"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def concept(code: str, display: str, system: str = SNOMED) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


def sent(resource: dict[str, Any], feed: str, setting: str, key: str = N1) -> Message:
    return fhir_message(resource, key, event_headers(source=feed, setting=setting))


def patient(pid: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": N1}],
        "name": [{"use": "official", "family": "Smith", "given": ["Fredrica"]}],
        "gender": "female",
        "birthDate": "1965-12-13",
        **extra,
    }


def condition(cid: str, pid: str, code: str, display: str, status: str, **extra: Any) -> dict:
    return {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": f"Patient/{pid}"},
        "code": concept(code, display),
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": status}]},
        **extra,
    }


def visit(eid: str, pid: str, cls: str, start: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": ACT, "code": cls},
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": start},
        **extra,
    }


PERSON = [
    # the GP practice
    sent(
        patient(
            "gp-pat",
            generalPractitioner=[{"reference": "Organization/malton", "type": "Organization"}],
        ),
        "gp-a",
        "primary",
    ),
    sent(
        {
            "resourceType": "Organization",
            "id": "malton",
            "name": "Malton Surgery",
            "identifier": [{"system": ODS_ORGANIZATION_SYSTEM, "value": "B82005"}],
        },
        "gp-a",
        "primary",
        "gp-a|Organization/malton",
    ),
    sent(
        condition(
            "dm-gp",
            "gp-pat",
            "44054006",
            "Type 2 diabetes mellitus",
            "active",
            onsetDateTime="2011-04",
            category=[concept("problem-list-item", "Problem", CATEGORY)],
        ),
        "gp-a",
        "primary",
    ),
    sent(condition("htn", "gp-pat", "38341003", "Hypertension", "resolved"), "gp-a", "primary"),
    sent(
        {
            "resourceType": "MedicationRequest",
            "id": "metformin",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/gp-pat"},
            "medicationCodeableConcept": concept("109081006", "Metformin 500mg tablets"),
            "authoredOn": "2023-06-01",
            "dosageInstruction": [{"text": "one twice a day"}],
        },
        "gp-a",
        "primary",
    ),
    sent(
        {
            "resourceType": "MedicationRequest",
            "id": "old",
            "status": "stopped",
            "intent": "order",
            "subject": {"reference": "Patient/gp-pat"},
            "medicationCodeableConcept": concept("1", "Gliclazide"),
        },
        "gp-a",
        "primary",
    ),
    sent(
        {
            "resourceType": "AllergyIntolerance",
            "id": "pen",
            "patient": {"reference": "Patient/gp-pat"},
            "code": concept("764146007", "Penicillin"),
            "criticality": "high",
            "reaction": [{"manifestation": [concept("271807003", "Rash")]}],
        },
        "gp-a",
        "primary",
    ),
    sent(visit("gp-visit", "gp-pat", "AMB", "2024-02-01T09:00:00Z"), "gp-a", "primary"),
    # the hospital: an ED attendance with hypoglycaemia, then an admission
    sent(patient("acute-pat"), "acute-b", "acute"),
    sent(
        visit(
            "ed",
            "acute-pat",
            "EMER",
            "2024-03-01T02:00:00Z",
            reasonCode=[concept("302866003", "Hypoglycaemia")],
            serviceProvider={
                "identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": "RCB"},
                "display": "York Hospital",
            },
        ),
        "acute-b",
        "acute",
    ),
    sent(visit("ward", "acute-pat", "IMP", "2024-03-01T06:00:00Z"), "acute-b", "acute"),
    sent(
        condition(
            "dm-acute",
            "acute-pat",
            "44054006",
            "Type 2 diabetes mellitus",
            "active",
            category=[concept("encounter-diagnosis", "Diagnosis", CATEGORY)],
        ),
        "acute-b",
        "acute",
    ),
    # community and mental health
    sent(visit("district-nurse", "acute-pat", "HH", "2024-01-15"), "community-c", "community"),
    sent(visit("cmht", "acute-pat", "AMB", "2023-11-20"), "mh-d", "mental-health"),
    # the risk service, the care plan and the alerts
    sent(
        {
            "resourceType": "RiskAssessment",
            "id": "risk-old",
            "status": "final",
            "subject": {"reference": "Patient/gp-pat"},
            "occurrenceDateTime": "2024-02-01T00:00:00Z",
            "prediction": [{"probabilityDecimal": 0.08}],
        },
        "risk",
        "",
    ),
    sent(
        {
            "resourceType": "RiskAssessment",
            "id": "risk-new",
            "status": "final",
            "subject": {"reference": "Patient/gp-pat"},
            "occurrenceDateTime": "2024-03-01T03:00:00Z",
            "method": concept("183452005", "Emergency hospital admission"),
            "prediction": [
                {
                    "outcome": concept("183452005", "Emergency hospital admission"),
                    "probabilityDecimal": 0.32,
                    "qualitativeRisk": {"text": "high"},
                    "rationale": "ED attendance with hypoglycaemia",
                }
            ],
            "basis": [{"reference": "Encounter/ed", "display": "ED attendance 1 March"}],
        },
        "risk",
        "",
    ),
    sent(
        {
            "resourceType": "CarePlan",
            "id": "plan",
            "status": "active",
            "intent": "plan",
            "title": "Diabetes care plan",
            "subject": {"reference": "Patient/gp-pat"},
            "period": {"start": "2024-03-02"},
        },
        "careplan",
        "primary",
    ),
    sent(
        {
            "resourceType": "CareTeam",
            "id": "team",
            "status": "active",
            "subject": {"reference": "Patient/gp-pat"},
            "participant": [
                {
                    "role": [concept("408475000", "Diabetic medicine")],
                    "member": {"reference": "Practitioner/dr", "display": "Dr Darwin"},
                }
            ],
        },
        "careplan",
        "acute",
    ),
    sent(
        {
            "resourceType": "Flag",
            "id": "flag",
            "status": "active",
            "subject": {"reference": "Patient/gp-pat"},
            "code": {"text": "Recurrent hypoglycaemia"},
            "period": {"start": "2024-03-01"},
        },
        "alerts",
        "acute",
    ),
    sent(
        {
            "resourceType": "Communication",
            "id": "open",
            "status": "in-progress",
            "subject": {"reference": "Patient/gp-pat"},
            "payload": [{"contentString": "Admitted overnight: high risk patient"}],
            "sent": "2024-03-01T06:05:00Z",
        },
        "alerts",
        "acute",
    ),
    sent(
        {
            "resourceType": "Communication",
            "id": "done",
            "status": "completed",
            "subject": {"reference": "Patient/gp-pat"},
            "payload": [{"contentString": "old news"}],
        },
        "alerts",
        "acute",
    ),
]


@pytest.fixture
async def person(record: Any, tmp_path: Path) -> Any:
    registry = FeedRegistry(Settings(data_dir=tmp_path).resolved_feeds_file())
    registry.add(
        Feed(id="gp-a", kind=FeedKind.FHIR, ods="B82005", setting="primary", description="Malton")
    )
    registry.add(
        Feed(id="acute-b", kind=FeedKind.HL7V2, ods="RCB", setting="acute", description="York")
    )
    await record.publish(*PERSON)
    return record


async def test_the_summary_joins_every_provider(person: Any) -> None:
    response = await person.get("/summary/acute-pat")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    summary = response.json()
    assert summary["person"]["nhsNumber"] == N1
    assert summary["person"]["joined"] is True
    assert summary["person"]["providers"] == ["acute-b", "gp-a"]
    demographics = summary["patient"]
    assert demographics["name"] == "Fredrica Smith"
    assert demographics["birthDate"] == "1965-12-13"
    assert demographics["registeredGp"] == [
        {
            "name": "Malton Surgery",
            "ods": "B82005",
            "reference": "Organization/malton",
            "type": "Organization",
        }
    ]
    assert sorted(r["id"] for r in summary["records"]) == ["acute-pat", "gp-pat"]
    assert summary["withheld"] == []

    [diabetes] = [p for p in summary["problems"] if p["code"]["code"] == "44054006"]
    assert diabetes["problem"] == "Type 2 diabetes mellitus"
    assert diabetes["onset"] == "2011-04"
    assert sorted(s["source"]["feed"] for s in diabetes["seenBy"]) == ["acute-b", "gp-a"]
    assert "38341003" not in [p["code"]["code"] for p in summary["problems"]]  # resolved

    [medication] = summary["medications"]
    assert medication["medication"] == "Metformin 500mg tablets"
    assert medication["dosage"] == "one twice a day"
    assert medication["source"]["organisation"] == {"ods": "B82005", "name": "Malton"}
    [allergy] = summary["allergies"]
    assert (allergy["substance"], allergy["criticality"], allergy["reactions"]) == (
        "Penicillin",
        "high",
        ["Rash"],
    )

    encounters = summary["encounters"]
    assert set(encounters) == {"gp", "emergency", "inpatient", "community", "mental-health"}
    [ed] = encounters["emergency"]["recent"]
    assert ed["reason"] == "Hypoglycaemia"
    assert ed["provider"] == {"ods": "RCB", "name": "York Hospital"}
    assert ed["source"] == {
        "feed": "acute-b",
        "setting": "acute",
        "organisation": {"ods": "RCB", "name": "York"},
    }
    assert encounters["gp"]["recent"][0]["provider"] == {"ods": "B82005", "name": "Malton"}
    assert encounters["community"]["total"] == 1

    [plan] = summary["carePlans"]
    assert plan["title"] == "Diabetes care plan"
    [team] = summary["careTeams"]
    assert team["members"] == [{"role": "Diabetic medicine", "member": "Dr Darwin"}]

    risk = summary["risk"]
    assert risk["reference"] == "RiskAssessment/risk-new"
    assert risk["probability"] == 0.32
    assert risk["qualitative"] == "high"
    assert risk["reasons"] == ["ED attendance 1 March", "ED attendance with hypoglycaemia"]
    assert risk["assessments"] == 2

    alerts = summary["alerts"]
    assert [a["reference"] for a in alerts] == ["Communication/open", "Flag/flag"]
    assert alerts[0]["text"] == "Admitted overnight: high risk patient"


async def test_the_summary_by_nhs_number_and_unknown_patients(person: Any) -> None:
    by_number = (await person.get(f"/summary/{N1}")).json()
    assert by_number["person"]["nhsNumber"] == N1
    missing = await person.get("/summary/nobody")
    assert missing.status_code == 404
    assert missing.json()["resourceType"] == "OperationOutcome"
    assert (await person.get("/summary/9912003888")).status_code == 404


async def test_the_summary_withholds_what_the_token_may_not_read(person: Any) -> None:
    summary = (await person.get("/summary/gp-pat", person.keys.no_medications)).json()
    assert "medications" not in summary
    assert "risk" not in summary
    assert "alerts" not in summary
    assert "problems" in summary
    assert set(summary["withheld"]) == {
        "MedicationRequest",
        "MedicationStatement",
        "CarePlan",
        "CareTeam",
        "RiskAssessment",
        "Flag",
        "Communication",
    }


async def test_a_person_with_no_data_yet(record: Any) -> None:
    await record.publish(sent(patient("lonely"), "gp-a", "primary"))
    summary = (await record.get("/summary/lonely")).json()
    assert summary["problems"] == []
    assert summary["encounters"] == {}
    assert summary["risk"] is None
