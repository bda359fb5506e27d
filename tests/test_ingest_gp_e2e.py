"""ingest-gp end to end on the real broker: ``joinedup serve ingest-gp`` in distributed mode (its
own PostgreSQL database, Kafka, the validation pool), driven over HTTP, its output read back
from the ``fhir.<Type>`` and ``deadletter`` topics.

Each test run has feeds of its own (``gp-e2e-<random>``) and reads only what they published, from
the topics' ends as they were before it pushed, so other runs on the same broker neither
disturb it nor are disturbed much (a few hundred small messages a run).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from fhir_common.auth import LocalSigner
from fhir_common.bus.kafka import start_groups_at_end
from fhir_common.events import DEADLETTER
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.net import free_port
from fhir_common.scratch import create_database, drop_database

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT.parent / "shared" / "samples"
CSV_DATA = ROOT / "services" / "ingest-gp" / "tests" / "data" / "csv"
ISSUER = AUDIENCE = "joinedup-gp-e2e"
SMALL_SYNTHEA = ("Buster_Hoeger", "Clemente_Kreiger")  # ~70-160 resources each


@dataclass
class Gp:
    url: str
    kafka: str
    signer: LocalSigner
    feed: Feed
    csv_feed: Feed
    import_dir: Path

    def headers(
        self, content_type: str | None = "application/fhir+json", csv: bool = False
    ) -> dict[str, str]:
        feed = self.csv_feed if csv else self.feed
        token = self.signer.mint(
            subject=f"feed:{feed.id}",
            scopes=["system/*.cu"],
            issuer=ISSUER,
            audience=AUDIENCE,
            feed=feed.id,
            org=feed.ods,
        )
        headers = {"Authorization": f"Bearer {token}"}
        if content_type:
            headers["Content-Type"] = content_type
        return headers


@pytest.fixture(scope="module")
def gp(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, kafka_bootstrap: str
) -> Iterator[Gp]:
    """One ingest-gp process for the module, on a database of its own."""
    from sqlalchemy.engine import make_url

    tmp = tmp_path_factory.mktemp("gp-e2e")
    run = uuid.uuid4().hex[:8]
    feed = Feed(id=f"gp-e2e-{run}", kind=FeedKind.FHIR, ods="Y07777", setting="primary")
    csv_feed = Feed(id=f"community-e2e-{run}", kind=FeedKind.CSV, ods="ZC1", setting="community")
    FeedRegistry(tmp / "feeds.json").add(feed)
    FeedRegistry(tmp / "feeds.json").add(csv_feed)
    (tmp / "mappings").mkdir()
    mapping = (CSV_DATA / "community-zc1" / "mapping.yaml").read_text()
    (tmp / "mappings" / f"{csv_feed.id}.yaml").write_text(
        mapping.replace("feed: community-zc1", f"feed: {csv_feed.id}")
    )
    signer = LocalSigner.load_or_create(tmp / "issuer" / "key.pem")
    (tmp / "public.pem").write_text(signer.public_key_pem())

    url = make_url(database_url)
    name = f"jd_gp_e2e_{run}"
    asyncio.run(create_database(database_url, name))
    # The service's fhir.Patient consumer is a new group: on a long-lived broker it would first
    # replay every earlier run's Patients into this module's database while the tests run.
    asyncio.run(start_groups_at_end(kafka_bootstrap, [f"gp-e2e-{run}.ingest-gp.patients"]))
    port = free_port()
    env = {
        **os.environ,
        "JOINEDUP_MODE": "distributed",
        "JOINEDUP_DATABASE_URL": url.set(database=name).render_as_string(hide_password=False),
        "JOINEDUP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "JOINEDUP_KAFKA_GROUP_PREFIX": f"gp-e2e-{run}.",
        "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(tmp / "public.pem"),
        "JOINEDUP_AUTH_ISSUER": ISSUER,
        "JOINEDUP_AUTH_AUDIENCE": AUDIENCE,
        "JOINEDUP_FEEDS_FILE": str(tmp / "feeds.json"),
        "JOINEDUP_DATA_DIR": str(tmp),
        "JOINEDUP_INGEST_GP_WORKERS": "1",
        "JOINEDUP_INGEST_GP_PARALLEL_THRESHOLD": "50",
    }
    log = (tmp / "ingest-gp.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "joinedup", "serve", "ingest-gp", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(
                    f"ingest-gp did not start: {(tmp / 'ingest-gp.log').read_text()[-3000:]}"
                )
            time.sleep(0.3)
        yield Gp(base, kafka_bootstrap, signer, feed, csv_feed, tmp / "imports")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        asyncio.run(drop_database(database_url, name))


class Topics:
    """What our feeds publish from now on, read back from the broker (no consumer group)."""

    def __init__(self, bootstrap: str, source: str) -> None:
        self.bootstrap = bootstrap
        self.source = source
        self.start: dict[TopicPartition, int] = {}

    async def mark(self, topics: list[str]) -> None:
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await consumer.start()
        try:
            partitions = []
            for topic in topics:
                for p in await _partitions(consumer, topic):
                    partitions.append(TopicPartition(topic, p))
            ends = await consumer.end_offsets(partitions) if partitions else {}
            self.start.update(ends)
        finally:
            await consumer.stop()

    async def read(self, topics: list[str], count: int, seconds: float = 60) -> list[Any]:
        """Records of ``topics`` (from the marks) whose source is ours, until ``count``."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        found: list[Any] = []
        try:
            partitions = []
            for topic in topics:
                for p in await _partitions(consumer, topic):
                    partitions.append(TopicPartition(topic, p))
            consumer.assign(partitions)
            for tp in partitions:
                consumer.seek(tp, self.start.get(tp, 0))
            async with asyncio.timeout(seconds):
                while len(found) < count:
                    for records in (await consumer.getmany(timeout_ms=300)).values():
                        found += [
                            r
                            for r in records
                            if dict(r.headers).get("source") == self.source.encode()
                        ]
        finally:
            await consumer.stop()
        return found


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[int]:
    for _ in range(30):
        found = consumer.partitions_for_topic(topic)
        if found:
            return sorted(found)
        await consumer._client.force_metadata_update()  # topics made meanwhile
        await asyncio.sleep(0.1)
    return []


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=60) as http:
        yield http


