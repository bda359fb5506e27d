"""How a batch of incoming resources becomes versions, index rows, person links and changes.

A resource whose content is unchanged (ignoring the meta elements we set ourselves) creates no
new version: delivery is at-least-once and providers resend, so the same fact must not pile up.
Content is compared by a hash of its canonical JSON, so that checking a batch reads no stored
JSON at all.

Everything a batch does is written in the caller's transaction, ``record.changes`` messages
included (the outbox): committed together or not at all. Nothing is validated here: topics carry
resources that were validated where they entered (DESIGN.md), so they are read with orjson.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.bus import PermanentError
from fhir_common.events import FHIR_TOPIC_PREFIX, RECORD_CHANGES, Header, Message
from record import outbox, persons, repository
from record.indexing import index_rows
from record.repository import CurrentRow, CurrentState, IndexBatch, ResourceKey, WriteBatch

SETTING_TAG_SYSTEM = "https://fhir.joinedup.nhs.uk/CodeSystem/care-setting"


@dataclass(frozen=True)
class Change:
    resource_type: str
    id: str
    version_id: int
    patient_key: str | None  # the person it belongs to (NHS number when it has one)
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


@dataclass(frozen=True)
class Applied:
    changes: list[Change]
    messages: list[Message]  # the record.changes messages, also in the outbox row
    outbox_id: int | None


def without_our_meta(content: dict[str, Any]) -> dict[str, Any]:
    meta = content.get("meta")
    if not isinstance(meta, dict) or ("versionId" not in meta and "lastUpdated" not in meta):
        return content
    kept = dict(meta)
    kept.pop("versionId", None)
    kept.pop("lastUpdated", None)
    stripped = dict(content)
    if kept:
        stripped["meta"] = kept
    else:
        del stripped["meta"]
    return stripped


def content_hash(resource: dict[str, Any]) -> bytes:
    canonical = orjson.dumps(without_our_meta(resource), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(canonical, digest_size=16).digest()


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return content_hash(a) == content_hash(b)


def resource_type_of(topic: str) -> str:
    """``fhir.<Type>`` (or ``<prefix>.fhir.<Type>``, as benchmarks and tests use) → Type."""
    _, found, resource_type = topic.rpartition(FHIR_TOPIC_PREFIX)
    if not found or not resource_type[:1].isupper() or not resource_type.isalpha():
        raise PermanentError(f"{topic} is not a fhir.<ResourceType> topic")
    return resource_type


def parse(message: Message) -> dict[str, Any]:
    """The resource a ``fhir.<Type>`` message carries; bad data is a PermanentError."""
    try:
        resource = orjson.loads(message.value)
    except orjson.JSONDecodeError as error:
        raise PermanentError(f"message value is not JSON: {error}") from error
    if not isinstance(resource, dict):
        raise PermanentError("message value is not a JSON object")
    expected = resource_type_of(message.topic)
    if resource.get("resourceType") != expected:
        raise PermanentError(f"resourceType {resource.get('resourceType')!r} on {message.topic}")
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not resource_id or len(resource_id) > 64:
        raise PermanentError("resource has no id (or one longer than 64 characters)")
    if len(message.key) > 128 or len(message.headers.get(Header.SOURCE, "")) > 128:
        raise PermanentError("message key or source longer than 128 characters")
    if len(message.headers.get(Header.SETTING, "")) > 32:
        raise PermanentError("setting header longer than 32 characters")
    return resource


def setting_of(message: Message, resource: dict[str, Any]) -> str | None:
    setting = message.headers.get(Header.SETTING)
    if setting:
        return setting
    meta = resource.get("meta")
    for tag in (meta.get("tag") or []) if isinstance(meta, dict) else []:
        if isinstance(tag, dict) and tag.get("system") == SETTING_TAG_SYSTEM:
            code = str(tag.get("code"))
            return code if len(code) <= 32 else None
    return None


@dataclass
class _Version:
    key: ResourceKey
    version_id: int
    content: dict[str, Any]
    raw: str
    hash: bytes
    patient_key: str | None
    source: str | None
    setting: str | None
    cause: Mapping[str, str]
    created: bool


async def apply(
    session: AsyncSession,
    messages: Sequence[Message],
    *,
    changes_topic: str = RECORD_CHANGES,
    positions: bool = False,
) -> Applied:
    """Store what changed in ``messages``; return the changes in message order.

    With ``positions`` (a durable log: Kafka), messages at or below the stored position of their
    topic partition were stored before — the batch is delivered again after a crash — and are
    skipped, and the positions reached are written with the batch.
    """
    if positions:
        messages = await _not_seen_before(session, messages)
    incoming = [(m, parse(m)) for m in messages]
    keys: list[ResourceKey] = [(r["resourceType"], r["id"]) for _, r in incoming]
    states = await repository.current_states(session, keys)
    await _fill_missing_hashes(session, states)
    now = datetime.now(UTC)
    stamp = now.isoformat().replace("+00:00", "Z")
    latest: dict[ResourceKey, tuple[int, bytes | None, str | None]] = {
        k: (s.version_id, s.content_hash, s.patient_key) for k, s in states.items()
    }
    patient_keys: dict[str, list[str | None]] = {}  # Patient id -> keys stored and sent
    last_keys: dict[str, str | None] = {}  # Patient id -> the key it is stored under now
    versions: list[_Version] = []
    for message, resource in incoming:
        key = (resource["resourceType"], resource["id"])
        previous = latest.get(key)
        arriving_key = message.key or None
        if key[0] == "Patient":
            patient_keys.setdefault(key[1], [previous[2] if previous else None])
            patient_keys[key[1]].append(arriving_key)
            arriving_key = persons.preferred_key(previous[2] if previous else None, arriving_key)
            last_keys[key[1]] = arriving_key
        digest = content_hash(resource)
        if previous and previous[1] == digest:
            continue
        version_id = (previous[0] if previous else 0) + 1
        content = dict(resource)
        meta = content.get("meta")
        content["meta"] = {
            **(meta if isinstance(meta, dict) else {}),
            "versionId": str(version_id),
            "lastUpdated": stamp,
        }
        versions.append(
            _Version(
                key,
                version_id,
                content,
                orjson.dumps(content).decode(),
                digest,
                arriving_key,
                message.headers.get(Header.SOURCE),
                setting_of(message, resource),
                message.headers,
                previous is None,
            )
        )
        latest[key] = (version_id, digest, arriving_key)

    linker = persons.Linker(session)
    patients = {r["id"]: r for _, r in incoming if r["resourceType"] == "Patient"}
    arriving = [
        persons.ArrivingPatient(rid, last_keys[rid], tuple(k for k in seen if k), patients[rid])
        for rid, seen in patient_keys.items()
    ]
    if arriving:
        await persons.link_patients(linker, arriving)
    if not versions:
        return Applied([], [], None)

    final: dict[ResourceKey, _Version] = {}
    for version in versions:
        final[version.key] = version
    batch = WriteBatch()
    batch.archive = [k for k in final if k in states]
    batch.history = [(*v.key, v.version_id, now, v.raw) for v in versions if final[v.key] is not v]
    for key, version in final.items():
        row = CurrentRow(
            key[0],
            key[1],
            version.version_id,
            now,
            version.patient_key,
            version.source,
            version.setting,
            version.hash,
            version.raw,
            states[key].version_id if key in states else 0,
        )
        (batch.updates if key in states else batch.inserts).append(row)
    await _index(session, batch, final, states)

    person_of = await linker.persons_of(v.patient_key for v in versions if v.patient_key)
    changes = [
        Change(
            *v.key,
            v.version_id,
            person_of.get(v.patient_key) if v.patient_key else None,
            "created" if v.created else "updated",
            v.cause,
        )
        for v in versions
    ]
    messages_out = outbox.change_messages(changes, changes_topic)
    batch.outbox = outbox.serialise(messages_out)
    outbox_id = await repository.write(session, batch)
    return Applied(changes, messages_out, outbox_id)


async def _not_seen_before(session: AsyncSession, messages: Sequence[Message]) -> list[Message]:
    placed = [m for m in messages if m.partition is not None and m.offset is not None]
    if not placed:
        return list(messages)
    wanted = {(m.topic, m.partition or 0) for m in placed}
    stored = await repository.positions(session, wanted)
    fresh: list[Message] = []
    reached: dict[repository.Position, int] = {}
    for message in messages:
        if message.partition is None or message.offset is None:
            fresh.append(message)
            continue
        where = (message.topic, message.partition)
        if message.offset > stored.get(where, -1):
            fresh.append(message)
            reached[where] = max(reached.get(where, -1), message.offset)
    if reached:
        await repository.advance_positions(session, reached)
    return fresh


async def _fill_missing_hashes(
    session: AsyncSession, states: dict[ResourceKey, CurrentState]
) -> None:
    """Rows stored before hashes existed (and not yet reindexed): hash their content now."""
    missing = [k for k, s in states.items() if s.content_hash is None]
    if not missing:
        return
    for key, raw in (await repository.raw_contents(session, missing)).items():
        state = states[key]
        states[key] = CurrentState(
            state.version_id, content_hash(orjson.loads(raw)), state.patient_key
        )


async def _index(
    session: AsyncSession,
    batch: WriteBatch,
    final: Mapping[ResourceKey, _Version],
    states: Mapping[ResourceKey, CurrentState],
) -> None:
    """Index rows of the final versions; for replaced ones, only the difference."""
    old = await repository.raw_contents(session, [k for k in final if k in states])
    deletes, inserts = IndexBatch(), IndexBatch()
    for key, version in final.items():
        rows = index_rows(version.content)
        previous_raw = old.get(key)
        if previous_raw is None:
            inserts.add(key, rows)
            continue
        before = index_rows(orjson.loads(previous_raw))
        gone = type(rows)(
            before.tokens - rows.tokens,
            before.strings - rows.strings,
            before.dates - rows.dates,
            before.references - rows.references,
            before.quantities - rows.quantities,
        )
        added = type(rows)(
            rows.tokens - before.tokens,
            rows.strings - before.strings,
            rows.dates - before.dates,
            rows.references - before.references,
            rows.quantities - before.quantities,
        )
        deletes.add(key, gone)
        inserts.add(key, added)
    batch.index_deletes = deletes
    batch.index_inserts = inserts
