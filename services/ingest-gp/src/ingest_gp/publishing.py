"""Publishing checked, normalised resources once: what every way in (bundles, ``$import``, CSV
extracts) ends with.

* Idempotent: ingest-gp keeps a digest of each resource it last published (``published``: the
  message key and the resource's JSON, per ``<Type>/<id>``). A resource whose digest is
  unchanged is not published again, so a bundle, file or extract delivered twice publishes
  nothing new, and a changed resource publishes once. The digest is written only after the
  publication succeeded: a crash between the two republishes (at-least-once), never loses.
* Atomic: one call, one ``bus.publish``.
* What was published also feeds ingest-gp's own directories at once, without waiting for its
  ``fhir.Patient`` consumer: patient keys (so that the next bundle about that patient is keyed
  with it) and the identifier index behind conditional references (``Patient?identifier=``).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.db import Database, upsert
from fhir_common.events import Message, fhir_topic
from fhir_common.feeds import Feed
from ingest_gp.tables import identifiers, patient_keys, published

#: Resource types whose identifiers are indexed for conditional references and creates.
INDEXED_TYPES = frozenset(
    {"Patient", "Organization", "Practitioner", "PractitionerRole", "Location"}
)
_CHUNK = 1000  # ids per IN (...) query
#: Changes when what ingest-gp makes of an input changes: older input digests then no longer
#: match, and unchanged inputs are checked (and, if their output differs, published) again.
NORMALISATION = "1"
_MAX_TEXT = 255


@dataclass(slots=True)
class Outgoing:
    """One resource ready to go: its JSON, its message key and its digest."""

    resource_type: str
    id: str
    key: str
    value: bytes
    resource: dict[str, Any] | None = None  # kept only where the directories need it
    source: str | None = None  # digest of the input it was made from, when known

    @property
    def ref(self) -> str:
        return f"{self.resource_type}/{self.id}"

    @property
    def digest(self) -> str:
        return digest_of(self.key, self.value)


def digest_of(key: str, value: bytes) -> str:
    return hashlib.blake2b(key.encode() + b"\0" + value, digest_size=16).hexdigest()


def outgoing(resource: dict[str, Any], key: str, value: bytes | None = None) -> Outgoing:
    """``value``: the resource's JSON when already made (else made here)."""
    resource_type = str(resource["resourceType"])
    keep = resource if resource_type in INDEXED_TYPES else None
    data = value if value is not None else orjson.dumps(resource)
    return Outgoing(resource_type, str(resource["id"]), key, data, keep)


@dataclass
class Outcome:
    published: int = 0
    unchanged: int = 0
    by_type: Counter[str] = field(default_factory=Counter)  # published, per resource type
    unchanged_refs: set[str] = field(default_factory=set)

    def add(self, other: Outcome) -> None:
        self.published += other.published
        self.unchanged += other.unchanged
        self.by_type.update(other.by_type)


async def known_digests(session: AsyncSession, refs: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(refs))
    found: dict[str, str] = {}
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        query = select(published.c.resource_ref, published.c.digest).where(
            published.c.resource_ref.in_(chunk)
        )
        found.update({row.resource_ref: row.digest for row in await session.execute(query)})
    return found


def fresh_only(
    items: Sequence[Outgoing], known: Mapping[str, str]
) -> tuple[list[Outgoing], set[str]]:
    """The items whose content is new (also within ``items``), and the refs left unchanged."""
    last = dict(known)
    fresh: list[Outgoing] = []
    unchanged: set[str] = set()
    for item in items:
        digest = item.digest
        if last.get(item.ref) == digest:
            unchanged.add(item.ref)
            continue
        last[item.ref] = digest
        fresh.append(item)
    return fresh, unchanged


After = Callable[[AsyncSession, "Outcome"], Awaitable[None]]