def fhir_topics(types: list[str]) -> list[str]:
    return sorted({f"fhir.{t}" for t in types})


async def test_synthea_records_land_on_their_topics_once(gp: Gp, client: httpx.AsyncClient) -> None:
    bundles = [
        json.loads(next((SAMPLES / "synthea-r4").glob(f"{name}_*.json")).read_text())
        for name in SMALL_SYNTHEA
    ]
    sent = Counter(e["resource"]["resourceType"] for b in bundles for e in b["entry"])
    topics = Topics(gp.kafka, gp.feed.id)
    await topics.mark(fhir_topics(list(sent)))
    for bundle in bundles:
        response = await client.post(
            f"{gp.url}/fhir", content=orjson.dumps(bundle), headers=gp.headers()
        )
        assert response.status_code == 200, response.text
        assert {e["response"]["status"] for e in response.json()["entry"]} == {"201 Created"}
    # shared organisations and practitioners are published once
    distinct = {
        (e["resource"]["resourceType"], e["resource"]["id"]) for b in bundles for e in b["entry"]
    }
    records = await topics.read(fhir_topics(list(sent)), len(distinct))
    assert Counter(r.topic.removeprefix("fhir.") for r in records) == Counter(
        t for t, _ in distinct
    )
    for record in records:
        assert orjson.loads(record.value)["resourceType"] == record.topic.removeprefix("fhir.")
    # the same records again: answered the same, nothing new on Kafka
    again = await client.post(
        f"{gp.url}/fhir", content=orjson.dumps(bundles[0]), headers=gp.headers()
    )
    assert again.headers["X-Published"] == "0"
    await asyncio.sleep(1)
    later = await topics.read(fhir_topics(list(sent)), len(distinct), seconds=10)
    assert len(later) == len(distinct)


