"""The record end to end.

Embedded mode: HL7 v2 through ingest-acute and a FHIR bundle through ingest-gp, about one person
seen by a hospital (first without an NHS number, then merged) and a GP practice, come out of the
record as one person.

Distributed mode (integration): ``joinedup serve record`` as a process of its own on real Kafka
and PostgreSQL.

* Killed with SIGKILL in the middle of consuming, then restarted: every resource is stored once,
  at the right version, its index rows once; every change reaches ``record.changes`` (a change
  published twice is the same message, recognisable by resourceType, id and versionId).
* A malformed message goes to ``deadletter`` and the consumer goes on.
* Reads without a token, or without the scope, get 401 and 403 OperationOutcomes.

The deployment reads and writes topics of its own (``JOINEDUP_RECORD_TOPIC_PATTERN``,
``JOINEDUP_RECORD_CHANGES_TOPIC``) and its own consumer groups, so that other runs on the same
broker neither see its traffic nor take its partitions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import make_url

from fhir_common.auth import LocalSigner
from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, nhs_check_digit
from fhir_common.net import free_port
from fhir_common.settings import Settings
from joinedup.embedded import create_embedded_app
from joinedup.tokens import feed_token, user_token

ISSUER = AUDIENCE = "joinedup-test"
TYPES = ("Patient", "Encounter", "Observation", "Condition")


@dataclass
class Deployment:
    prefix: str
    database_url: str
    kafka: str
    signer: LocalSigner
    env: dict[str, str]
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    url: str = ""
    starts: int = 0

    def token(self, scopes: list[str]) -> str:
        return self.signer.mint(subject="tester", scopes=scopes, issuer=ISSUER, audience=AUDIENCE)

    @property
    def changes_topic(self) -> str:
        return f"{self.prefix}.record.changes"

    def topic(self, resource_type: str) -> str:
        return f"{self.prefix}.fhir.{resource_type}"

    def start(self) -> None:
        port = free_port()
        self.starts += 1
        log = (self.directory / f"record-{self.starts}.log").open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "joinedup", "serve", "record", "--port", str(port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        log_text = (self.directory / f"record-{self.starts}.log").read_text()[-4000:]
        pytest.fail(f"the record did not start: {log_text}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=20)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()


@pytest.fixture
def deployment(
    tmp_path: Path, fresh_database_url: str, kafka_bootstrap: str
) -> Iterator[Deployment]:
    prefix = f"re-{uuid.uuid4().hex[:8]}"
    signer = LocalSigner.load_or_create(tmp_path / "issuer" / "key.pem")
    public_key = tmp_path / "public.pem"
    public_key.write_text(signer.public_key_pem())
    env = {
        **os.environ,
        "JOINEDUP_MODE": "distributed",
        "JOINEDUP_DATABASE_URL": fresh_database_url,
        "JOINEDUP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(public_key),
        "JOINEDUP_AUTH_ISSUER": ISSUER,
        "JOINEDUP_AUTH_AUDIENCE": AUDIENCE,
        "JOINEDUP_DATA_DIR": str(tmp_path),
        "JOINEDUP_KAFKA_GROUP_PREFIX": f"{prefix}.",
        "JOINEDUP_RECORD_TOPIC_PATTERN": rf"^{prefix}\.fhir\.[A-Za-z]+$",
        "JOINEDUP_RECORD_CHANGES_TOPIC": f"{prefix}.record.changes",
        "JOINEDUP_RECORD_CONSUMER_BATCH": "250",  # many batches: a kill lands inside one
        "JOINEDUP_RECORD_OUTBOX_GRACE_SECONDS": "2",
        "JOINEDUP_RECORD_OUTBOX_POLL_SECONDS": "0.5",
        "JOINEDUP_LOG_LEVEL": "WARNING",
    }
    found = Deployment(prefix, fresh_database_url, kafka_bootstrap, signer, env, tmp_path)
    asyncio.run(_create_topics(kafka_bootstrap, [found.topic(t) for t in TYPES]))
    try:
        yield found
    finally:
        found.stop()
        asyncio.run(_delete_topics(kafka_bootstrap, prefix))


async def _create_topics(kafka: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 6, 1) for t in topics])
    finally:
        await admin.close()


async def _delete_topics(kafka: str, prefix: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if mine:
            await admin.delete_topics(mine)
    except Exception:
        pass  # best effort
    finally:
        await admin.close()


def _nhs_numbers(count: int) -> list[str]:
    found = []
    n = 700_000
    while len(found) < count:
        first_nine = f"999{n:06d}"
        n += 1
        check = nhs_check_digit(first_nine)
        if check is not None:
            found.append(f"{first_nine}{check}")
    return found


def _workload(patients: int) -> tuple[list[tuple[str, str, dict[str, Any]]], dict[str, int]]:
    """Each patient: a Patient, 2 Encounters, 6 Observations, a Condition; every third
    patient's Encounter is sent again changed (version 2) and its Observations sent again
    unchanged (no new version). Returns (type, key, resource) and the expected versions."""
    sent: list[tuple[str, str, dict[str, Any]]] = []
    versions: dict[str, int] = {}
    for n, nhs in enumerate(_nhs_numbers(patients)):
        pid = f"p{n}"

        def add(resource: dict[str, Any], version: int = 1, key: str = nhs) -> None:
            sent.append((resource["resourceType"], key, resource))
            versions[f"{resource['resourceType']}/{resource['id']}"] = version

        add(
            {
                "resourceType": "Patient",
                "id": pid,
                "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
                "name": [{"family": f"Family{n}", "given": ["Test"]}],
            }
        )
        encounters = [
            {
                "resourceType": "Encounter",
                "id": f"{pid}-e{e}",
                "status": "in-progress",
                "class": {"code": "EMER"},
                "subject": {"reference": f"Patient/{pid}"},
                "period": {"start": f"2024-0{e + 1}-01"},
            }
            for e in range(2)
        ]
        for encounter in encounters:
            add(encounter)
        observations = [
            {
                "resourceType": "Observation",
                "id": f"{pid}-o{o}",
                "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "4548-4"}]},
                "valueQuantity": {"value": 5 + o, "unit": "%"},
            }
            for o in range(6)
        ]
        for observation in observations:
            add(observation)
        add(
            {
                "resourceType": "Condition",
                "id": f"{pid}-c",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
            }
        )
        if n % 3 == 0:
            finished = dict(encounters[0], status="finished")  # discharged: version 2
            add(finished, version=2)
            for observation in observations:  # resent as they were: nothing new
                sent.append(("Observation", nhs, observation))
    return sent, versions


async def _publish(deployment: Deployment, sent: list[tuple[str, str, dict[str, Any]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=deployment.kafka, acks="all", linger_ms=10)
    await producer.start()
    try:
        futures = [
            await producer.send(
                deployment.topic(resource_type),
                orjson.dumps(resource),
                key=key.encode(),
                headers=[("source", b"e2e-gp"), ("setting", b"primary")],
            )
            for resource_type, key, resource in sent
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def _count(connection: asyncpg.Connection, sql: str) -> int:
    value = await connection.fetchval(sql)
    return int(value or 0)


async def _until(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s: {what}")


async def _read_topic(kafka: str, topic: str) -> list[Any]:
    """Everything on ``topic`` now (read committed): every partition read from its start to the
    end offset it has at the time of the call (no consumer group, nothing to wait for)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka,
        group_id=None,  # no group: every partition is ours at once
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[Any] = []
    try:
        deadline = time.monotonic() + 60
        while not consumer.assignment():
            if time.monotonic() > deadline:
                raise AssertionError(f"no partitions of {topic}")
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end")
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


