"""PID and PD1 as a FHIR Patient, and the two Patients of a merge (A40).

The Patient is the hospital's view of the person: its id comes from the feed and the
patient's source id (MRN, or NHS number), so each hospital's Patient is its own resource;
the record joins them by NHS number (DESIGN.md "Identity").
"""

from __future__ import annotations

from typing import Any

from fhir_common.identifiers import ODS_ORGANIZATION_SYSTEM, resource_id
from ingest_acute.datatypes import DataTypes
from ingest_acute.identity import NHS_SOURCE_PREFIX, PatientIdentity, mrn_identifier, mrn_system
from ingest_acute.parsing import Segment
from ingest_acute.terminology import SEX

Json = dict[str, Any]


def patient_id(feed: str, source_id: str) -> str:
    return resource_id(feed, "Patient", source_id)


def patient(
    feed: str,
    ods: str,
    pid: Segment,
    pd1: Segment | None,
    identity: PatientIdentity,
    types: DataTypes,
) -> Json:
    resource: Json = {
        "resourceType": "Patient",
        "id": patient_id(feed, identity.source_id),
        "identifier": list(identity.identifiers),
        "active": True,
    }
    names = [n for r in pid.repetitions(5) if (n := types.human_name(r))]
    if names:
        resource["name"] = names
    telecom = [t for r in pid.repetitions(13) if (t := types.telecom(r, "home"))]
    telecom += [t for r in pid.repetitions(14) if (t := types.telecom(r, "work"))]
    if telecom:
        resource["telecom"] = telecom
    gender = SEX.get(pid.value(8).upper())
    if gender:
        resource["gender"] = gender
    elif pid.value(8):
        types.warn("PID-8", f"administrative sex {pid.value(8)!r} is not known; left out")
    birth_date = types.date(pid.value(7), "PID-7")
    if birth_date:
        resource["birthDate"] = birth_date
    _deceased(resource, pid, types)
    addresses = [a for r in pid.repetitions(11) if (a := types.address(r))]
    if addresses:
        resource["address"] = addresses
    practitioners = _registered_gp(pd1, types)
    if practitioners:
        resource["generalPractitioner"] = practitioners
    resource["managingOrganization"] = organisation(ods)
    return resource


def organisation(ods: str) -> Json:
    return {"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": ods}}


def _deceased(resource: Json, pid: Segment, types: DataTypes) -> None:
    died = types.date_time(pid.value(29), "PID-29")
    if died:
        resource["deceasedDateTime"] = died
    elif pid.value(30).upper() == "Y":
        resource["deceasedBoolean"] = True


def _registered_gp(pd1: Segment | None, types: DataTypes) -> list[Json]:
    """PD1-3 the registered practice (by ODS code), PD1-4 the GP (by GP code)."""
    if pd1 is None:
        return []
    found = [o for r in pd1.repetitions(3) if (o := types.organisation(r))]
    for reference in found:
        if reference.get("identifier", {}).get("system") == ODS_ORGANIZATION_SYSTEM:
            reference["type"] = "Organization"
    found += [
        {"type": "Practitioner", **p} for r in pd1.repetitions(4) if (p := types.practitioner(r))
    ]
    return found


def merged_patient(
    feed: str,
    ods: str,
    old: PatientIdentity,
    survivor: Json,
    prior_names: list[Json],
) -> Json:
    """The Patient an A40 retires: inactive, replaced by ``survivor``.

    It keeps its own identifiers; its name is MRG-7 (the prior name) if sent, else the
    survivor's, and it shares the survivor's sex and birth date: a merge says the two are
    one person, so the retired record should not look like anybody else.
    """
    retired: Json = {
        "resourceType": "Patient",
        "id": patient_id(feed, old.source_id),
        "identifier": [dict(i, use="old") for i in old.identifiers],
        "active": False,
        "link": [{"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}],
        "managingOrganization": organisation(ods),
    }
    names = prior_names or survivor.get("name")
    if names:
        retired["name"] = names
    for element in ("gender", "birthDate"):
        if element in survivor:
            retired[element] = survivor[element]
    return retired


def link_replaces(survivor: Json, retired_ids: list[str]) -> None:
    links = [{"other": {"reference": f"Patient/{i}"}, "type": "replaces"} for i in retired_ids]
    survivor["link"] = survivor.get("link", []) + links


def carry_mrn_of_survivor(resource: Json, ods: str, survivor_source: str, old_mrn: str) -> None:
    """A message about a merged-away MRN updates the survivor: keep the survivor's MRN as the
    hospital number and the old one as an old identifier, so neither is lost."""
    system = mrn_system(ods)
    kept = [i for i in resource["identifier"] if i.get("system") != system]
    if not survivor_source.startswith(NHS_SOURCE_PREFIX):
        kept.insert(0, mrn_identifier(ods, survivor_source))
    kept.append({**mrn_identifier(ods, old_mrn), "use": "old"})
    resource["identifier"] = kept
