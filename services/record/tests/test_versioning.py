"""How messages become versions in the record (record.versioning), on SQLite (embedded mode)
and on a real PostgreSQL server (distributed mode): current version, history, no version for
unchanged content, the index kept in step, the outbox row written with the data, replays."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from sqlalchemy import delete, func, select, update

from fhir_common.bus import PermanentError
from fhir_common.bus.base import is_permanent
from fhir_common.db import Database
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from record import outbox, repository, search, versioning
from record.repository import ConcurrentUpdate
from record.tables import history, search_token
from record.tables import outbox as outbox_table


def patient(kit: Any) -> dict[str, Any]:
    resource: dict[str, Any] = kit.sample("Patient-example.json")
    resource["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": kit.NHS_NUMBER})
    return resource


async def versions_of(db: Database, resource_type: str, id_: str) -> list[tuple[int, Any]]:
    async with db.sessions() as session:
        found = await repository.instance_history(
            session, resource_type, id_, since=None, before_version=None, limit=100
        )
    return sorted((v.version_id, orjson.loads(v.raw)) for v in found)


async def current(db: Database, resource_type: str, id_: str) -> repository.StoredResource:
    async with db.sessions() as session:
        found = await repository.read(session, resource_type, id_)
    assert found is not None
    return found


async def find(db: Database, resource_type: str, *params: tuple[str, str]) -> list[str]:
    parsed = search.parse_search(
        resource_type, list(params), handling="strict", limits=search.Limits(100, 1000)
    )
    async with db.sessions() as session:
        return [r.id for r in await session.execute(search.page_query(parsed))]


# --- versions ------------------------------------------------------------------------------------


async def test_the_first_message_creates_version_1(db: Database, kit: Any) -> None:
    changes = await kit.store(db, patient(kit))
    assert [c.to_json() for c in changes] == [
        {
            "resourceType": "Patient",
            "id": "example",
            "versionId": "1",
            "patient": kit.NHS_NUMBER,
            "change": "created",
        }
    ]
    assert changes[0].cause["source"] == "gp-a"
    stored = await current(db, "Patient", "example")
    assert stored.version_id == 1
    assert stored.patient_key == kit.NHS_NUMBER
    assert (stored.source, stored.setting) == ("gp-a", "primary")
    assert stored.content["meta"]["versionId"] == "1"
    assert stored.content["meta"]["lastUpdated"].endswith("Z")
    assert stored.content["name"] == patient(kit)["name"]
    assert [v for v, _ in await versions_of(db, "Patient", "example")] == [1]
    async with db.sessions() as session:  # the current version is stored once
        assert (await session.execute(select(func.count()).select_from(history))).scalar() == 0


async def test_the_same_content_again_creates_nothing(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    resent = patient(kit)
    # what a consumer might be sent back: our own meta elements, with other values
    resent["meta"] = {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z"}
    assert await kit.store(db, resent) == []
    assert await kit.store(db, patient(kit)) == []
    reordered = dict(reversed(list(patient(kit).items())))  # same content, keys in another order
    assert await kit.store(db, reordered) == []
    assert (await current(db, "Patient", "example")).version_id == 1
    assert len(await versions_of(db, "Patient", "example")) == 1


async def test_changed_content_creates_version_2(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    changed = patient(kit)
    changed["gender"] = "female"
    [change] = await kit.store(db, changed)
    assert (change.version_id, change.change) == (2, "updated")
    stored = await current(db, "Patient", "example")
    assert (stored.version_id, stored.content["gender"]) == (2, "female")
    assert stored.content["meta"]["versionId"] == "2"
    rows = await versions_of(db, "Patient", "example")
    assert [(v, c["gender"]) for v, c in rows] == [(1, "male"), (2, "female")]
    assert [c["meta"]["versionId"] for _, c in rows] == ["1", "2"]


async def test_other_meta_counts_as_content(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    tagged = patient(kit)
    tagged["meta"] = {"source": "https://fhir.joinedup.nhs.uk/feed/gp-b"}
    [change] = await kit.store(db, tagged)
    assert change.version_id == 2


async def test_one_resource_twice_in_a_batch_makes_two_versions(db: Database, kit: Any) -> None:
    first, second = patient(kit), patient(kit)
    second["active"] = False
    changes = await kit.store(db, first, second)
    assert [(c.version_id, c.change) for c in changes] == [(1, "created"), (2, "updated")]
    rows = await versions_of(db, "Patient", "example")
    assert [(v, c["active"]) for v, c in rows] == [(1, True), (2, False)]
    assert (await current(db, "Patient", "example")).version_id == 2


async def test_one_resource_twice_in_a_batch_unchanged_makes_one_version(
    db: Database, kit: Any
) -> None:
    changes = await kit.store(db, patient(kit), patient(kit))
    assert [c.version_id for c in changes] == [1]
    assert len(await versions_of(db, "Patient", "example")) == 1


async def test_a_batch_of_several_resources_new_and_changed(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    changed = patient(kit)
    changed["birthDate"] = "1974-12-26"
    encounter, condition = (
        kit.sample("Encounter-example.json"),
        kit.sample("Condition-example.json"),
    )
    changes = await kit.store(db, encounter, changed, condition)
    assert [(c.resource_type, c.version_id, c.change) for c in changes] == [
        ("Encounter", 1, "created"),
        ("Patient", 2, "updated"),
        ("Condition", 1, "created"),
    ]
    assert (await current(db, "Encounter", "example")).version_id == 1


async def test_a_rolled_back_batch_leaves_no_version(db: Database, kit: Any) -> None:
    async def fail_before_commit() -> None:
        async with db.transaction() as session:
            await versioning.apply(session, [kit.message(patient(kit))])
            raise RuntimeError("the database went away before commit")

    with pytest.raises(RuntimeError):
        await fail_before_commit()
    async with db.sessions() as session:
        assert await repository.read(session, "Patient", "example") is None
        count = select(func.count()).select_from(outbox_table)
        assert (await session.execute(count)).scalar() == 0
    # redelivered: applied as new
    assert [c.version_id for c in await kit.store(db, patient(kit))] == [1]


async def test_a_concurrent_writer_makes_the_batch_retry(db: Database, kit: Any) -> None:
    """Two writers read version 1; the second to write finds it gone and fails transiently."""
    await kit.store(db, patient(kit))
    first, second = patient(kit), patient(kit)
    first["gender"], second["gender"] = "female", "other"
    async with db.transaction() as session:
        states = await repository.current_states(session, [("Patient", "example")])
    assert states[("Patient", "example")].version_id == 1
    await kit.store(db, first)  # now at version 2
    stale = repository.CurrentRow(
        "Patient",
        "example",
        2,
        datetime.now(UTC),
        kit.NHS_NUMBER,
        "gp-a",
        "primary",
        b"x" * 16,
        orjson.dumps(second).decode(),
        expected_version=1,  # what this writer read; it is at 2 now
    )
    with pytest.raises(ConcurrentUpdate):
        async with db.transaction() as session:
            await repository.write(session, repository.WriteBatch(updates=[stale]))
    assert not is_permanent(ConcurrentUpdate("retry me"))  # the bus retries the batch


# --- the outbox ----------------------------------------------------------------------------------


async def test_changes_are_written_to_the_outbox_with_the_data(db: Database, kit: Any) -> None:
    applied = await kit.apply(db, kit.message(patient(kit)))
    assert applied.outbox_id is not None
    async with db.sessions() as session:
        blob = (
            await session.execute(
                select(outbox_table.c.messages).where(outbox_table.c.id == applied.outbox_id)
            )
        ).scalar_one()
    kept = outbox.deserialise(blob)
    assert [(m.topic, m.key, m.value) for m in kept] == [
        (m.topic, m.key, m.value) for m in applied.messages
    ]
    assert kept[0].headers == applied.messages[0].headers  # event-id and all: a resend is the same
    assert orjson.loads(kept[0].value)["versionId"] == "1"
    nothing = await kit.apply(db, kit.message(patient(kit)))
    assert (nothing.changes, nothing.outbox_id) == ([], None)


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
        (b'{"resourceType": "Patient", "id": "' + b"x" * 65 + b'"}', "fhir.Patient"),
        (b'{"resourceType": "Patient", "id": "x"}', "not-fhir"),
    ],
)
def test_bad_data_is_a_permanent_error(value: bytes, topic: str, kit: Any) -> None:
    with pytest.raises(PermanentError) as info:
        versioning.parse(kit.message(value, topic))
    assert is_permanent(info.value)


def test_topics_with_a_prefix_are_read_too(kit: Any) -> None:
    found = versioning.parse(kit.message(b'{"resourceType":"Patient","id":"x"}', "b1.fhir.Patient"))
    assert found["id"] == "x"


async def test_a_bad_message_stores_nothing_of_its_batch(db: Database, kit: Any) -> None:
    good = kit.message(patient(kit))
    bad = kit.message(b'{"resourceType": "Patient"}', "fhir.Patient")
    with pytest.raises(PermanentError):
        async with db.transaction() as session:
            await versioning.apply(session, [good, bad])
    async with db.sessions() as session:
        assert await repository.read(session, "Patient", "example") is None


# --- the index follows the versions --------------------------------------------------------------


async def test_identifiers_are_indexed(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    nhs = f"{NHS_NUMBER_SYSTEM}|{kit.NHS_NUMBER}"
    assert await find(db, "Patient", ("identifier", nhs)) == ["example"]
    assert await find(db, "Patient", ("identifier", kit.NHS_NUMBER)) == ["example"]
    mrn = "urn:oid:1.2.36.146.595.217.0.1|12345"
    assert await find(db, "Patient", ("identifier", mrn)) == ["example"]
    assert await find(db, "Patient", ("identifier", "urn:oid:other|12345")) == []


async def test_the_index_is_replaced_on_update(db: Database, kit: Any) -> None:
    await kit.store(db, patient(kit))
    changed = patient(kit)
    changed["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": kit.OTHER_NHS_NUMBER}]
    changed["name"] = [{"family": "Windsor", "given": ["Charles"]}]
    await kit.store(db, changed)
    assert await find(db, "Patient", ("identifier", kit.NHS_NUMBER)) == []
    assert await find(db, "Patient", ("identifier", "12345")) == []
    assert await find(db, "Patient", ("identifier", kit.OTHER_NHS_NUMBER)) == ["example"]
    assert await find(db, "Patient", ("family", "chalmers")) == []
    assert await find(db, "Patient", ("family", "wind")) == ["example"]
    assert await find(db, "Patient", ("gender", "male")) == ["example"]  # unchanged, still there
    async with db.sessions() as session:  # no row left behind, none twice
        rows = (
            await session.execute(
                select(search_token.c.param, search_token.c.code).where(
                    search_token.c.id == "example"
                )
            )
        ).all()
    assert sorted(rows) == [
        ("active", "true"),
        ("gender", "male"),
        ("identifier", kit.OTHER_NHS_NUMBER),
    ]


async def test_identifiers_of_two_versions_in_one_batch_are_the_last_ones(
    db: Database, kit: Any
) -> None:
    first, second = patient(kit), copy.deepcopy(patient(kit))
    second["identifier"] = [{"system": NHS_NUMBER_SYSTEM, "value": kit.OTHER_NHS_NUMBER}]
    await kit.store(db, first, second)
    assert await find(db, "Patient", ("identifier", kit.NHS_NUMBER)) == []
    assert await find(db, "Patient", ("identifier", kit.OTHER_NHS_NUMBER)) == ["example"]


async def test_reindexing_rebuilds_the_index_and_hashes(db: Database, kit: Any) -> None:
    from record.reindex import INDEX_VERSION, ensure_index, index_version
    from record.tables import index_state, resources

    await kit.store(db, patient(kit))
    async with db.transaction() as session:  # as 0002 leaves a database of 0001
        await session.execute(delete(search_token))
        await session.execute(update(resources).values(content_hash=None))
        await session.execute(update(index_state).values(version=0))
    assert await find(db, "Patient", ("identifier", kit.NHS_NUMBER)) == []
    assert await kit.store(db, patient(kit)) == []  # still no new version without a hash
    assert await ensure_index(db) == 1
    assert await index_version(db) == INDEX_VERSION
    assert await find(db, "Patient", ("identifier", kit.NHS_NUMBER)) == ["example"]
    assert await ensure_index(db) == 0
    assert await kit.store(db, patient(kit)) == []


# --- a batch delivered again after a crash -------------------------------------------------------


def placed(kit: Any, resource: dict[str, Any], offset: int) -> Any:
    return replace(kit.message(resource), partition=3, offset=offset)


async def test_a_replayed_batch_changes_nothing(db: Database, kit: Any) -> None:
    """Stored, committed, and then the offsets were not: the same messages come again. The
    older Encounter content among them must not become a version on top of the newer one."""
    arrived = kit.sample("Encounter-example.json")
    discharged = dict(arrived, status="finished")
    log = [placed(kit, arrived, 10), placed(kit, arrived, 11), placed(kit, discharged, 12)]

    async def deliver(*messages: Any) -> list[versioning.Change]:
        async with db.transaction() as session:
            applied = await versioning.apply(session, list(messages), positions=True)
        return applied.changes

    assert [c.version_id for c in await deliver(*log)] == [1, 2]
    assert await deliver(*log) == []  # the crash replay: nothing, in any order of arrival
    assert await deliver(log[0]) == []
    assert (await current(db, "Encounter", "example")).content["status"] == "finished"
    newer = placed(kit, dict(arrived, status="cancelled"), 13)
    assert [c.version_id for c in await deliver(*log, newer)] == [3]  # only what is new


async def test_without_positions_the_content_decides(db: Database, kit: Any) -> None:
    """Embedded mode: the in-process log restarts with the process, its offsets mean nothing."""
    arrived = kit.sample("Encounter-example.json")
    async with db.transaction() as session:
        await versioning.apply(session, [placed(kit, arrived, 10)], positions=True)
    async with db.transaction() as session:
        again = await versioning.apply(session, [placed(kit, arrived, 0)], positions=False)
        changed = await versioning.apply(
            session, [placed(kit, dict(arrived, status="finished"), 0)], positions=False
        )
    assert again.changes == []
    assert [c.version_id for c in changed.changes] == [2]


@pytest.mark.integration
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # needs the real log anyway
async def test_positions_beyond_the_log_are_forgotten(
    db: Database, kit: Any, kafka_bootstrap: str
) -> None:
    import uuid

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from fhir_common.db import upsert
    from record.positions import forget_positions_beyond_the_log
    from record.tables import consumer_positions

    topic = f"rt-{uuid.uuid4().hex[:8]}.fhir.Patient"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 1, 1)])
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send_and_wait(topic, b"{}", partition=0)
        async with db.transaction() as session:
            rows = [
                {"topic": topic, "partition": 0, "offset": 2},  # the last one: kept
                {"topic": "rt-gone.fhir.Patient", "partition": 0, "offset": 5},
            ]
            await upsert(session, consumer_positions, rows, ["topic", "partition"])
        assert await forget_positions_beyond_the_log(db, kafka_bootstrap) == 1
        async with db.transaction() as session:
            await session.execute(consumer_positions.update().values(offset=7))
        assert await forget_positions_beyond_the_log(db, kafka_bootstrap) == 1  # recreated
    finally:
        await producer.stop()
        await admin.delete_topics([topic])
        await admin.close()