@pytest.fixture
async def db(deployment: Deployment) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(_dsn(deployment.database_url))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.mark.integration
async def test_a_killed_record_loses_nothing_and_duplicates_nothing(
    deployment: Deployment, db: asyncpg.Connection
) -> None:
    sent, versions = _workload(patients=600)
    await _publish(deployment, sent)
    distinct = len(versions)
    deployment.start()

    async def partly() -> bool:
        return await _count(db, "SELECT count(*) FROM record.resources") >= distinct // 5

    await _until(partly, 120, "the record to store a fifth of the resources")
    deployment.kill()  # SIGKILL: no graceful anything, mid-batch
    stored_at_kill = await _count(db, "SELECT count(*) FROM record.resources")
    assert stored_at_kill < distinct, "everything was stored before the kill: nothing tested"

    deployment.start()

    async def everything_stored_and_announced() -> bool:
        stored = await _count(db, "SELECT count(*) FROM record.resources")
        waiting = await _count(db, "SELECT count(*) FROM record.outbox")
        return stored == distinct and waiting == 0

    await _until(everything_stored_and_announced, 180, "every resource stored and announced")

    # the store: each resource once, at the version expected, with the history it needs
    rows = await db.fetch("SELECT resource_type, id, version_id FROM record.resources")
    assert {f"{r['resource_type']}/{r['id']}": r["version_id"] for r in rows} == versions
    updated = sum(1 for v in versions.values() if v == 2)
    assert await _count(db, "SELECT count(*) FROM record.resource_history") == updated
    for table in ("search_token", "search_reference", "search_date", "search_quantity"):
        twice = await _count(db, f"SELECT count(*) - count(DISTINCT (t.*)) FROM record.{table} t")
        assert twice == 0, f"index rows stored twice in {table}"
    statuses = await db.fetch(
        "SELECT code, count(*) AS n FROM record.search_token "
        "WHERE resource_type = 'Encounter' AND param = 'status' GROUP BY code"
    )
    assert {r["code"]: r["n"] for r in statuses} == {
        "finished": updated,
        "in-progress": 2 * 600 - updated,
    }

    # record.changes: every version announced; a repeat is the very same message. The killed
    # process may have left a Kafka transaction open: read-committed consumers see the
    # partitions it touched only once the broker aborts it (transaction.timeout.ms, 60 s).
    expected = {
        (name.split("/")[0], name.split("/")[1], str(v))
        for name, latest in versions.items()
        for v in range(1, latest + 1)
    }
    deadline = time.monotonic() + 150
    while True:
        changes = await _read_topic(deployment.kafka, deployment.changes_topic)
        by_version: dict[tuple[str, str, str], set[bytes]] = defaultdict(set)
        event_ids: dict[tuple[str, str, str], set[bytes]] = defaultdict(set)
        for record in changes:
            value = orjson.loads(record.value)
            key = (value["resourceType"], value["id"], value["versionId"])
            by_version[key].add(record.value)
            event_ids[key].add(dict(record.headers)["event-id"])
        if set(by_version) >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(2)
    assert set(by_version) == expected  # nothing lost, nothing extra
    assert all(len(values) == 1 for values in by_version.values())
    assert all(len(ids) == 1 for ids in event_ids.values())  # duplicates are recognisable
    repeated = len(changes) - len(expected)
    print(f"record.changes: {len(changes)} messages, {repeated} repeats after the kill")


