"""What the intake guarantees when many connections are in hand at once, batched together:
a message sent again while its first copy is still being processed is processed once, each
patient's messages stay in order under one key across batches, and what one message
establishes (the encounter's locations) is there for the next one, whichever batch it joins.
The store's one-statement lookup is checked on PostgreSQL as well (SQLite runs above)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from hl7.mllp import open_hl7_connection
from sqlalchemy.engine import make_url

from fhir_common.db import Database
from fhir_common.scratch import create_database, drop_database
from ingest_acute.bench import nhs_numbers
from ingest_acute.encounters import EncounterState
from ingest_acute.inflight import KeyedLock
from ingest_acute.mapping import Lookup
from ingest_acute.outcome import ErrorCode, Problem
from ingest_acute.store import Outcome, Receipt, Store

HEADER = "MSH|^~\\&|PAS|RCB|JOINEDUP|JOINEDUP|{at}||ADT^{event}^ADT_{event}|{control}|P|2.5\r"
PID = "PID|1||{nhs}^^^NHS^NH~{mrn}^^^RCB^MR||JONES^ALAN||19580212|M\r"
PV1 = "PV1|1|I|{ward}^BAY1^BED1^RCB||||C1234567^WHO^JANE^^^DR^^^GMC||||||||||||{visit}{end}\r"
# admitted to WARD1, moved to WARD2, discharged: one encounter's story in three messages
STORY = (
    ("A01", "20240105031500", "WARD1", ""),
    ("A02", "20240105091500", "WARD2", ""),
    ("A03", "20240106101500", "WARD2", "|" * 26 + "20240106101500"),
)
NHS_NUMBERS = nhs_numbers(5, seed=4)  # valid (modulus 11), in the 999 test range


def adt(event: str, at: str, control: str, nhs: str, ward: str, end: str) -> bytes:
    text = HEADER + f"EVN|{event}|{at}\r" + PID + PV1
    values = {"at": at, "event": event, "control": control, "nhs": nhs, "ward": ward}
    return text.format(**values, mrn=f"M{nhs}", visit=f"V{nhs}", end=end).encode()


async def send_alone(port: int, message: bytes) -> str:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        writer.writeblock(message)
        await writer.drain()
        async with asyncio.timeout(10):
            return (await reader.readblock()).decode()
    finally:
        writer.close()


async def test_copies_of_one_message_sent_at_once_are_processed_once(acute: Any, ack: Any) -> None:
    message = adt(*STORY[0][:2], "SAME-1", NHS_NUMBERS[0], *STORY[0][2:])
    answers = await asyncio.gather(*(send_alone(acute.port, message) for _ in range(6)))
    await acute.idle()
    assert [ack.code(a) for a in answers] == ["AA"] * 6
    assert [ack.msa(a)[1] for a in answers] == ["SAME-1"] * 6
    assert len(acute.topic("fhir.Encounter")) == 1
    assert len(acute.topic("fhir.Patient")) == 1
    assert len(acute.app.state.acute.intake._in_hand) == 0  # nothing left held


async def test_each_patient_stays_in_order_and_keeps_its_state_across_batches(
    acute: Any, ack: Any
) -> None:
    async def one_sender(nhs: str) -> list[str]:
        reader, writer = await open_hl7_connection("127.0.0.1", acute.port)
        codes = []
        try:
            for number, (event, at, ward, end) in enumerate(STORY):
                writer.writeblock(adt(event, at, f"{nhs}-{number}", nhs, ward, end))
                await writer.drain()
                async with asyncio.timeout(10):
                    codes.append(ack.code((await reader.readblock()).decode()))
        finally:
            writer.close()
        return codes

    # every connection's messages are in hand at once, so each lookup, publish and write is
    # a batch mixing patients; a patient's next message is in a later batch than its last
    codes = await asyncio.gather(*(one_sender(nhs) for nhs in NHS_NUMBERS))
    await acute.idle()
    assert codes == [["AA", "AA", "AA"]] * len(NHS_NUMBERS)
    for nhs in NHS_NUMBERS:
        mine = [orjson.loads(m.value) for m in acute.topic("fhir.Encounter") if m.key == nhs]
        assert [e["status"] for e in mine] == ["in-progress", "in-progress", "finished"]
        # the discharge knows the admission's ward: state written by earlier batches was read
        wards = [
            loc["location"]["identifier"]["value"].split("|")[1] for loc in mine[-1]["location"]
        ]
        assert wards == ["WARD1", "WARD2"]
        assert [loc["status"] for loc in mine[-1]["location"]] == ["completed", "completed"]


async def test_a_keyed_lock_serialises_one_key_and_not_the_others() -> None:
    locks = KeyedLock()
    order: list[str] = []

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            await asyncio.sleep(0.01)
            order.append(f"{name} out")

    await asyncio.gather(hold("a", "first"), hold("a", "second"), hold("b", "other"))
    assert order.index("first out") < order.index("second in")  # one key: one at a time
    assert order.index("other in") < order.index("first out")  # another key: alongside
    assert len(locks) == 0


@dataclass
class OnPostgres:
    store: Store
    database: str
    admin: asyncpg.Connection


@pytest.fixture
async def on_postgres(database_url: str) -> AsyncIterator[OnPostgres]:
    """A Store on a database of its own on the real PostgreSQL server, migrated, dropped after."""
    url = make_url(database_url)
    name = f"jd_acute_store_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(
        url.set(drivername="postgresql").render_as_string(hide_password=False)
    )
    db = Database(await create_database(database_url, name), "ingest_acute")
    try:
        await db.migrate(Path(__import__("ingest_acute").__file__).parent / "migrations")
        store = Store(db)
        yield OnPostgres(store, name, admin)
        await store.close()
    finally:
        await db.dispose()
        await admin.close()
        await drop_database(database_url, name)


@pytest.fixture
def postgres_store(on_postgres: OnPostgres) -> Store:
    return on_postgres.store


@pytest.mark.integration
async def test_the_store_finds_all_it_remembered_in_one_lookup_on_postgresql(
    postgres_store: Store,
) -> None:
    store = postgres_store
    state = EncounterState("in-progress", "2024-01-05T03:15:00+00:00", [{"status": "active"}])
    refused = Problem("no patient identifier", ErrorCode.REQUIRED_FIELD_MISSING, "PID", 3)
    # one batch without merges: the one-statement write (postgres.REMEMBER)
    await asyncio.gather(
        store.remember(
            Outcome(
                Receipt("feed-a", "C1", "d1", "AA"),
                keys={"Patient/p1": "9434765919"},
                encounters={"e1": state},
            )
        ),
        store.remember(Outcome(Receipt("feed-a", "C2", "d2", "AE", refused))),
    )
    # merges, one after the other: the transaction with the chain kept flat
    await store.remember(Outcome(Receipt("feed-a", "M1", "d3", "AA"), merges={"older": "old"}))
    await store.remember(Outcome(Receipt("feed-a", "M2", "d4", "AA"), merges={"old": "new"}))
    # a later outcome overwrites an earlier one
    moved = EncounterState("finished", state.start, [{"status": "completed"}])
    await store.remember(Outcome(Receipt("feed-a", "C3", "d5", "AA"), encounters={"e1": moved}))

    lookup = Lookup("feed-a", ("older", "old", "p9"), ("Patient/p1", "Patient/p2"), ("e1", "e2"))
    (receipt, known), (refusal, _), (nothing, elsewhere) = await asyncio.gather(
        store.before("feed-a", "C1", lookup),
        store.before("feed-a", "C2", Lookup("feed-a")),
        store.before("feed-b", "C1", Lookup("feed-b", ("old",))),
    )
    assert receipt == Receipt("feed-a", "C1", "d1", "AA")
    assert refusal == Receipt("feed-a", "C2", "d2", "AE", refused)
    assert nothing is None
    assert elsewhere.survivors == {}  # merges belong to their feed
    assert known.survivors == {"older": "new", "old": "new"}
    assert known.keys == {"Patient/p1": "9434765919"}
    assert known.encounters == {"e1": moved}
    assert await store.receipt("feed-a", "C2") == refusal


@pytest.mark.integration
async def test_the_store_reconnects_when_the_server_closed_its_connections(
    on_postgres: OnPostgres,
) -> None:
    store = on_postgres.store
    await store.remember(Outcome(Receipt("feed-a", "C1", "d1", "AA")))
    assert await store.receipt("feed-a", "C1") is not None
    # what a server restart or an idle time-out does to the store's open connections
    terminated = await on_postgres.admin.fetch(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
        on_postgres.database,
    )
    assert terminated
    await store.remember(Outcome(Receipt("feed-a", "C2", "d2", "AA")))
    assert await store.receipt("feed-a", "C2") == Receipt("feed-a", "C2", "d2", "AA")
