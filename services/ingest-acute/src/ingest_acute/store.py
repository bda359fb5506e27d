"""What ingest-acute remembers between messages, read and written in batches.

* ``received``: each (sender, MSH-10) taken in, with its content digest and the answer it got;
* ``merges``: A40 merges, old patient -> survivor;
* ``patient_keys``: the patient directory (Patient/<id> -> key), also fed from fhir.Patient;
* ``encounters``: each encounter's status, start and location history.

Order of work for one message (at-least-once without loss): look up, publish to the bus,
then remember. A crash between publishing and remembering means the sender, having had no
ACK, sends again and the message is published twice, which is harmless: resource ids are
deterministic and the record ignores a resource whose content has not changed. The other
order could lose a message (remembered, never published, answered as a duplicate).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.db import Database, upsert
from ingest_acute.batching import Batcher
from ingest_acute.encounters import EncounterState
from ingest_acute.mapping import Known, Lookup
from ingest_acute.outcome import ErrorCode, Problem
from ingest_acute.tables import encounters, merges, patient_keys, received


@dataclass(frozen=True)
class Receipt:
    """A message taken in and how it was answered (with why, when it was refused)."""

    feed: str
    control_id: str
    digest: str
    ack_code: str
    problem: Problem | None = None


Question = tuple[tuple[str, str] | None, Lookup]  # (feed, control id) to find, and the rest
Answer = tuple["Receipt | None", Known]


@dataclass
class Outcome:
    """What to remember once a message has been answered."""

    receipt: Receipt | None = None
    keys: dict[str, str] = field(default_factory=dict)
    merges: dict[str, str] = field(default_factory=dict)  # old source -> survivor (same feed)
    encounters: dict[str, EncounterState] = field(default_factory=dict)


class Store:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._receipts: Batcher[tuple[str, str], Receipt | None] = Batcher(
            self._find_receipts, name="ingest-acute:receipts"
        )
        self._lookups: Batcher[Question, Answer] = Batcher(
            self._look_up, name="ingest-acute:lookups"
        )
        self._outcomes: Batcher[Outcome, None] = Batcher(
            self._remember, name="ingest-acute:outcomes"
        )

    async def receipt(self, feed: str, control_id: str) -> Receipt | None:
        return await self._receipts.submit((feed, control_id))

    async def before(self, feed: str, control_id: str, lookup: Lookup) -> Answer:
        """In one round trip: how this message was answered before (if it was), and what
        earlier messages established that mapping it needs."""
        return await self._lookups.submit(((feed, control_id), lookup))

    async def known(self, lookup: Lookup) -> Known:
        return (await self._lookups.submit((None, lookup)))[1] if lookup else Known()

    async def remember(self, outcome: Outcome) -> None:
        await self._outcomes.submit(outcome)

    async def close(self) -> None:
        for batcher in (self._receipts, self._lookups, self._outcomes):
            await batcher.close()

    # -- batches -----------------------------------------------------------------------------
    async def _find_receipts(self, wanted: Sequence[tuple[str, str]]) -> list[Receipt | None]:
        async with self.db.transaction() as session:
            return await _receipts_in(session, wanted)

    async def _look_up(self, questions: Sequence[Question]) -> list[Answer]:
        """Every waiting connection's questions in one transaction (one pooled connection)."""
        lookups = [lookup for _, lookup in questions]
        controls = [control for control, _ in questions if control is not None]
        async with self.db.transaction() as session:
            receipts = await _receipts_in(session, controls) if controls else []
            knowns = await _known_in(session, lookups)
        by_control = dict(zip(controls, receipts, strict=True))
        return [
            (by_control.get(control) if control else None, known)
            for (control, _), known in zip(questions, knowns, strict=True)
        ]

    async def _remember(self, outcomes: Sequence[Outcome]) -> list[None]:
        now = datetime.now(UTC)
        receipts = _last_by(
            ((r.feed, r.control_id), _receipt_row(r, now)) for o in outcomes if (r := o.receipt)
        )
        keys = _last_by(
            (ref, {"patient_ref": ref, "patient_key": key})
            for o in outcomes
            for ref, key in o.keys.items()
        )
        states = _last_by(
            (eid, {"encounter_id": eid, "state": state.to_json(), "updated_at": now})
            for o in outcomes
            for eid, state in o.encounters.items()
        )
        merged = [
            (o.receipt.feed, old, survivor)
            for o in outcomes
            if o.receipt
            for old, survivor in o.merges.items()
        ]
        async with self.db.transaction() as session:
            await upsert(session, received, receipts, ["feed", "control_id"])
            await upsert(session, patient_keys, keys, ["patient_ref"])
            await upsert(session, encounters, states, ["encounter_id"])
            for feed, old, survivor in merged:
                # whoever was merged into the old patient now belongs to the survivor too
                await session.execute(
                    update(merges)
                    .where(merges.c.feed == feed, merges.c.survivor_source == old)
                    .values(survivor_source=survivor, merged_at=now)
                )
                row = {
                    "feed": feed,
                    "old_source": old,
                    "survivor_source": survivor,
                    "merged_at": now,
                }
                await upsert(session, merges, [row], ["feed", "old_source"])
        return [None] * len(outcomes)