@pytest.mark.integration
async def test_bad_messages_are_dead_lettered_and_consumption_goes_on(
    deployment: Deployment, db: asyncpg.Connection, read_topics: Any
) -> None:
    deployment.start()
    marker = uuid.uuid4().hex
    bad = [
        (deployment.topic("Patient"), f"not json {marker}".encode()),
        (deployment.topic("Patient"), orjson.dumps({"resourceType": "Observation", "id": marker})),
        (
            deployment.topic("Encounter"),
            orjson.dumps({"resourceType": "Encounter", "note": marker}),
        ),
    ]
    good = {
        "resourceType": "Patient",
        "id": f"good-{marker}",
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}],
    }
    producer = AIOKafkaProducer(bootstrap_servers=deployment.kafka, acks="all")
    await producer.start()
    try:
        for topic, value in bad:
            await producer.send_and_wait(topic, value, key=b"9434765919")
        await producer.send_and_wait(
            deployment.topic("Patient"), orjson.dumps(good), key=b"9434765919"
        )
    finally:
        await producer.stop()

    async def stored() -> bool:
        sql = f"SELECT count(*) FROM record.resources WHERE id = 'good-{marker}'"
        return await _count(db, sql) == 1

    await _until(stored, 60, "the good message after the bad ones")
    # The Encounter topic is consumed independently of the Patient topic, so the good Patient
    # being stored says nothing about when the bad Encounter reaches the dead-letter topic:
    # wait for all of them (and a moment more, to see that nothing else is dead-lettered).
    dead = await read_topics(
        deployment.kafka, [DEADLETTER], lambda r: marker.encode() in r.value, len(bad), settle=1.0
    )
    assert sorted(r.value for r in dead) == sorted(value for _, value in bad)
    for record in dead:
        headers = dict(record.headers)
        assert headers["service"] == b"record"
        assert headers["origin"].startswith(f"{deployment.prefix}.fhir.".encode())
        assert headers["error"]


@pytest.mark.integration
async def test_unauthorised_reads_are_refused_with_operation_outcomes(
    deployment: Deployment,
) -> None:
    deployment.start()
    async with httpx.AsyncClient(base_url=deployment.url, timeout=10) as client:
        for path in ("/fhir/Patient/x", "/fhir/Patient?family=x", "/summary/x"):
            anonymous = await client.get(path)
            assert anonymous.status_code == 401, path
            assert anonymous.json()["resourceType"] == "OperationOutcome"
            assert anonymous.headers["content-type"].startswith("application/fhir+json")
            wrong = await client.get(
                path,
                headers={"Authorization": f"Bearer {deployment.token(['user/Observation.rs'])}"},
            )
            assert wrong.status_code == 403, path
            assert wrong.json()["issue"][0]["code"] == "forbidden"
        allowed = await client.get(
            "/fhir/Patient/x",
            headers={"Authorization": f"Bearer {deployment.token(['user/*.rs'])}"},
        )
        assert allowed.status_code == 404
        assert allowed.json()["resourceType"] == "OperationOutcome"


