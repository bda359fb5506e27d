"""The walking skeleton in distributed mode: ingest-gp and record as separate processes
(``joinedup serve``) on the real Kafka broker and real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from fhir_common.auth import LocalSigner
from fhir_common.bus.kafka import fhir_partitions, start_groups_at_end
from fhir_common.events import DEADLETTER, RECORD_CHANGES
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from fhir_common.net import free_port

pytestmark = pytest.mark.integration

FEED = Feed(id="gp-dist", kind=FeedKind.FHIR, ods="Y05678", setting="primary")
ISSUER = AUDIENCE = "joinedup-test"


@dataclass
class Deployment:
    urls: dict[str, str]
    signer: LocalSigner
    kafka: str
    group_prefix: str

    def token(self, **claims: Any) -> str:
        return self.signer.mint(issuer=ISSUER, audience=AUDIENCE, **claims)

    @property
    def feed_headers(self) -> dict[str, str]:
        token = self.token(subject="feed:gp-dist", scopes=["system/*.cu"], feed=FEED.id)
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}

    @property
    def reader(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(subject='gp', scopes=['user/*.rs'])}"}


@pytest.fixture
def deployment(
    tmp_path: Path, fresh_database_url: str, kafka_bootstrap: str
) -> Iterator[Deployment]:
    signer = LocalSigner.load_or_create(tmp_path / "issuer" / "key.pem")
    group_prefix = f"test-{uuid.uuid4().hex[:8]}."
    public_key = tmp_path / "public.pem"
    public_key.write_text(signer.public_key_pem())
    feeds = tmp_path / "feeds.json"
    FeedRegistry(feeds).add(FEED)
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
        # our own consumer groups: another run on the same broker must not take our partitions
        "JOINEDUP_KAFKA_GROUP_PREFIX": group_prefix,
    }
    # Fresh groups would first replay every earlier run's fhir.* messages on this broker.
    asyncio.run(
        start_groups_at_end(
            kafka_bootstrap, [f"{group_prefix}record", f"{group_prefix}ingest-gp.patients"]
        )
    )
    urls: dict[str, str] = {}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for service in ("ingest-gp", "record"):
            port = free_port()
            log = (tmp_path / f"{service}.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "joinedup", "serve", service, "--port", str(port)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            urls[service] = f"http://127.0.0.1:{port}"
        _wait_ready(urls, tmp_path)
        yield Deployment(urls, signer, kafka_bootstrap, group_prefix)
    finally:
        for process in processes:
            process.terminate()  # SIGTERM: the graceful path
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def _wait_ready(urls: dict[str, str], logs: Path, seconds: float = 90) -> None:
    import time

    deadline = time.monotonic() + seconds
    pending = dict(urls)
    while pending and time.monotonic() < deadline:
        for service, url in list(pending.items()):
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    del pending[service]
            except httpx.HTTPError:
                pass
        time.sleep(0.3)
    if pending:
        tails = {s: (logs / f"{s}.log").read_text()[-3000:] for s in pending}
        pytest.fail(f"services not ready in {seconds}s: {tails}")


async def _eventually(check: Any, seconds: float = 60) -> Any:
    async with asyncio.timeout(seconds):
        while True:
            result = await check()
            if result is not None:
                return result
            await asyncio.sleep(0.2)


async def _lag(bootstrap: str, group: str, topics: set[str]) -> int:
    """How far ``group`` is behind the end of ``topics``."""
    partitions = [tp for tp in await fhir_partitions(bootstrap) if tp.topic in topics]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        consumer.assign(partitions)  # so that the consumer holds their metadata
        committed = await admin.list_consumer_group_offsets(group)
        ends = await consumer.end_offsets(partitions)
        return sum(
            end - (committed[tp].offset if tp in committed else 0) for tp, end in ends.items()
        )
    finally:
        await consumer.stop()
        await admin.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_bundle_flows_through_kafka_into_postgres(
    deployment: Deployment,
    client: httpx.AsyncClient,
    bundle: dict,
    nhs_number: str,
    read_topics: Any,
) -> None:
    ingest, record = deployment.urls["ingest-gp"], deployment.urls["record"]
    pushed = await client.post(
        f"{ingest}/fhir", content=orjson.dumps(bundle), headers=deployment.feed_headers
    )
    assert pushed.status_code == 200, pushed.text
    patient_id = pushed.json()["entry"][0]["response"]["location"].removeprefix("Patient/")

    async def everything() -> dict | None:
        response = await client.get(
            f"{record}/fhir/Patient/{patient_id}/$everything", headers=deployment.reader
        )
        body = response.json()
        return body if response.status_code == 200 and body["total"] == 3 else None

    found = await _eventually(everything)
    assert sorted(e["resource"]["resourceType"] for e in found["entry"]) == [
        "Condition",
        "Encounter",
        "Patient",
    ]
    search = await client.get(
        f"{record}/fhir/Patient",
        params={"identifier": f"{NHS_NUMBER_SYSTEM}|{nhs_number}"},
        headers=deployment.reader,
    )
    assert [e["resource"]["id"] for e in search.json()["entry"]] == [patient_id]

    # the record told everyone, after its commit, on record.changes, keyed by NHS number (the
    # NHS numbers of tests and benchmarks repeat on a long-lived broker: match the ids too)
    ours = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in found["entry"]}

    def announced(record: Any) -> bool:
        value = orjson.loads(record.value)
        return record.key == nhs_number.encode() and (value["resourceType"], value["id"]) in ours

    changes = await read_topics(deployment.kafka, [RECORD_CHANGES], announced, 3)
    assert {
        (orjson.loads(r.value)["resourceType"], orjson.loads(r.value)["id"]) for r in changes
    } == ours
    assert {orjson.loads(r.value)["change"] for r in changes} == {"created"}

    # the same bundle again: accepted, and once the record has caught up, nothing is new
    again = await client.post(
        f"{ingest}/fhir", content=orjson.dumps(bundle), headers=deployment.feed_headers
    )
    assert again.json() == pushed.json()

    async def caught_up() -> bool | None:
        return (
            True
            if await _lag(
                deployment.kafka,
                f"{deployment.group_prefix}record",
                {"fhir.Patient", "fhir.Encounter", "fhir.Condition"},  # where the bundle went
            )
            == 0
            else None
        )

    await _eventually(caught_up)
    patient = await client.get(f"{record}/fhir/Patient/{patient_id}", headers=deployment.reader)
    assert patient.json()["meta"]["versionId"] == "1"
    everything_again = await everything()
    assert everything_again is not None, "the resend changed what $everything returns"


async def test_bad_push_is_refused_and_dead_lettered_on_kafka(
    deployment: Deployment,
    client: httpx.AsyncClient,
    bundle: dict,
    bundles: Any,
    read_topics: Any,
) -> None:
    broken = bundles.with_bad_birth_date(bundle)
    # 2 MB: over Kafka's default 1 MB message limit, so the dead letter proves ours is raised
    broken["entry"][1]["resource"]["text"]["div"] = (
        '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 2_000_000 + "</div>"
    )
    body = orjson.dumps(broken)
    response = await client.post(
        f"{deployment.urls['ingest-gp']}/fhir", content=body, headers=deployment.feed_headers
    )
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.birthDate"]
    kept = await read_topics(deployment.kafka, [DEADLETTER], lambda r: r.value == body, 1)
    headers = dict(kept[0].headers)
    assert headers["service"] == b"ingest-gp"
    assert b"birthDate" in headers["error"] or b"date" in headers["error"].lower()
    unauthorised = await client.get(
        f"{deployment.urls['record']}/fhir/Patient/{uuid.uuid4()}/$everything"
    )
    assert unauthorised.status_code == 401