async def _receipts_in(
    session: AsyncSession, wanted: Sequence[tuple[str, str]]
) -> list[Receipt | None]:
    pairs = sorted(set(wanted))
    rows = await session.execute(
        select(received).where(tuple_(received.c.feed, received.c.control_id).in_(pairs))
    )
    found = {
        (r.feed, r.control_id): Receipt(r.feed, r.control_id, r.digest, r.ack_code, _problem(r))
        for r in rows
    }
    return [found.get(pair) for pair in wanted]


async def _known_in(session: AsyncSession, lookups: Sequence[Lookup]) -> list[Known]:
    merge_keys = sorted({(x.feed, s) for x in lookups for s in x.sources})
    refs = sorted({r for x in lookups for r in x.patient_refs})
    encounter_ids = sorted({e for x in lookups for e in x.encounter_ids})
    survivors: dict[tuple[str, str], str] = {}
    if merge_keys:
        query = select(merges).where(tuple_(merges.c.feed, merges.c.old_source).in_(merge_keys))
        survivors = {
            (r.feed, r.old_source): r.survivor_source for r in await session.execute(query)
        }
    keys: dict[str, str] = {}
    if refs:
        query = select(patient_keys).where(patient_keys.c.patient_ref.in_(refs))
        keys = {r.patient_ref: r.patient_key for r in await session.execute(query)}
    states: dict[str, EncounterState] = {}
    if encounter_ids:
        query = select(encounters).where(encounters.c.encounter_id.in_(encounter_ids))
        states = {
            r.encounter_id: EncounterState.from_json(r.state) for r in await session.execute(query)
        }
    return [
        Known(
            survivors={s: survivors[(x.feed, s)] for s in x.sources if (x.feed, s) in survivors},
            keys={r: keys[r] for r in x.patient_refs if r in keys},
            encounters={e: states[e] for e in x.encounter_ids if e in states},
        )
        for x in lookups
    ]


def _receipt_row(receipt: Receipt, now: datetime) -> dict[str, Any]:
    return {
        "feed": receipt.feed,
        "control_id": receipt.control_id,
        "digest": receipt.digest,
        "ack_code": receipt.ack_code,
        "reason": receipt.problem.reason if receipt.problem else None,
        "error_code": str(receipt.problem.code) if receipt.problem else None,
        "error_location": receipt.problem.where if receipt.problem else None,
        "received_at": now,
    }


def _problem(row: Any) -> Problem | None:
    if not row.reason:
        return None
    segment, _, field = (row.error_location or "").partition("-")
    return Problem(
        row.reason,
        ErrorCode(row.error_code or ErrorCode.INTERNAL_ERROR),
        segment,
        int(field) if field.isdigit() else None,
    )


def _last_by(items: Iterable[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key, the last one given (a multi-row upsert may not touch a row twice)."""
    return list(dict(items).values())
