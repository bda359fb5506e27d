"""How incoming resources become versions in the record.

A resource whose content is unchanged (ignoring the meta elements we set ourselves) creates no
new version: delivery is at-least-once and providers resend, so the same fact must not pile up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.bus import PermanentError
from fhir_common.events import Header, Message, resource_type_of_topic
from record import repository
from record.repository import ResourceKey, StoredResource

_OUR_META = ("versionId", "lastUpdated")


@dataclass(frozen=True)
class Change:
    resource_type: str
    id: str
    version_id: int
    patient_key: str | None
    change: str  # "created" | "updated"
    cause: Mapping[str, str]  # headers of the message that brought it (source, trace, ...)

    def to_json(self) -> dict[str, Any]:
        # record.changes value, as DESIGN.md defines it
        return {
            "resourceType": self.resource_type,
            "id": self.id,
            "versionId": str(self.version_id),
            "patient": self.patient_key,
            "change": self.change,
        }


def _without_our_meta(content: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (content.get("meta") or {}).items() if k not in _OUR_META}
    stripped = {k: v for k, v in content.items() if k != "meta"}
    if meta:
        stripped["meta"] = meta
    return stripped


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return _without_our_meta(a) == _without_our_meta(b)


def parse(message: Message) -> dict[str, Any]:
    """The resource a ``fhir.<Type>`` message carries; bad data is a PermanentError."""
    try:
        resource = orjson.loads(message.value)
    except orjson.JSONDecodeError as error:
        raise PermanentError(f"message value is not JSON: {error}") from error
    if not isinstance(resource, dict):
        raise PermanentError("message value is not a JSON object")
    expected = resource_type_of_topic(message.topic)
    if resource.get("resourceType") != expected:
        raise PermanentError(f"resourceType {resource.get('resourceType')!r} on {message.topic}")
    if not isinstance(resource.get("id"), str) or not resource["id"]:
        raise PermanentError("resource has no id")
    return resource


def identifier_pairs(resource: dict[str, Any]) -> list[tuple[str, str]]:
    found = resource.get("identifier") or []
    if isinstance(found, dict):
        found = [found]
    return [
        (i.get("system", ""), str(i["value"]))
        for i in found
        if isinstance(i, dict) and i.get("value") is not None
    ]


async def apply(session: AsyncSession, messages: Sequence[Message]) -> list[Change]:
    """Store what changed in ``messages``; return the changes in message order."""
    incoming = [(m, parse(m)) for m in messages]
    keys: list[ResourceKey] = [(r["resourceType"], r["id"]) for _, r in incoming]
    existing = await repository.current_versions(session, keys)
    latest: dict[ResourceKey, StoredResource] = dict(existing)
    versions: list[StoredResource] = []
    changes: list[Change] = []
    now = datetime.now(UTC)
    for message, resource in incoming:
        key = (resource["resourceType"], resource["id"])
        previous = latest.get(key)
        if previous and same_content(previous.content, resource):
            continue
        stored = _versioned(
            resource,
            version=(previous.version_id if previous else 0) + 1,
            now=now,
            patient_key=message.key or None,
            source=message.headers.get(Header.SOURCE),
        )
        latest[key] = stored
        versions.append(stored)
        changes.append(
            Change(*key, stored.version_id, stored.patient_key, _kind(previous), message.headers)
        )
        await repository.replace_identifiers(session, key, identifier_pairs(resource))
    current = [latest[k] for k in dict.fromkeys((v.resource_type, v.id) for v in versions)]
    await repository.save_versions(
        session,
        new=[r for r in current if (r.resource_type, r.id) not in existing],
        changed=[r for r in current if (r.resource_type, r.id) in existing],
        history=versions,
    )
    return changes


def _kind(previous: StoredResource | None) -> str:
    return "updated" if previous else "created"


def _versioned(
    resource: dict[str, Any],
    *,
    version: int,
    now: datetime,
    patient_key: str | None,
    source: str | None,
) -> StoredResource:
    content = dict(resource)
    content["meta"] = {
        **(resource.get("meta") or {}),
        "versionId": str(version),
        "lastUpdated": now.isoformat().replace("+00:00", "Z"),
    }
    return StoredResource(
        resource["resourceType"], resource["id"], version, now, patient_key, source, content
    )
