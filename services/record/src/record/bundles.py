"""FHIR Bundles the record returns: searchsets built from stored resources."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from record.repository import StoredResource


def searchset(
    base_url: str, self_link: str, matches: Sequence[StoredResource], total: int | None = None
) -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "self", "url": self_link}],
        "entry": [
            {
                "fullUrl": f"{base_url}/{r.resource_type}/{r.id}",
                "resource": r.content,
                "search": {"mode": "match"},
            }
            for r in matches
        ],
    }
    if total is not None:
        bundle["total"] = total
    return bundle
