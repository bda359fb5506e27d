"""The record's CapabilityStatement: exactly what this version of the API supports."""

from __future__ import annotations

from typing import Any

READABLE_TYPES = (
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Communication",
    "Condition",
    "Encounter",
    "MedicationRequest",
    "MedicationStatement",
    "Observation",
    "Organization",
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Procedure",
    "RiskAssessment",
    "Task",
)


def _resource(resource_type: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": resource_type, "interaction": [{"code": "read"}]}
    if resource_type == "Patient":
        entry["interaction"].append({"code": "search-type"})
        entry["searchParam"] = [
            {
                "name": "identifier",
                "type": "token",
                "documentation": "system|value, or value alone",
            }
        ]
        entry["operation"] = [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
            }
        ]
    return entry


def capability_statement(version: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "kind": "instance",
        "software": {"name": "JoinedUp record", "version": version},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "description": "Bearer JWT with SMART v2 scopes (e.g. user/Patient.rs)",
                },
                "resource": [_resource(t) for t in READABLE_TYPES],
            }
        ],
    }
