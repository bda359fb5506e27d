"""ingest-acute end to end.

Embedded mode: HL7 v2 over MLLP (python-hl7's client, a real socket) and over HTTP reaches the
record's FHIR API; a resend changes nothing; bad input is refused and kept.

Distributed mode (integration): ``joinedup serve ingest-acute`` as its own process on the real
Kafka broker and PostgreSQL; messages become keyed, ordered FHIR records on Kafka, a resend is
answered alike and not published again (also after a restart), refusals reach the dead-letter
topic.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from hl7.mllp import open_hl7_connection

from fhir_common.auth import LocalSigner
from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER, RECORD_CHANGES, Message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from fhir_common.net import free_ports
from fhir_common.settings import Settings
from joinedup.embedded import create_embedded_app
from joinedup.tokens import feed_token, user_token

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
NHS_ADT = SAMPLES / "nhs-england-itk-hl7v2-adt"
ADMISSION = (
    NHS_ADT / "PatientEncounterManagement" / "Inpatient Admission ADT-A01" / "A01_example.txt"
)
DISCHARGE = NHS_ADT / "PatientEncounterManagement" / "Discharge Patient ADT-A03" / "A03_example.txt"
CONVERTER_A01 = SAMPLES / "fhir-converter-hl7v2" / "input" / "ADT-A01-01.hl7"
SAMPLE_NHS_NUMBER = b"3333333333"
VT, FS, CR = b"\x0b", b"\x1c", b"\r"


def for_patient(path: Path, nhs_number: str, visit: str | None = None) -> bytes:
    """A sample about a patient of this test run (its NHS number, and its own visit)."""
    data = path.read_bytes().replace(SAMPLE_NHS_NUMBER, nhs_number.encode())
    if visit:
        for old in (b"2139^^^VISITID", b"YOR123456^^^YR_VISIT"):
            data = data.replace(old, f"{visit}^^^VISITID".encode())
    return data


async def mllp_send(port: int, *messages: bytes) -> list[str]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        acks = []
        for message in messages:
            writer.writeblock(message)
            await writer.drain()
            async with asyncio.timeout(30):
                acks.append((await reader.readblock()).decode())
        return acks
    finally:
        writer.close()


def ack_code(ack: str) -> str:
    return next(s for s in ack.split("\r") if s.startswith("MSA")).split("|")[1]


# ----------------------------------------------------------------------------- embedded


ACUTE_FEED = Feed(id="rcb-adt", kind=FeedKind.HL7V2, ods="RCB", setting="acute", sender="RCB")
GHH_FEED = Feed(
    id="ghh-adt", kind=FeedKind.HL7V2, ods="RGH01", setting="acute", sender="GHHSFacility"
)


@dataclass
class Embedded:
    client: httpx.AsyncClient
    bus: InProcessBus
    port: int
    data_dir: Path
    changes: list[Message]
    dead: list[Message]

    @property
    def reader(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {user_token(self.data_dir)}"}

    async def idle(self) -> None:
        async with asyncio.timeout(20):
            await self.bus.wait_idle()

    async def read(self, path: str) -> Any:
        response = await self.client.get(f"/record/fhir/{path}", headers=self.reader)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
async def embedded(tmp_path: Path) -> AsyncIterator[Embedded]:
    registry = FeedRegistry(Settings(data_dir=tmp_path).resolved_feeds_file())
    registry.add(ACUTE_FEED)
    registry.add(GHH_FEED)
    app = create_embedded_app(tmp_path, overrides={"mllp_port": 0, "mllp_host": "127.0.0.1"})
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        bus: InProcessBus = app.state.bus
        changes: list[Message] = []
        dead: list[Message] = []

        def collect(into: list[Message]) -> Any:
            async def handler(messages: Sequence[Message]) -> None:
                into.extend(messages)

            return handler

        bus.subscribe("t-changes", collect(changes), service="t", topics=[RECORD_CHANGES])
        bus.subscribe("t-dead", collect(dead), service="t", topics=[DEADLETTER])
        port = app.state.services["ingest-acute"].state.acute.mllp_port
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Embedded(client, bus, port, tmp_path, changes, dead)


async def test_an_admission_over_mllp_reaches_the_record(
    embedded: Embedded, nhs_number: str
) -> None:
    (ack,) = await mllp_send(embedded.port, for_patient(ADMISSION, nhs_number))
    assert ack_code(ack) == "AA"
    await embedded.idle()
    found = await embedded.read(f"Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs_number}")
    (entry,) = found["entry"]
    patient = entry["resource"]
    assert patient["meta"]["source"].endswith("/rcb-adt")
    everything = await embedded.read(f"Patient/{patient['id']}/$everything")
    by_type = {e["resource"]["resourceType"]: e["resource"] for e in everything["entry"]}
    assert set(by_type) == {"Patient", "Encounter", "Condition", "AllergyIntolerance"}
    encounter = by_type["Encounter"]
    assert (encounter["class"]["code"], encounter["status"]) == ("IMP", "in-progress")
    assert encounter["reasonCode"][0]["coding"][0]["code"] == "N39.3"
    assert {c.key for c in embedded.changes} == {nhs_number}

    # the discharge updates the same encounter; sent twice, it changes the record once
    discharge = for_patient(DISCHARGE, nhs_number, visit="2139")
    first, again = await mllp_send(embedded.port, discharge, discharge)
    assert (ack_code(first), ack_code(again)) == ("AA", "AA")
    await embedded.idle()
    encounter = await embedded.read(f"Encounter/{encounter['id']}")
    assert encounter["status"] == "finished"
    assert encounter["meta"]["versionId"] == "2"


async def test_hl7v2_over_http_reaches_the_record(embedded: Embedded) -> None:
    token = feed_token(embedded.data_dir, GHH_FEED)
    response = await embedded.client.post(
        "/ingest-acute/hl7v2",
        content=CONVERTER_A01.read_bytes(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "x-application/hl7-v2+er7"},
    )
    assert response.status_code == 200
    assert "MSA|AA|MSG00001" in response.text
    await embedded.idle()
    found = await embedded.read(
        "Patient?identifier=https://fhir.joinedup.nhs.uk/Id/RGH01/mrn|PATID1234"
    )
    (entry,) = found["entry"]
    assert entry["resource"]["birthDate"] == "1988-08-18"


async def test_bad_input_is_refused_kept_and_reaches_nothing(embedded: Embedded) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", embedded.port)
    writer.write(VT + b"\x00\x01binary garbage" + FS + CR)
    await writer.drain()
    answer = (await reader.readuntil(FS + CR)).decode()
    writer.close()
    assert ack_code(answer.strip("\x0b\x1c\r")) == "AR"
    await embedded.idle()
    assert [m.value for m in embedded.dead] == [b"\x00\x01binary garbage"]
    assert embedded.changes == []


# ----------------------------------------------------------------------------- distributed

ISSUER = AUDIENCE = "joinedup-test"


@dataclass
class Deployment:
    url: str
    mllp_port: int
    kafka: str
    database_url: str
    feed: Feed
    env: dict[str, str]
    log: Path


def _start(env: dict[str, str], http_port: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "joinedup", "serve", "ingest-acute", "--port", str(http_port)],
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def _wait_ready(url: str, log: Path, process: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    state = "ended" if process.poll() is not None else f"not ready in {seconds}s"
    pytest.fail(f"ingest-acute {state}: {log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def deployment(
    tmp_path: Path, fresh_database_url: str, kafka_bootstrap: str
) -> Iterator[Deployment]:
    signer = LocalSigner.load_or_create(tmp_path / "issuer" / "key.pem")
    public_key = tmp_path / "public.pem"
    public_key.write_text(signer.public_key_pem())
    sender = f"RCB-{uuid.uuid4().hex[:8]}"
    feed = Feed(
        id=f"acute-{uuid.uuid4().hex[:8]}",
        kind=FeedKind.HL7V2,
        ods="RCB",
        setting="acute",
        sender=sender,
    )
    feeds = tmp_path / "feeds.json"
    FeedRegistry(feeds).add(feed)
    http_port, mllp_port = free_ports(2)
    env = {
        **os.environ,
        "JOINEDUP_MODE": "distributed",
        "JOINEDUP_DATABASE_URL": fresh_database_url,
        "JOINEDUP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(public_key),
        "JOINEDUP_AUTH_ISSUER": ISSUER,
        "JOINEDUP_AUTH_AUDIENCE": AUDIENCE,
        "JOINEDUP_FEEDS_FILE": str(feeds),
        "JOINEDUP_DATA_DIR": str(tmp_path),
        "JOINEDUP_MLLP_HOST": "127.0.0.1",
        "JOINEDUP_MLLP_PORT": str(mllp_port),
    }
    url = f"http://127.0.0.1:{http_port}"
    log = tmp_path / "ingest-acute.log"
    process = _start(env, http_port, log)
    try:
        _wait_ready(url, log, process)
        yield Deployment(url, mllp_port, kafka_bootstrap, fresh_database_url, feed, env, log)
    finally:
        _stop(process)


def from_sender(data: bytes, sender: str) -> bytes:
    return data.replace(b"|PAS|RCB|", f"|PAS|{sender}|".encode(), 1)


def ours(deployment: Deployment, nhs_number: str) -> Any:
    """Records of this test: its patient's key and its deployment's feed. (The key alone is not
    enough: the 999 test range holds under a million NHS numbers, and tests and benchmarks on
    a shared broker publish many of them.)"""
    feed = deployment.feed.id.encode()
    return lambda r: r.key == nhs_number.encode() and dict(r.headers).get("source") == feed


@pytest.mark.integration
async def test_mllp_to_kafka_keyed_ordered_and_idempotent(
    deployment: Deployment, nhs_number: str, read_topics: Any
) -> None:
    sender = deployment.feed.sender or ""
    admission = from_sender(for_patient(ADMISSION, nhs_number), sender)
    discharge = from_sender(for_patient(DISCHARGE, nhs_number, visit="2139"), sender)
    acks = await mllp_send(deployment.mllp_port, admission, discharge)
    assert [ack_code(a) for a in acks] == ["AA", "AA"]

    topics = [
        "fhir.Patient",
        "fhir.Encounter",
        "fhir.Condition",
        "fhir.AllergyIntolerance",
        "fhir.Observation",
    ]
    mine = await read_topics(deployment.kafka, topics, ours(deployment, nhs_number), 8)
    # A01: Patient, Encounter, Condition, AllergyIntolerance; A03: Patient, Encounter, 2 OBX
    assert len(mine) == 8
    encounters = [orjson.loads(r.value) for r in mine if r.topic == "fhir.Encounter"]
    assert [e["status"] for e in encounters] == ["in-progress", "finished"]  # in order, one key
    headers = dict(mine[0].headers)
    assert headers["source"] == deployment.feed.id.encode()
    assert headers["setting"] == b"acute"
    assert {"event-id", "occurred-at", "traceparent"} <= set(headers)

    # the same discharge again: acknowledged alike, nothing published
    (again,) = await mllp_send(deployment.mllp_port, discharge)
    assert ack_code(again) == "AA"
    after = await read_topics(deployment.kafka, topics, ours(deployment, nhs_number), 8, settle=3.0)
    assert len(after) == len(mine)


@pytest.mark.integration
async def test_a_resend_after_a_restart_is_still_recognised(
    deployment: Deployment, nhs_number: str, tmp_path: Path, read_topics: Any
) -> None:
    sender = deployment.feed.sender or ""
    admission = from_sender(for_patient(ADMISSION, nhs_number), sender)
    bad = admission.replace(nhs_number.encode(), b"1234567890")  # not a valid NHS number
    bad = bad.replace(b"1391320453338055", b"BAD-1")
    first = await mllp_send(deployment.mllp_port, admission, bad)
    assert [ack_code(a) for a in first] == ["AA", "AE"]

    # a second process on the same database and broker: the first one's answers stand
    port, mllp_port = free_ports(2)
    env = {**deployment.env, "JOINEDUP_MLLP_PORT": str(mllp_port)}
    log = tmp_path / "second.log"
    second = _start(env, port, log)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", log, second)
        again = await mllp_send(int(env["JOINEDUP_MLLP_PORT"]), admission, bad)
        assert [ack_code(a) for a in again] == ["AA", "AE"]
    finally:
        _stop(second)
    topics = ["fhir.Patient"]
    patients = await read_topics(
        deployment.kafka, topics, ours(deployment, nhs_number), 1, settle=3.0
    )
    assert len(patients) == 1
    dead = await read_topics(
        deployment.kafka,
        [DEADLETTER],
        lambda r: dict(r.headers).get("source") == deployment.feed.id.encode(),
        1,
        settle=2.0,
    )
    assert len(dead) == 1  # refused once, remembered: the resend was not kept again
    assert b"no patient identifier" in dict(dead[0].headers)["error"]
    assert dead[0].value == bad


@pytest.mark.integration
async def test_unknown_senders_and_junk_reach_the_dead_letter_topic(
    deployment: Deployment, read_topics: Any
) -> None:
    marker = uuid.uuid4().hex.encode()
    junk = b"MSH|^~\\&|X|NOBODY-" + marker + b"|||20240101||ADT^A01|J1|P|2.4\rPID|1||1\r"
    (answer,) = await mllp_send(deployment.mllp_port, junk)
    assert ack_code(answer) == "AR"
    (kept,) = await read_topics(deployment.kafka, [DEADLETTER], lambda r: marker in r.value, 1)
    assert kept.value == junk
    assert dict(kept.headers)["service"] == b"ingest-acute"
