"""Which patient each resource is about, and so its Kafka key (DESIGN.md "Patient key")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fhir_common.feeds import Feed
from fhir_common.identifiers import nhs_number_of, patient_key

# Elements that point at the patient a resource is about, in the order we trust them.
PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual", "for")


def patient_reference(resource: Mapping[str, Any]) -> str | None:
    """``Patient/<id>`` the resource is about, or None (Organization, Practitioner, ...)."""
    if resource.get("resourceType") == "Patient":
        return f"Patient/{resource['id']}"
    for element in PATIENT_ELEMENTS:
        target = resource.get(element)
        ref = target.get("reference") if isinstance(target, Mapping) else None
        if isinstance(ref, str) and ref.startswith("Patient/"):
            return ref
    return None


def own_key(patient: Mapping[str, Any], feed: Feed) -> str:
    return patient_key(nhs_number_of(patient), feed.id, str(patient["id"]))


def key_for(resource: Mapping[str, Any], feed: Feed, patient_keys: Mapping[str, str]) -> str:
    """The resource's key: its patient's key if it is about a patient, else its own identity.

    ``patient_keys`` maps ``Patient/<id>`` to the keys of the patients in the same bundle and
    of those seen before (from ``fhir.Patient``); a patient we never saw has no NHS number we
    know of, so its key is ``<feed>|<id>`` just as its own would be.
    """
    return key_of(
        feed,
        str(resource["resourceType"]),
        str(resource["id"]),
        patient_reference(resource),
        patient_keys,
    )


def key_of(
    feed: Feed,
    resource_type: str,
    resource_id: str,
    patient_ref: str | None,
    patient_keys: Mapping[str, str],
) -> str:
    """``key_for`` from what it needs: the resource's type and id and its patient reference."""
    if resource_type == "Patient":
        patient_ref = f"Patient/{resource_id}"
    if patient_ref is None:
        return f"{feed.id}|{resource_type}/{resource_id}"
    return patient_keys.get(patient_ref) or f"{feed.id}|{patient_ref.split('/', 1)[1]}"
