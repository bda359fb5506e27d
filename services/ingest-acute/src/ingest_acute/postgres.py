"""The store's two batched statements as PostgreSQL writes them best: one round trip each.

Measured under load on the build machine, each round trip to PostgreSQL costs this process
about 0.3 ms of CPU in socket writes and wake-ups, besides SQLAlchemy's per-statement work, and
a batch written as BEGIN, three upserts and COMMIT is five of them. Here:

* the lookup is one ``SELECT ... UNION ALL`` over the four tables;
* the write is one statement whose data-modifying CTEs upsert every table (a single statement
  is atomic, so no BEGIN/COMMIT is needed: the store runs it in autocommit mode).

Both take their rows as arrays (``unnest``), so the SQL text never changes with the batch's
size: SQLAlchemy's compiled cache and asyncpg's prepared statements are hit every time.
SQLite (embedded mode) has neither arrays nor writes in CTEs; it runs the portable Core
statements in ``store.py``, in-process, where round trips cost nothing. The rows of each are
shaped alike, so ``store._Found`` reads both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy import Result, TextClause, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ingest_acute.tables import SCHEMA

# Rows are (kind, k1, k2, v1..v5), as in store._arm: r = receipt, m = merge, k = key,
# e = encounter state (its JSON as text).
# (S608: only our own SCHEMA constant is interpolated; every value is a bound parameter.)
LOOKUP: TextClause = text(f"""
SELECT 'r' AS kind, feed AS k1, control_id AS k2, digest AS v1, ack_code AS v2,
       reason AS v3, error_code AS v4, error_location AS v5
  FROM {SCHEMA}.received
 WHERE (feed, control_id) IN (
       SELECT * FROM unnest(CAST(:r_feeds AS text[]), CAST(:r_controls AS text[])))
UNION ALL
SELECT 'm', feed, old_source, survivor_source, NULL, NULL, NULL, NULL
  FROM {SCHEMA}.merges
 WHERE (feed, old_source) IN (
       SELECT * FROM unnest(CAST(:m_feeds AS text[]), CAST(:m_sources AS text[])))
UNION ALL
SELECT 'k', patient_ref, NULL, patient_key, NULL, NULL, NULL, NULL
  FROM {SCHEMA}.patient_keys
 WHERE patient_ref = ANY(CAST(:refs AS text[]))
UNION ALL
SELECT 'e', encounter_id, NULL, CAST(state AS text), NULL, NULL, NULL, NULL
  FROM {SCHEMA}.encounters
 WHERE encounter_id = ANY(CAST(:encounter_ids AS text[]))
""")  # noqa: S608

# Merges are not written here: they are rare (A40) and need an UPDATE before their upsert,
# so a batch holding one is written by the portable path, in a transaction.
REMEMBER: TextClause = text(f"""
WITH receipts AS (
    INSERT INTO {SCHEMA}.received
           (feed, control_id, digest, ack_code, reason, error_code, error_location, received_at)
    SELECT feed, control_id, digest, ack_code, reason, error_code, error_location, now()
      FROM unnest(CAST(:feeds AS text[]), CAST(:controls AS text[]), CAST(:digests AS text[]),
                  CAST(:acks AS text[]), CAST(:reasons AS text[]), CAST(:codes AS text[]),
                  CAST(:locations AS text[]))
           AS t(feed, control_id, digest, ack_code, reason, error_code, error_location)
    ON CONFLICT (feed, control_id) DO UPDATE
       SET digest = excluded.digest, ack_code = excluded.ack_code, reason = excluded.reason,
           error_code = excluded.error_code, error_location = excluded.error_location,
           received_at = excluded.received_at
), keys AS (
    INSERT INTO {SCHEMA}.patient_keys (patient_ref, patient_key)
    SELECT * FROM unnest(CAST(:refs AS text[]), CAST(:keys AS text[]))
    ON CONFLICT (patient_ref) DO UPDATE SET patient_key = excluded.patient_key
)
INSERT INTO {SCHEMA}.encounters (encounter_id, state, updated_at)
SELECT encounter_id, CAST(state AS jsonb), now()
  FROM unnest(CAST(:encounter_ids AS text[]), CAST(:states AS text[])) AS t(encounter_id, state)
ON CONFLICT (encounter_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at
""")  # noqa: S608


class Channel:
    """One connection kept open for one batcher's statements, in autocommit mode.

    A batcher runs one batch at a time, so one connection is all it uses. Taking one from the
    pool for each batch cost two more round trips (the pool's pre-ping, then its reset), which
    at low load, where batches hold one or two messages, cost more CPU than the statements.
    The pool's pre-ping found connections the server had closed (a restart, an idle time-out);
    here a statement that finds its connection gone is run once more on a new one (both
    statements are safe to repeat: a read, and upserts). Any other failure drops the connection
    and fails that batch (its senders are asked to send again, as for any database failure).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._connection: AsyncConnection | None = None

    async def execute(self, statement: TextClause, parameters: Mapping[str, Any]) -> Result[Any]:
        try:
            return await self._execute(statement, parameters)
        except DBAPIError as error:
            if not error.connection_invalidated:
                raise
            return await self._execute(statement, parameters)

    async def _execute(self, statement: TextClause, parameters: Mapping[str, Any]) -> Result[Any]:
        if self._connection is None:
            self._connection = await self._engine.connect()
        try:
            return await self._connection.execute(statement, parameters)
        except Exception:
            await self.close()
            raise

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


def lookup_parameters(
    controls: Sequence[tuple[str, str]],
    merge_keys: Sequence[tuple[str, str]],
    refs: Sequence[str],
    encounter_ids: Sequence[str],
) -> dict[str, list[str]]:
    return {
        "r_feeds": [feed for feed, _ in controls],
        "r_controls": [control for _, control in controls],
        "m_feeds": [feed for feed, _ in merge_keys],
        "m_sources": [source for _, source in merge_keys],
        "refs": list(refs),
        "encounter_ids": list(encounter_ids),
    }


def remember_parameters(
    receipts: Sequence[Mapping[str, Any]],
    keys: Sequence[Mapping[str, Any]],
    states: Sequence[Mapping[str, Any]],
) -> dict[str, list[Any]]:
    """The rows ``store._remember`` made for the portable path, as one array per column."""
    return {
        "feeds": [r["feed"] for r in receipts],
        "controls": [r["control_id"] for r in receipts],
        "digests": [r["digest"] for r in receipts],
        "acks": [r["ack_code"] for r in receipts],
        "reasons": [r["reason"] for r in receipts],
        "codes": [r["error_code"] for r in receipts],
        "locations": [r["error_location"] for r in receipts],
        "refs": [k["patient_ref"] for k in keys],
        "keys": [k["patient_key"] for k in keys],
        "encounter_ids": [s["encounter_id"] for s in states],
        "states": [orjson.dumps(s["state"]).decode() for s in states],
    }