# --- embedded: one person from a hospital's HL7 v2 and a GP practice's FHIR ---------------------

ACUTE = Feed(id="rcb-adt", kind=FeedKind.HL7V2, ods="RCB", setting="acute", sender="RCB")
GP = Feed(id="gp-malton", kind=FeedKind.FHIR, ods="B82005", setting="primary")


def adt(trigger: str, at: str, mrn: str, nhs: str, visit: str) -> bytes:
    """An ED attendance (PV1-2 E) in the shape English PAS systems send."""
    identifiers = f"{nhs}^^^NHS^NH~{mrn}^^^RCB^MR" if nhs else f"{mrn}^^^RCB^MR"
    return (
        f"MSH|^~\\&|PAS|RCB|||{at}||ADT^{trigger}|{trigger}-{mrn}-{at}|P|2.4\r"
        f"EVN|{trigger}|{at}\r"
        f"PID|1||{identifiers}||SMITH^ANN||19500101|F\r"
        f"PV1|1|E|AE^MAJORS^CUBE3^RCB|21||||||||||||||{visit}^^^VISITID" + "|" * 24 + f"|{at}\r"
    ).encode()


def merge(at: str, nhs: str, survivor: str, retired: str) -> bytes:
    return (
        f"MSH|^~\\&|PAS|RCB|||{at}||ADT^A40^ADT_A39|A40-{at}|P|2.4\r"
        f"EVN|A40|{at}\r"
        f"PID|1||{nhs}^^^NHS^NH~{survivor}^^^RCB^MR||SMITH^ANN||19500101|F\r"
        f"MRG|{retired}^^^RCB^MR\r"
    ).encode()


async def test_a_hospital_and_a_gp_practice_make_one_person(
    tmp_path: Path, nhs_number: str, bundles: Any
) -> None:
    registry = FeedRegistry(Settings(data_dir=tmp_path).resolved_feeds_file())
    registry.add(ACUTE)
    registry.add(GP)
    app = create_embedded_app(tmp_path, overrides={"mllp_port": 0, "mllp_host": "127.0.0.1"})
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        bus: InProcessBus = app.state.bus
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            reader = {"Authorization": f"Bearer {user_token(tmp_path)}"}

            async def hl7(message: bytes) -> None:
                token = feed_token(tmp_path, ACUTE)
                response = await client.post(
                    "/ingest-acute/hl7v2",
                    content=message,
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "x-application/hl7-v2+er7",
                    },
                )
                assert "MSA|AA" in response.text, response.text
                async with asyncio.timeout(20):
                    await bus.wait_idle()

            async def everything(pid: str) -> list[str]:
                response = await client.get(
                    f"/record/fhir/Patient/{pid}/$everything", headers=reader
                )
                assert response.status_code == 200, response.text
                return sorted(
                    e["resource"]["resourceType"]
                    for e in response.json()["entry"]
                    if e["search"]["mode"] == "match"
                )

            # the GP practice's record, with the NHS number
            token = feed_token(tmp_path, GP)
            pushed = await client.post(
                "/ingest-gp/fhir",
                content=orjson.dumps(bundles.skeleton(nhs_number)),
                headers={
                    "Authorization": f"Bearer {token}",
                    "Content-Type": "application/fhir+json",
                },
            )
            assert pushed.status_code == 200, pushed.text
            gp_patient = pushed.json()["entry"][0]["response"]["location"].split("/")[1]
            # the hospital: an ED attendance registered without the NHS number (R100) ...
            await hl7(adt("A04", "202401010900", "R100", "", "V1"))
            assert await everything(gp_patient) == ["Condition", "Encounter", "Patient"]
            # ... then the patient's main record, with it (R200), and the merge of R100 into it
            await hl7(adt("A04", "202402010900", "R200", nhs_number, "V2"))
            await hl7(merge("202402020900", nhs_number, "R200", "R100"))
            assert await everything(gp_patient) == [
                "Condition",
                "Encounter",
                "Encounter",
                "Encounter",
                "Patient",
                "Patient",
                "Patient",
            ]
            summary = (await client.get(f"/record/summary/{gp_patient}", headers=reader)).json()
            assert summary["person"]["nhsNumber"] == nhs_number
            assert summary["person"]["providers"] == ["gp-malton", "rcb-adt"]
            retired = [r for r in summary["records"] if r.get("replacedBy")]
            assert len(retired) == 1
            assert retired[0]["active"] is False
            assert summary["encounters"]["emergency"]["total"] == 2
            assert summary["encounters"]["gp"]["total"] == 1
