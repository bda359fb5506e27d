"""The record's CapabilityStatement: exactly what this version of the API supports.

Built from the same tables the index and the search are (``searchparams``, ``search``), so it
cannot drift from what the server does.
"""

from __future__ import annotations

from typing import Any

from record.search import PREFIXES, QUANTITY_PREFIXES
from record.searchparams import REGISTRY, SearchParam, search_params, supported_types

MODIFIER_TEXT = {
    "token": "modifiers :not, :missing; system|code, code, |code, system|",
    "string": "starts with, ignoring case and accents; modifiers :exact, :contains, :missing",
    "date": f"prefixes {', '.join(PREFIXES)}; precision-aware ranges; modifier :missing",
    "reference": "id, Type/id or URL; modifiers :Type, :identifier (system|value), :missing",
    "quantity": f"[prefix]number|system|code or number||unit; prefixes "
    f"{', '.join(QUANTITY_PREFIXES)}; modifier :missing",
}

REST_DOCUMENTATION = (
    "Read-only FHIR R4 over the longitudinal record. Search: a comma is OR, a repeated "
    "parameter is AND; _count (0 = count only), _sort (_id, _lastUpdated, date and string "
    "parameters, '-' for descending), _include and _revinclude (Type:param[:Target], one "
    "level, no :iterate), _summary=count, _total=none|estimate|accurate. Paging: 'next' "
    "links carry a keyset cursor (_cursor), stable while resources are added. Not supported: "
    "chaining, _has, _elements, _summary other than count or false, _text/_content, "
    "_include:iterate, _tag/_profile/_security, the 'ap' prefix on dates, :text/:in/:below/"
    ":above. Unknown or unsupported parameters are ignored and reported in an "
    "OperationOutcome entry (Prefer: handling=lenient, the default) or refused with 400 "
    "(Prefer: handling=strict). Reads answer ETag and Last-Modified and honour If-None-Match. "
    "Every error is an OperationOutcome."
)


def _search_param(p: SearchParam) -> dict[str, Any]:
    text = p.documentation or p.name
    return {"name": p.name, "type": p.type, "documentation": f"{text} ({MODIFIER_TEXT[p.type]})"}


def _includes(resource_type: str) -> list[str]:
    return [
        f"{resource_type}:{p.name}"
        for p in search_params(resource_type).values()
        if p.type == "reference" and not p.name.startswith("_")
    ]


def _revincludes(resource_type: str) -> list[str]:
    found = []
    for source, search in REGISTRY.items():
        for p in search.params.values():
            if p.type == "reference" and (not p.targets or resource_type in p.targets):
                found.append(f"{source}:{p.name}")
    return sorted(found)


def _resource(resource_type: str) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": resource_type,
        "interaction": [
            {"code": "read"},
            {"code": "vread"},
            {"code": "history-instance"},
            {"code": "history-type"},
            {"code": "search-type"},
        ],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": False,
        "conditionalRead": "not-match",
        "searchInclude": _includes(resource_type),
        "searchRevInclude": _revincludes(resource_type),
        "searchParam": [_search_param(p) for p in search_params(resource_type).values()],
    }
    if resource_type == "Patient":
        entry["operation"] = [
            {
                "name": "everything",
                "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                "documentation": "Everything about the person, from every provider whose "
                "record has the same NHS number or is linked (merges, NHS number gained); "
                "_since, _type and _count (paged with next links)",
            }
        ]
    return entry


def capability_statement(version: str) -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "kind": "instance",
        "software": {"name": "JoinedUp record", "version": version},
        "implementation": {"description": "JoinedUp longitudinal record"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": REST_DOCUMENTATION,
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
                    "description": "Bearer JWT with SMART v2 scopes: r for read, vread and "
                    "instance history, s for search and type history (e.g. user/Patient.rs, "
                    "system/*.rs). patient/ scopes grant nothing yet.",
                },
                "resource": [_resource(t) for t in supported_types()],
            }
        ],
    }
