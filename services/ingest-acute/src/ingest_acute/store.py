"""What ingest-acute remembers between messages, read and written in batches.

* ``received``: each (sender, MSH-10) taken in, with its content digest and the answer it got;
* ``merges``: A40 merges, old patient -> survivor;
* ``patient_keys``: the patient directory (Patient/<id> -> key), written by the intake;
* ``encounters``: each encounter's status, start and location history.

The questions of every connection waiting at once are one lookup statement, and their
outcomes one write (``batching.Batcher``): one round trip each on PostgreSQL
(``postgres.py``), the portable Core statements below on SQLite.

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

import orjson
from sqlalchemy import (
    CompoundSelect,
    Select,
    Table,
    Text,
    cast,
    literal_column,
    null,
    select,
    tuple_,
    union_all,
    update,
)

from fhir_common.db import Database, upsert
from ingest_acute import postgres
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
        # SQLite: a lookup only reads, in one statement, so it needs no transaction either
        self._reader = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._postgres = not db.is_sqlite
        # PostgreSQL: each batcher's statements on a connection of its own (postgres.Channel)
        self._lookup_channel = postgres.Channel(db.engine)
        self._write_channel = postgres.Channel(db.engine)
        self._lookups: Batcher[Question, Answer] = Batcher(
            self._look_up, name="ingest-acute:lookups"
        )
        self._outcomes: Batcher[Outcome, None] = Batcher(
            self._remember, name="ingest-acute:outcomes"
        )

    async def receipt(self, feed: str, control_id: str) -> Receipt | None:
        return (await self._lookups.submit(((feed, control_id), Lookup(feed))))[0]

    async def before(self, feed: str, control_id: str, lookup: Lookup) -> Answer:
        """In one round trip: how this message was answered before (if it was), and what
        earlier messages established that mapping it needs."""
        return await self._lookups.submit(((feed, control_id), lookup))

    async def known(self, lookup: Lookup) -> Known:
        return (await self._lookups.submit((None, lookup)))[1] if lookup else Known()

    async def remember(self, outcome: Outcome) -> None:
        await self._outcomes.submit(outcome)

    async def close(self) -> None:
        for batcher in (self._lookups, self._outcomes):
            await batcher.close()
        for channel in (self._lookup_channel, self._write_channel):
            await channel.close()

    # -- batches -----------------------------------------------------------------------------
    async def _look_up(self, questions: Sequence[Question]) -> list[Answer]:
        """Every waiting connection's questions in one statement (one round trip)."""
        wanted = _Wanted.of(questions)
        if not wanted:
            return [(None, Known()) for _ in questions]
        if self._postgres:
            found = _Found.of(
                await self._lookup_channel.execute(postgres.LOOKUP, wanted.parameters())
            )
        else:
            async with self._reader.connect() as conn:
                found = _Found.of(await conn.execute(wanted.statement()))
        return [found.answer(control, lookup) for control, lookup in questions]

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
        if self._postgres and not merged:
            # one atomic statement, one round trip (postgres.py)
            parameters = postgres.remember_parameters(receipts, keys, states)
            await self._write_channel.execute(postgres.REMEMBER, parameters)
            return [None] * len(outcomes)
        # Core statements in one transaction: the ORM session added nothing here.
        async with self.db.engine.begin() as conn:
            await upsert(conn, received, receipts, ["feed", "control_id"])
            await upsert(conn, patient_keys, keys, ["patient_ref"])
            await upsert(conn, encounters, states, ["encounter_id"])
            for feed, old, survivor in merged:
                # whoever was merged into the old patient now belongs to the survivor too
                await conn.execute(
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
                await upsert(conn, merges, [row], ["feed", "old_source"])
        return [None] * len(outcomes)


# The lookup is one UNION ALL over the four tables, each arm shaped
# (kind, k1, k2, v1, v2, v3, v4, v5); what an arm does not have is NULL.
_RECEIPT, _MERGE, _KEY, _ENCOUNTER = "r", "m", "k", "e"
_WIDTH = 5


def _arm(kind: str, table: Table, keys: Sequence[Any], values: Sequence[Any]) -> Select[Any]:
    def text_or_null(column: Any) -> Any:
        return cast(column if column is not None else null(), Text)

    padded_keys = [*keys, None][:2]
    padded_values = [*values, *[None] * _WIDTH][:_WIDTH]
    columns: list[Any] = [literal_column(f"'{kind}'").label("kind")]
    columns += [text_or_null(c).label(f"k{n}") for n, c in enumerate(padded_keys, 1)]
    columns += [text_or_null(c).label(f"v{n}") for n, c in enumerate(padded_values, 1)]
    return select(*columns).select_from(table)


@dataclass
class _Wanted:
    """The distinct keys a batch of questions asks about."""

    controls: list[tuple[str, str]]
    merge_keys: list[tuple[str, str]]
    refs: list[str]
    encounter_ids: list[str]

    @classmethod
    def of(cls, questions: Sequence[Question]) -> _Wanted:
        lookups = [lookup for _, lookup in questions]
        return cls(
            sorted({control for control, _ in questions if control is not None}),
            sorted({(x.feed, s) for x in lookups for s in x.sources}),
            sorted({r for x in lookups for r in x.patient_refs}),
            sorted({e for x in lookups for e in x.encounter_ids}),
        )

    def __bool__(self) -> bool:
        return bool(self.controls or self.merge_keys or self.refs or self.encounter_ids)

    def statement(self) -> CompoundSelect | Select[Any]:
        """The portable (SQLite) form of the lookup; ``postgres.LOOKUP`` is PostgreSQL's."""
        arms: list[Select[Any]] = []
        if self.controls:
            r = received.c
            arm = _arm(
                _RECEIPT,
                received,
                [r.feed, r.control_id],
                [r.digest, r.ack_code, r.reason, r.error_code, r.error_location],
            )
            arms.append(arm.where(tuple_(r.feed, r.control_id).in_(self.controls)))
        if self.merge_keys:
            m = merges.c
            arm = _arm(_MERGE, merges, [m.feed, m.old_source], [m.survivor_source])
            arms.append(arm.where(tuple_(m.feed, m.old_source).in_(self.merge_keys)))
        if self.refs:
            k = patient_keys.c
            arm = _arm(_KEY, patient_keys, [k.patient_ref], [k.patient_key])
            arms.append(arm.where(k.patient_ref.in_(self.refs)))
        if self.encounter_ids:
            e = encounters.c
            arm = _arm(_ENCOUNTER, encounters, [e.encounter_id], [e.state])
            arms.append(arm.where(e.encounter_id.in_(self.encounter_ids)))
        return arms[0] if len(arms) == 1 else union_all(*arms)

    def parameters(self) -> dict[str, list[str]]:
        """The same question for ``postgres.LOOKUP``."""
        return postgres.lookup_parameters(
            self.controls, self.merge_keys, self.refs, self.encounter_ids
        )


@dataclass
class _Found:
    """What the lookup statement returned, by table and key."""

    receipts: dict[tuple[str, str], Receipt] = field(default_factory=dict)
    survivors: dict[tuple[str, str], str] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    states: dict[str, EncounterState] = field(default_factory=dict)

    @classmethod
    def of(cls, rows: Iterable[Any]) -> _Found:
        found = cls()
        for kind, k1, k2, v1, v2, v3, v4, v5 in rows:
            if kind == _RECEIPT:
                problem = _problem(v3, v4, v5)
                found.receipts[(k1, k2)] = Receipt(k1, k2, v1, v2, problem)
            elif kind == _MERGE:
                found.survivors[(k1, k2)] = v1
            elif kind == _KEY:
                found.keys[k1] = v1
            else:
                found.states[k1] = EncounterState.from_json(orjson.loads(v1))
        return found

    def answer(self, control: tuple[str, str] | None, x: Lookup) -> Answer:
        receipt = self.receipts.get(control) if control is not None else None
        survivors = self.survivors
        known = Known(
            survivors={s: survivors[(x.feed, s)] for s in x.sources if (x.feed, s) in survivors},
            keys={r: self.keys[r] for r in x.patient_refs if r in self.keys},
            encounters={e: self.states[e] for e in x.encounter_ids if e in self.states},
        )
        return receipt, known


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


def _problem(reason: str | None, code: str | None, location: str | None) -> Problem | None:
    if not reason:
        return None
    segment, _, field = (location or "").partition("-")
    return Problem(
        reason,
        ErrorCode(code or ErrorCode.INTERNAL_ERROR),
        segment,
        int(field) if field.isdigit() else None,
    )


def _last_by(items: Iterable[tuple[Any, dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key, the last one given (a multi-row upsert may not touch a row twice), in
    key order: replicas writing overlapping rows at once then lock them in the same order."""
    latest = dict(items)
    return [latest[key] for key in sorted(latest)]