async def test_a_uk_core_xml_push_reaches_kafka_and_answers_in_xml(
    gp: Gp, client: httpx.AsyncClient
) -> None:
    patient = (
        SAMPLES / "uk-core-r4-examples" / "UKCore-Patient-RichardSmith-Example.xml"
    ).read_bytes()
    bundle = (
        b"<Bundle xmlns='http://hl7.org/fhir'><type value='collection'/><entry><resource>"
        + patient
        + b"</resource></entry></Bundle>"
    )
    topics = Topics(gp.kafka, gp.feed.id)
    await topics.mark(["fhir.Patient"])
    response = await client.post(
        f"{gp.url}/fhir", content=bundle, headers=gp.headers("application/fhir+xml")
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+xml")
    [record] = await topics.read(["fhir.Patient"], 1)
    assert record.key == b"9912003888"
    published = orjson.loads(record.value)
    assert published["name"][0]["family"] == "SMITH"
    assert published["meta"]["source"].endswith(gp.feed.id)


async def test_an_ndjson_import_reaches_kafka(gp: Gp, client: httpx.AsyncClient) -> None:
    lines = [
        orjson.dumps({"resourceType": "Patient", "id": f"imp-{i}", "gender": "female"})
        for i in range(30)
    ] + [b'{"resourceType": "Patient", "birthDate": "not a date"}']
    topics = Topics(gp.kafka, gp.feed.id)
    await topics.mark(["fhir.Patient", DEADLETTER])
    kick = await client.post(
        f"{gp.url}/fhir/$import",
        content=b"\n".join(lines),
        headers=gp.headers("application/fhir+ndjson"),
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    async with asyncio.timeout(60):
        while (status := await client.get(status_url, headers=gp.headers(None))).status_code == 202:
            assert "X-Progress" in status.headers
            await asyncio.sleep(0.2)
    assert status.status_code == 200, status.text
    report = status.json()
    assert (report["published"], report["failed"]) == (30, 1)
    assert report["error"][0]["line"] == 31
    records = await topics.read(["fhir.Patient"], 30)
    assert len(records) == 30
    [dead] = await topics.read([DEADLETTER], 1)
    assert dead.value == lines[-1]


async def test_a_csv_extract_reaches_kafka(gp: Gp, client: httpx.AsyncClient) -> None:
    extract = (CSV_DATA / "community-zc1" / "community-zc1-2024-04-02.csv").read_bytes()
    topics = Topics(gp.kafka, gp.csv_feed.id)
    await topics.mark(["fhir.Patient", "fhir.Encounter"])
    response = await client.post(
        f"{gp.url}/csv", content=extract, headers=gp.headers("text/csv", csv=True)
    )
    assert response.status_code == 200, response.text
    report = response.json()
    assert report["refused"] == 0
    expected = report["published"]
    records = await topics.read(["fhir.Patient", "fhir.Encounter"], expected)
    assert Counter(r.topic for r in records) == {
        f"fhir.{t}": n for t, n in report["resources"].items()
    }
    for record in records:
        assert dict(record.headers)["setting"] == b"community"


async def test_a_refused_bundle_is_dead_lettered_on_kafka(
    gp: Gp, client: httpx.AsyncClient
) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Patient", "birthDate": "1974-13-45"},
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }
    body = orjson.dumps(bundle)
    topics = Topics(gp.kafka, gp.feed.id)
    await topics.mark([DEADLETTER])
    response = await client.post(f"{gp.url}/fhir", content=body, headers=gp.headers())
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.birthDate"]
    [dead] = await topics.read([DEADLETTER], 1)
    assert dead.value == body
    assert dict(dead.headers)["service"] == b"ingest-gp"