async def publish(
    db: Database,
    bus_publish: Callable[[Sequence[Message]], Awaitable[None]],
    feed: Feed,
    items: Sequence[Outgoing],
    headers: Mapping[str, str],
    *,
    after: After | None = None,
) -> Outcome:
    """Publish what changed among ``items`` (atomically), then remember it.

    ``after`` runs in the same database transaction as the remembering (an ``$import``
    checkpoints there), even when nothing was new.
    """
    known: dict[str, str] = {}
    if items:
        async with db.transaction() as session:
            known = await known_digests(session, (i.ref for i in items))
    fresh, unchanged = fresh_only(items, known)
    # Unchanged, but from a new input (a line reformatted, a bundle after a file): remember
    # the input so that the next delivery of it is skipped unchecked.
    relabel = [i for i in items if i.source and i.ref in unchanged]
    outcome = Outcome(published=len(fresh), unchanged=len(items) - len(fresh))
    outcome.by_type.update(i.resource_type for i in fresh)
    outcome.unchanged_refs = unchanged
    if fresh:
        await bus_publish(
            [
                Message(
                    topic=fhir_topic(i.resource_type), key=i.key, value=i.value, headers=headers
                )
                for i in fresh
            ]
        )
    if fresh or relabel or after is not None:
        async with db.transaction() as session:
            await remember(session, feed.id, fresh)
            await remember_sources(session, relabel)
            if after is not None:
                await after(session, outcome)
    return outcome


async def remember(session: AsyncSession, feed_id: str, items: Sequence[Outgoing]) -> None:
    if not items:
        return
    rows = [{"resource_ref": i.ref, "digest": i.digest, "source_digest": i.source} for i in items]
    await upsert(session, published, rows, ["resource_ref"])
    keys = {i.ref: i.key for i in items if i.resource_type == "Patient"}
    if keys:
        await upsert(
            session,
            patient_keys,
            [{"patient_ref": ref, "patient_key": key} for ref, key in keys.items()],
            ["patient_ref"],
        )
    index = [
        row
        for i in items
        if i.resource is not None
        for row in identifier_rows(
            i.resource, feed_id, i.key if i.resource_type == "Patient" else None
        )
    ]
    await remember_identifiers(session, index)


async def remember_sources(session: AsyncSession, items: Sequence[Outgoing]) -> None:
    rows = [{"resource_ref": i.ref, "digest": i.digest, "source_digest": i.source} for i in items]
    await upsert(session, published, rows, ["resource_ref"])


async def known_sources(session: AsyncSession, digests: Iterable[str]) -> set[str]:
    """Which of these input digests made the resource as it was last published."""
    wanted = sorted(set(digests))
    found: set[str] = set()
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        query = select(published.c.source_digest).where(published.c.source_digest.in_(chunk))
        found.update(row.source_digest for row in await session.execute(query))
    return found


def source_digest(feed_id: str, expected_type: str | None, line: bytes) -> str:
    """The digest of one input line as this feed sent it (with what ingest-gp makes of it)."""
    head = f"{NORMALISATION}|{feed_id}|{expected_type or ''}|".encode()
    return hashlib.blake2b(head + line, digest_size=16).hexdigest()


def identifier_rows(
    resource: Mapping[str, Any], feed_id: str, patient_key: str | None
) -> list[dict[str, Any]]:
    resource_type = str(resource["resourceType"])
    ref = f"{resource_type}/{resource['id']}"
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    found = resource.get("identifier")
    for identifier in found if isinstance(found, list) else []:
        if not isinstance(identifier, dict):
            continue
        system, value = identifier.get("system") or "", identifier.get("value")
        if not isinstance(value, str) or not isinstance(system, str):
            continue
        if not value or len(value) > _MAX_TEXT or len(system) > _MAX_TEXT:
            continue
        rows[(system, value)] = {
            "resource_type": resource_type,
            "system": system,
            "value": value,
            "resource_ref": ref,
            "feed": feed_id,
            "patient_key": patient_key,
        }
    return list(rows.values())


async def remember_identifiers(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    await upsert(session, identifiers, rows, ["resource_type", "system", "value", "resource_ref"])


@dataclass(frozen=True)
class Match:
    ref: str
    feed: str
    patient_key: str | None


async def find_by_identifier(
    session: AsyncSession, resource_type: str, system: str | None, value: str
) -> list[Match]:
    """Resources of ``resource_type`` with the identifier ``system|value`` (any system if None)."""
    query = select(identifiers).where(
        identifiers.c.resource_type == resource_type, identifiers.c.value == value
    )
    if system is not None:
        query = query.where(identifiers.c.system == system)
    rows = await session.execute(query)
    seen: dict[str, Match] = {}
    for row in rows:
        seen.setdefault(row.resource_ref, Match(row.resource_ref, row.feed, row.patient_key))
    return list(seen.values())
