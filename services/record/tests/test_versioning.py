"""How messages become versions in the record (record.versioning), on SQLite (embedded mode)
and on a real PostgreSQL server (distributed mode)."""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, select

from fhir_common.bus import PermanentError
from fhir_common.bus.base import is_permanent
from fhir_common.db import Database
from fhir_common.events import Message, event_headers
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from record import repository, versioning
from record.main import MIGRATIONS
from record.tables import SCHEMA, history, metadata

CORE = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"
NHS_NUMBER = "9434765919"


# --- databases -----------------------------------------------------------------------------------


def in_a_thread(work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run async set-up work from a sync (module-scoped) fixture, on a loop of its own."""
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, work()).result()


@pytest.fixture(scope="module")
def postgresql_url(database_url: str) -> Iterator[str]:
    """A database of its own on the real PostgreSQL server, migrated once for this module and
    dropped afterwards; each test starts from empty tables (see ``db``)."""
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    name = f"jd_test_{uuid.uuid4().hex[:10]}"
    admin_dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    test_url = url.set(database=name).render_as_string(hide_password=False)

    async def admin(sql: str) -> None:
        connection = await asyncpg.connect(admin_dsn)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    async def migrate() -> None:
        database = Database(test_url, SCHEMA)
        try:
            await database.migrate(MIGRATIONS)
        finally:
            await database.dispose()

    in_a_thread(lambda: admin(f'CREATE DATABASE "{name}"'))
    try:
        in_a_thread(migrate)
        yield test_url
    finally:
        in_a_thread(lambda: admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, SCHEMA)
    if database.is_sqlite:
        await database.migrate(MIGRATIONS)
    else:
        async with database.transaction() as session:
            for table in metadata.sorted_tables:
                await session.execute(delete(table))
    try:
        yield database
    finally:
        await database.dispose()


# --- helpers -------------------------------------------------------------------------------------


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / name).read_text())
    return data


def patient() -> dict[str, Any]:
    resource = sample("Patient-example.json")
    resource["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER})
    return resource


def message(resource: dict[str, Any] | bytes, topic: str | None = None) -> Message:
    if isinstance(resource, dict):
        topic = topic or f"fhir.{resource['resourceType']}"
        value = orjson.dumps(resource)
    else:
        value = resource
    assert topic is not None
    return Message(
        topic=topic,
        key=NHS_NUMBER,
        value=value,
        headers=event_headers(source="gp-a", setting="primary"),
    )


async def apply(db: Database, *resources: dict[str, Any]) -> list[versioning.Change]:
    async with db.transaction() as session:
        return await versioning.apply(session, [message(r) for r in resources])


async def history_of(db: Database, resource_type: str, id_: str) -> list[tuple[int, Any]]:
    query = (
        select(history.c.version_id, history.c.content)
        .where(history.c.resource_type == resource_type, history.c.id == id_)
        .order_by(history.c.version_id)
    )
    async with db.sessions() as session:
        return [(r.version_id, r.content) for r in await session.execute(query)]


async def current(db: Database, resource_type: str, id_: str) -> repository.StoredResource:
    async with db.sessions() as session:
        found = await repository.read(session, resource_type, id_)
    assert found is not None
    return found


# --- versions ------------------------------------------------------------------------------------


async def test_the_first_message_creates_version_1(db: Database) -> None:
    changes = await apply(db, patient())
    assert [c.to_json() for c in changes] == [
        {
            "resourceType": "Patient",
            "id": "example",
            "versionId": "1",
            "patient": NHS_NUMBER,
            "change": "created",
        }
    ]
    assert changes[0].cause["source"] == "gp-a"
    stored = await current(db, "Patient", "example")
    assert stored.version_id == 1
    assert stored.patient_key == NHS_NUMBER
    assert stored.source == "gp-a"
    assert stored.content["meta"]["versionId"] == "1"
    assert stored.content["meta"]["lastUpdated"].endswith("Z")
    assert stored.content["name"] == patient()["name"]
    assert [v for v, _ in await history_of(db, "Patient", "example")] == [1]


async def test_the_same_content_again_creates_nothing(db: Database) -> None:
    await apply(db, patient())
    resent = patient()
    # what a consumer might be sent back: our own meta elements, with other values
    resent["meta"] = {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}
    assert await apply(db, resent) == []
    assert await apply(db, patient()) == []
    assert (await current(db, "Patient", "example")).version_id == 1
    assert len(await history_of(db, "Patient", "example")) == 1


async def test_changed_content_creates_version_2(db: Database) -> None:
    await apply(db, patient())
    changed = patient()
    changed["gender"] = "female"
    [change] = await apply(db, changed)
    assert (change.version_id, change.change) == (2, "updated")
    stored = await current(db, "Patient", "example")
    assert (stored.version_id, stored.content["gender"]) == (2, "female")
    assert stored.content["meta"]["versionId"] == "2"
    rows = await history_of(db, "Patient", "example")
    assert [(v, c["gender"]) for v, c in rows] == [(1, "male"), (2, "female")]


async def test_other_meta_counts_as_content(db: Database) -> None:
    await apply(db, patient())
    tagged = patient()
    tagged["meta"] = {"source": "https://fhir.joinedup.nhs.uk/feed/gp-b"}
    [change] = await apply(db, tagged)
    assert change.version_id == 2


async def test_one_resource_twice_in_a_batch_makes_two_versions(db: Database) -> None:
    first, second = patient(), patient()
    second["active"] = False
    changes = await apply(db, first, second)
    assert [(c.version_id, c.change) for c in changes] == [(1, "created"), (2, "updated")]
    rows = await history_of(db, "Patient", "example")
    assert [(v, c["active"]) for v, c in rows] == [(1, True), (2, False)]
    assert (await current(db, "Patient", "example")).version_id == 2


async def test_one_resource_twice_in_a_batch_unchanged_makes_one_version(db: Database) -> None:
    changes = await apply(db, patient(), patient())
    assert [c.version_id for c in changes] == [1]
    assert len(await history_of(db, "Patient", "example")) == 1


async def test_a_batch_of_several_resources_new_and_changed(db: Database) -> None:
    await apply(db, patient())
    changed = patient()
    changed["birthDate"] = "1974-12-26"
    encounter, condition = sample("Encounter-example.json"), sample("Condition-example.json")
    changes = await apply(db, encounter, changed, condition)
    assert [(c.resource_type, c.version_id, c.change) for c in changes] == [
        ("Encounter", 1, "created"),
        ("Patient", 2, "updated"),
        ("Condition", 1, "created"),
    ]
    assert (await current(db, "Encounter", "example")).version_id == 1


async def test_a_rolled_back_batch_leaves_no_version(db: Database) -> None:

    async def fail_before_commit() -> None:
        async with db.transaction() as session:
            await versioning.apply(session, [message(patient())])
            raise RuntimeError("the database went away before commit")

    with pytest.raises(RuntimeError):
        await fail_before_commit()
    async with db.sessions() as session:
        assert await repository.read(session, "Patient", "example") is None
    # redelivered: applied as new
    assert [c.version_id for c in await apply(db, patient())] == [1]


# --- bad data ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "topic"),
    [
        (b"not json at all", "fhir.Patient"),
        (b"\xff\xfe", "fhir.Patient"),
        (b'["a", "list"]', "fhir.Patient"),
        (b'{"resourceType": "Observation", "id": "x"}', "fhir.Patient"),  # wrong topic
        (b'{"id": "x"}', "fhir.Patient"),
        (b'{"resourceType": "Patient"}', "fhir.Patient"),  # no id
        (b'{"resourceType": "Patient", "id": ""}', "fhir.Patient"),
        (b'{"resourceType": "Patient", "id": 12}', "fhir.Patient"),
    ],
)
def test_bad_data_is_a_permanent_error(value: bytes, topic: str) -> None:
    with pytest.raises(PermanentError):
        versioning.parse(message(value, topic))


def test_a_non_json_value_is_dead_lettered_not_retried() -> None:
    """Whatever ``parse`` raises for garbage, the bus must count it as permanent."""
    with pytest.raises((PermanentError, ValueError)) as info:
        versioning.parse(message(b"not json at all", "fhir.Patient"))
    assert is_permanent(info.value)


async def test_a_bad_message_stores_nothing_of_its_batch(db: Database) -> None:
    good = message(patient())
    bad = message(b'{"resourceType": "Patient"}', "fhir.Patient")
    with pytest.raises(PermanentError):
        async with db.transaction() as session:
            await versioning.apply(session, [good, bad])
    async with db.sessions() as session:
        assert await repository.read(session, "Patient", "example") is None


# --- the identifier index ------------------------------------------------------------------------


async def find(db: Database, system: str | None, value: str) -> list[str]:
    async with db.sessions() as session:
        found = await repository.find_by_identifier(session, "Patient", system, value, 10)
    return [r.id for r in found]


async def test_identifiers_are_indexed(db: Database) -> None:
    await apply(db, patient())
    assert await find(db, NHS_NUMBER_SYSTEM, NHS_NUMBER) == ["example"]
    assert await find(db, None, NHS_NUMBER) == ["example"]
    assert await find(db, "urn:oid:1.2.36.146.595.217.0.1", "12345") == ["example"]
    assert await find(db, "urn:oid:other", "12345") == []


async def test_the_identifier_index_is_replaced_on_update(db: Database) -> None:
    await apply(db, patient())
    changed = patient()
    changed["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": "9912003888"}]
    await apply(db, changed)
    assert await find(db, NHS_NUMBER_SYSTEM, NHS_NUMBER) == []
    assert await find(db, "urn:oid:1.2.36.146.595.217.0.1", "12345") == []
    assert await find(db, NHS_NUMBER_SYSTEM, "9912003888") == ["example"]


async def test_identifiers_of_two_versions_in_one_batch_are_the_last_ones(db: Database) -> None:
    first, second = patient(), copy.deepcopy(patient())
    second["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": "9912003888"}]
    await apply(db, first, second)
    assert await find(db, NHS_NUMBER_SYSTEM, NHS_NUMBER) == []
    assert await find(db, NHS_NUMBER_SYSTEM, "9912003888") == ["example"]


def test_identifier_pairs() -> None:
    resource = {
        "identifier": [
            {"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER},
            {"value": "no-system"},
            {"system": "urn:x"},  # no value: nothing to find it by
            "junk",
        ]
    }
    assert versioning.identifier_pairs(resource) == [
        (NHS_NUMBER_SYSTEM, NHS_NUMBER),
        ("", "no-system"),
    ]
    # Encounter.identifier is a list, but some resources have a single identifier
    assert versioning.identifier_pairs({"identifier": {"system": "s", "value": "v"}}) == [
        ("s", "v")
    ]
