"""Checking one resource at the edge: identifiers made canonical, then R4 validation and our own
rules, every problem with its FHIRPath location.

* NHS numbers (system ``https://fhir.nhs.uk/Id/nhs-number``, at any depth: ``Patient.identifier``,
  ``Encounter.subject.identifier``...) written for people (``943 476 5919``) are put in their
  10-digit form first; one that is still not a valid NHS number is refused by the validator.
* ODS codes (``https://fhir.nhs.uk/Id/ods-organization-code`` and ``ods-site-code``) are trimmed
  and upper-cased; one that is not 3-12 letters and digits is refused (the form only: whether
  the code exists is a question for the ODS API).
* R4 structure and types: ``fastcheck`` when it can vouch for the resource, else (and always
  when anything is wrong) ``fhir_common.validation``, whose issues are the ones reported.

Pure functions of the resource: they run in the service process or in the validation pool.
"""

from __future__ import annotations

from typing import Any

from fhir_common.errors import Issue
from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    ODS_SITE_SYSTEM,
    is_valid_ods_code,
    normalise_nhs_number,
)
from fhir_common.validation import validate_resource
from ingest_gp import fastcheck

ODS_SYSTEMS = frozenset({ODS_ORGANIZATION_SYSTEM, ODS_SITE_SYSTEM})


def canonicalise(resource: dict[str, Any], prefix: str) -> list[Issue]:
    """Canonical NHS numbers and ODS codes, in place; the ODS codes that are still wrong."""
    issues: list[Issue] = []
    _walk(resource, prefix, issues)
    return issues


def _walk(node: dict[str, Any], path: str, issues: list[Issue]) -> None:
    system = node.get("system")
    if system is not None:
        value = node.get("value")
        if isinstance(value, str):
            if system == NHS_NUMBER_SYSTEM:
                canonical = normalise_nhs_number(value)
                if canonical:
                    node["value"] = canonical
            elif system in ODS_SYSTEMS:
                code = value.strip().upper()
                node["value"] = code
                if not is_valid_ods_code(code):
                    issues.append(
                        Issue(
                            "value",
                            f"{path}.value: {value!r} is not an ODS code "
                            "(3 to 12 letters and digits)",
                            expression=(f"{path}.value",),
                        )
                    )
    for key, value in node.items():
        if isinstance(value, dict):
            _walk(value, f"{path}.{key.removeprefix('_')}", issues)
        elif isinstance(value, list):
            name = key.removeprefix("_")
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _walk(item, f"{path}.{name}[{i}]", issues)


def check_resource(resource: Any, path: str | None = None) -> list[Issue]:
    """Every problem of one resource (made canonical in place first); [] when it may pass."""
    if isinstance(resource, dict) and fastcheck.vouches_for(resource):
        return []
    return full_check(resource, path)


def full_check(resource: Any, path: str | None = None) -> list[Issue]:
    """The full validator's verdict (identifiers made canonical first)."""
    if not isinstance(resource, dict):
        where = path or "resource"
        return [
            Issue(
                "structure",
                f"{where}: a resource must be a JSON object",
                expression=(where,) if path else (),
            )
        ]
    prefix = path or str(resource.get("resourceType", "Resource"))
    ods_issues = canonicalise(resource, prefix)
    return validate_resource(resource, path) + ods_issues
