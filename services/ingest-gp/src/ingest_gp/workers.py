"""What the validation pool's processes run: pure functions of plain data (bytes in, small
results out), so that little is pickled across. ``prepare_lines`` is the whole per-line work of
an ``$import`` (parse, check, normalise, serialise); ``check_encoded`` only checks."""

from __future__ import annotations

import re
from typing import Any

import orjson

from fhir_common import gctuning
from fhir_common.errors import Issue
from fhir_common.feeds import Feed
from ingest_gp.checks import check_resource, full_check
from ingest_gp.conditional import is_conditional_reference
from ingest_gp.normalise import Entry, assign_ids, encode
from ingest_gp.patients import own_key, patient_reference
from ingest_gp.publishing import INDEXED_TYPES


def warm_up() -> None:
    """Import the models and build their validators before the first real work arrives."""
    check_resource({"resourceType": "Patient", "id": "warm-up", "active": True})
    check_resource({"resourceType": "Observation", "status": "final", "code": {"text": "x"}})
    gctuning.tune()  # a worker process is ingest-gp's alone


def check_encoded(items: list[tuple[bytes, str]]) -> list[list[Issue]]:
    """The full validator's verdict on resources the fast check did not vouch for."""
    return [full_check(orjson.loads(value), path) for value, path in items]


_CONDITIONAL = re.compile(rb'"reference"\s*:\s*"[A-Za-z]+\?')

# --- $import: one batch of NDJSON lines ----------------------------------------------------------

#: A line that made a resource: (line, resource type, id, patient ref or None, own key or None
#: (Patients), JSON, the resource itself for the identifier index or None).
Good = tuple[int, str, str, str | None, str | None, bytes, dict[str, Any] | None]
#: A line that did not: (line, OperationOutcome issues as FHIR JSON).
Bad = tuple[int, list[dict[str, Any]]]


def prepare_lines(
    feed: Feed, expected_type: str | None, lines: list[tuple[int, bytes]]
) -> tuple[list[Good], list[Bad]]:
    """Parse, check and normalise each line of an NDJSON batch (one resource a line)."""
    good: list[Good] = []
    bad: list[Bad] = []
    for number, line in lines:
        problem, made = _prepare_line(feed, expected_type, line)
        if problem:
            bad.append((number, [i.to_fhir() for i in problem]))
        elif made is not None:
            good.append((number, *made))
    return good, bad


def _prepare_line(
    feed: Feed, expected_type: str | None, line: bytes
) -> tuple[
    list[Issue], tuple[str, str, str | None, str | None, bytes, dict[str, Any] | None] | None
]:
    try:
        resource = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return [Issue("structure", f"malformed JSON: {exc}")], None
    if not isinstance(resource, dict):
        return [Issue("structure", "a line must hold one resource (a JSON object)")], None
    resource_type = resource.get("resourceType")
    if expected_type and isinstance(resource_type, str) and resource_type != expected_type:
        text = f"this input holds {expected_type} resources; the line holds a {resource_type}"
        return [Issue("invalid", text, expression=("resourceType",))], None
    issues = check_resource(resource)
    if issues:
        return issues, None
    refs = conditional_references_in(resource) if _CONDITIONAL.search(line) else []
    if refs:
        where = ", ".join(refs[:3])
        text = f"conditional references are not taken in $import (send a bundle): {where}"
        return [Issue("not-supported", text, expression=tuple(refs[:3]))], None
    entry = Entry(0, resource, None, "PUT")
    value = encode(entry, assign_ids([entry], feed), feed)
    patient = patient_reference(resource)
    key = own_key(resource, feed) if resource["resourceType"] == "Patient" else None
    keep = resource if resource["resourceType"] in INDEXED_TYPES else None
    return [], (resource["resourceType"], resource["id"], patient, key, value, keep)


def conditional_references_in(resource: Any) -> list[str]:
    found: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and is_conditional_reference(ref):
                found.append(f"{where}.reference")
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(resource, str(resource.get("resourceType")))
    return found
