"""Rebuilding the search index (and content hashes) from the stored resources.

``INDEX_VERSION`` names the indexing rules (``searchparams`` and ``indexing``). When the rules
change, bump it: at its next start the service finds ``index_state`` behind and rebuilds every
index row before it consumes anything, so searches never mix rows of two rule sets. The rebuild
runs in chunks, one transaction each; if it is interrupted it starts again at the next start.
"""

from __future__ import annotations

import logging
import time

import orjson
from sqlalchemy import delete, select, update

from fhir_common.db import Database
from record import repository
from record.indexing import index_rows
from record.repository import IndexBatch
from record.tables import SEARCH_TABLES, index_state
from record.versioning import content_hash

INDEX_VERSION = 1
CHUNK = 2000

log = logging.getLogger(__name__)


async def index_version(db: Database) -> int:
    async with db.sessions() as session:
        found = (
            await session.execute(
                select(index_state.c.version).where(index_state.c.name == "search")
            )
        ).scalar_one_or_none()
    return int(found or 0)


async def ensure_index(db: Database) -> int:
    """Rebuild the index if it was built by older rules; returns how many resources it read."""
    if await index_version(db) >= INDEX_VERSION:
        return 0
    started = time.monotonic()
    async with db.transaction() as session:
        for table in SEARCH_TABLES:
            await session.execute(delete(table))
    done = 0
    after: repository.ResourceKey | None = None
    while True:
        async with db.transaction() as session:
            chunk = await repository.all_resources(session, after, CHUNK)
            if not chunk:
                break
            rows = IndexBatch()
            hashes = []
            for resource_type, resource_id, raw in chunk:
                resource = orjson.loads(raw)
                rows.add((resource_type, resource_id), index_rows(resource))
                hashes.append((resource_type, resource_id, content_hash(resource)))
            await repository.insert_index(session, rows)
            await repository.set_hashes(session, hashes)
        done += len(chunk)
        after = (chunk[-1][0], chunk[-1][1])
    async with db.transaction() as session:
        await session.execute(
            update(index_state).where(index_state.c.name == "search").values(version=INDEX_VERSION)
        )
    if done:
        log.warning(
            "search index rebuilt",
            extra={"resources": done, "seconds": round(time.monotonic() - started, 1)},
        )
    return done
