"""Benchmarks of the record (issue 6, point 8), on a real PostgreSQL server and Kafka broker.

* ``kafka_to_committed``: resources per second from Kafka to committed in PostgreSQL. The
  resources (Synthea R4 patients from ``../shared/samples``, cloned with new ids and NHS
  numbers, as ingest publishes them) are put on topics of their own first; then the record
  service starts in a process of its own (uvicorn, as ``joinedup serve record`` runs it) on a
  fresh database, and the clock runs from the first committed resource to the last, as the
  record's stored positions show them (then a ``count(*)`` checks that every one is stored).
  Its ``record.changes`` go to a topic of their own too. With
  ``processes=2`` two replicas share the work (they join their group before the data arrives).
* ``store_latency``: a fresh database loaded with COPY with a store of ``resources`` resources
  (1 million by default: 5,000 cloned Synthea patients, their index rows included) plus one
  patient with 1,000 resources; then the record service (its own process again) answers
  ``$everything`` for that patient, the summary, and three typical searches over HTTP, one
  request at a time; p50 and p95 of each.

Every function returns a list of ``{"name", "value", "unit", "params"}`` dicts, the headline
figure first. Topics and databases are removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from fhir_common.identifiers import NHS_NUMBER_SYSTEM, nhs_check_digit
from fhir_common.net import free_port
from fhir_common.scratch import scratch_database
from record.indexing import index_rows

READY_LIMIT = 120.0
LOAD_CHUNK = 25_000
UUID_HEAD = re.compile(r"[0-9a-f]{8}(?=-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
PATIENT_TAIL = "-0000-4000-8000-000000000000"  # every clone's Patient id ends so
STAMP = "2026-01-01T00:00:00.000Z"

Result = dict[str, Any]


def _result(name: str, value: float, unit: str, **params: Any) -> Result:
    return {"name": name, "value": round(value, 2), "unit": unit, "params": params}


def _env(given: str | None, name: str) -> str:
    value = given or os.environ.get(name, "").strip()
    if not value:
        raise RuntimeError(f"{name} is not set (make bench exports it)")
    return value


def samples_dir() -> Path:
    """``shared/samples/synthea-r4`` beside the checkout (or ``JOINEDUP_SAMPLES_DIR``)."""
    given = os.environ.get("JOINEDUP_SAMPLES_DIR", "").strip()
    if given:
        return Path(given)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "samples" / "synthea-r4"
        if candidate.is_dir():
            return candidate
    raise RuntimeError("no shared/samples/synthea-r4 found; set JOINEDUP_SAMPLES_DIR")


def nhs_numbers(count: int, start: int) -> Iterator[str]:
    """Valid NHS numbers in the 999 range (reserved for test data)."""
    n = start
    made = 0
    while made < count:
        first_nine = f"999{n % 10**6:06d}"
        n += 1
        check = nhs_check_digit(first_nine)
        if check is not None:
            made += 1
            yield f"{first_nine}{check}"


# --- the workload: Synthea patients as templates -------------------------------------------------


@dataclass
class Template:
    """One Synthea resource, ready to clone: its JSON split where every UUID begins, so that a
    clone is ``head.join(parts)`` with a new 8-hex-digit head; its index rows likewise."""

    resource_type: str
    id_tail: str
    parts: list[str]
    rows: Any  # IndexRows of the template, ids to be given the clone's head
    is_patient: bool


@dataclass
class Workload:
    templates: list[list[Template]]  # per Synthea patient
    sizes: list[int] = field(default_factory=list)

    @property
    def mean_size(self) -> float:
        return sum(self.sizes) / max(len(self.sizes), 1)


def _rewrite_references(node: Any, ids: dict[str, str]) -> Any:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref in ids:
            node["reference"] = ids[ref]
        for value in node.values():
            _rewrite_references(value, ids)
    elif isinstance(node, list):
        for item in node:
            _rewrite_references(item, ids)
    return node


def load_workload(directory: Path | None = None, *, stored: bool = False) -> Workload:
    """Synthea bundles as ingest-gp would publish them: references as ``Type/id``, every
    resource's own Patient id made canonical (so a clone's resources point at its Patient),
    an NHS number on the Patient, ingest's ``meta.source``; and with ``stored`` the record's own
    ``meta.versionId`` and ``lastUpdated``, as the store holds them."""
    workload = Workload([])
    for path in sorted(glob.glob(str((directory or samples_dir()) / "*.json"))):
        bundle = orjson.loads(Path(path).read_bytes())
        entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
        patient_id = next(
            e["resource"]["id"] for e in entries if e["resource"]["resourceType"] == "Patient"
        )
        canonical = f"00000000{PATIENT_TAIL}"
        ids: dict[str, str] = {}
        for entry in entries:
            resource = entry["resource"]
            rid = canonical if resource["id"] == patient_id else resource["id"]
            target = f"{resource['resourceType']}/{rid}"
            ids[entry.get("fullUrl", "")] = target
            ids[f"{resource['resourceType']}/{resource['id']}"] = target
        templates: list[Template] = []
        for entry in entries:
            resource = _rewrite_references(entry["resource"], ids)
            if resource["id"] == patient_id:
                resource["id"] = canonical
                resource.setdefault("identifier", []).append(
                    {"system": NHS_NUMBER_SYSTEM, "value": "@@NHS@@"}
                )
            resource["meta"] = {"source": "https://fhir.joinedup.nhs.uk/feed/bench-gp"}
            if stored:
                resource["meta"].update({"versionId": "1", "lastUpdated": STAMP})
            text = orjson.dumps(resource).decode()
            workload.sizes.append(len(text))
            parts = UUID_HEAD.split(text)
            templates.append(
                Template(
                    resource["resourceType"],
                    resource["id"][8:] if UUID_HEAD.match(resource["id"]) else resource["id"],
                    parts,
                    index_rows(resource),
                    resource["id"] == canonical,
                )
            )
        workload.templates.append(templates)
    if not workload.templates:
        raise RuntimeError(f"no Synthea bundles in {directory or samples_dir()}")
    return workload


def _clone_id(head: str, value: str) -> str:
    return head + value[8:] if UUID_HEAD.match(value) else value


@dataclass
class Clone:
    resource_type: str
    id: str
    text: str
    template: Template


def clone(templates: Sequence[Template], head: str, nhs: str) -> Iterator[Clone]:
    for template in templates:
        text = head.join(template.parts)
        if template.is_patient:
            text = text.replace("@@NHS@@", nhs)
        yield Clone(template.resource_type, head + template.id_tail, text, template)


# --- infrastructure ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_database(database_url: str, prefix: str) -> AsyncIterator[str]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""
    async with scratch_database(database_url, prefix) as url:
        yield url


def asyncpg_dsn(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def migrate(database_url: str) -> None:
    from fhir_common.db import Database
    from record.main import MIGRATIONS
    from record.reindex import ensure_index
    from record.tables import SCHEMA

    database = Database(database_url, SCHEMA)
    try:
        await database.migrate(MIGRATIONS)
        await ensure_index(database)
    finally:
        await database.dispose()


def postgres_cpu_seconds() -> float:
    """CPU time used so far by the PostgreSQL server's processes on this machine (NaN when
    it runs elsewhere or /proc is not readable)."""
    total = 0
    found = False
    ticks = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.find("(") + 1 : text.rfind(")")]
        if name.startswith("postgres"):
            fields = text.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            found = True
    return total / ticks if found else float("nan")


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    def cpu_seconds(self) -> float:
        """User + system CPU time the service process has used."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")


def _spawn(port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "uvicorn",
                "record.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@contextlib.asynccontextmanager
async def record_service(
    database_url: str, kafka: str, topic_prefix: str, **extra: str
) -> AsyncIterator[Service]:
    """The record in a process of its own, distributed mode, its own topics and groups."""
    import httpx

    from fhir_common.auth import LocalSigner

    with tempfile.TemporaryDirectory(prefix="jd-bench-record-") as tmp:
        directory = Path(tmp)
        signer = LocalSigner.load_or_create(directory / "key.pem")
        public = directory / "public.pem"
        public.write_text(signer.public_key_pem())
        port = free_port()
        env = {
            **os.environ,
            "JOINEDUP_MODE": "distributed",
            "JOINEDUP_DATABASE_URL": database_url,
            "JOINEDUP_KAFKA_BOOTSTRAP": kafka,
            "JOINEDUP_KAFKA_GROUP_PREFIX": f"{topic_prefix}.",
            "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(public),
            "JOINEDUP_AUTH_ISSUER": "joinedup-bench",
            "JOINEDUP_AUTH_AUDIENCE": "joinedup-bench",
            "JOINEDUP_DATA_DIR": str(directory),
            "JOINEDUP_LOG_LEVEL": "WARNING",
            "JOINEDUP_RECORD_TOPIC_PATTERN": rf"^{re.escape(topic_prefix)}\.fhir\.[A-Za-z]+$",
            "JOINEDUP_RECORD_CHANGES_TOPIC": f"{topic_prefix}.record.changes",
            **extra,
        }
        log = directory / "record.log"
        process = _spawn(port, env, log)
        url = f"http://127.0.0.1:{port}"
        token = signer.mint(
            subject="bench",
            scopes=["system/*.rs"],
            issuer="joinedup-bench",
            audience="joinedup-bench",
            ttl_seconds=3600,
        )
        service = Service(process, url, token, log)
        try:
            deadline = time.monotonic() + READY_LIMIT
            async with httpx.AsyncClient(timeout=2) as client:
                while True:
                    with contextlib.suppress(httpx.HTTPError):
                        if (await client.get(f"{url}/ready")).status_code == 200:
                            break
                    if process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"record did not start: {log.read_text()[-3000:]}")
                    await asyncio.sleep(0.2)
            yield service
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


async def delete_topics(kafka: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        mine = [t for t in await admin.list_topics() if t.startswith(f"{prefix}.")]
        if mine:
            await admin.delete_topics(mine)
    except Exception:  # noqa: S110 - best effort: the broker keeps them a while, harmlessly
        pass
    finally:
        await admin.close()


# --- Kafka to committed --------------------------------------------------------------------------


# Messages the record has committed so far: every bench message is a new resource on a topic of
# the run's own, written by a plain producer (offsets 0, 1, 2, ... per partition). Read from the
# few rows of consumer_positions: a count(*) of the resources table while it fills (nothing yet
# all-visible, so a scan of the heap) cost PostgreSQL a large share of a core at 4 polls a
# second, taken from the record being measured.
STORED_SO_FAR = 'SELECT coalesce(sum("offset" + 1), 0)::bigint FROM record.consumer_positions'


async def kafka_to_committed(
    *,
    resources: int = 150_000,
    kafka_bootstrap: str | None = None,
    database_url: str | None = None,
    batch: int | None = None,
    processes: int = 1,
) -> list[Result]:
    """Resources per second from ``fhir.*`` topics to committed in PostgreSQL (goal 10,000/s)."""
    import asyncpg
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    kafka = _env(kafka_bootstrap, "JOINEDUP_KAFKA_BOOTSTRAP")
    database = _env(database_url, "JOINEDUP_DATABASE_URL")
    workload = load_workload()
    prefix = f"rb-{uuid.uuid4().hex[:8]}"
    messages: list[tuple[str, bytes, bytes]] = []
    numbers = nhs_numbers(resources // 100 + 100, 300_000)
    patients = 0
    while len(messages) < resources:
        templates = workload.templates[patients % len(workload.templates)]
        nhs = next(numbers)
        head = f"{0xB0000000 + patients:08x}"
        for made in clone(templates, head, nhs):
            messages.append(
                (f"{prefix}.fhir.{made.resource_type}", nhs.encode(), made.text.encode())
            )
        patients += 1
    messages = messages[:resources]
    topics = sorted({t for t, _, _ in messages})
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 6, 1) for t in topics])
    finally:
        await admin.close()
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leaders of new topics: retried

    async def publish() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka, acks="all", linger_ms=20, max_batch_size=1 << 20
        )
        await producer.start()
        try:
            sent = []
            for topic, key, value in messages:
                trace = uuid.uuid4().hex
                headers = [
                    ("event-id", str(uuid.uuid4()).encode()),
                    ("source", b"bench-gp"),
                    ("setting", b"primary"),
                    ("occurred-at", STAMP.encode()),
                    ("traceparent", f"00-{trace}-{trace[:16]}-01".encode()),
                ]
                sent.append(await producer.send(topic, value, key=key, headers=headers))
            await asyncio.gather(*sent)
        finally:
            await producer.stop()

    try:
        if processes == 1:
            await publish()  # all there before the record starts
        async with fresh_database(database, "jd_bench_record") as url:
            await migrate(url)
            extra = {"JOINEDUP_RECORD_CONSUMER_BATCH": str(batch)} if batch else {}
            if processes > 1:
                # as deployed with a replica per core: each stores one part at a time, since
                # while one waits for PostgreSQL the other has the core (2 parts each, 4
                # transactions at once on 2 cores: 7-14% fewer resources a second)
                extra["JOINEDUP_RECORD_PARALLEL"] = "1"
            connection = await asyncpg.connect(asyncpg_dsn(url))
            try:
                async with contextlib.AsyncExitStack() as stack:
                    services = [
                        await stack.enter_async_context(record_service(url, kafka, prefix, **extra))
                        for _ in range(processes)
                    ]
                    if processes > 1:
                        # replicas join the group first, with nothing to consume: a rebalance
                        # in the middle of a batch is not what is measured
                        await asyncio.sleep(6)
                        await publish()
                    cpu_start = sum(s.cpu_seconds() for s in services)
                    postgres_start = postgres_cpu_seconds()
                    first: tuple[float, int] | None = None
                    started = time.monotonic()
                    while True:
                        count = await connection.fetchval(STORED_SO_FAR)
                        now = time.monotonic()
                        if count and first is None:
                            first = (now, count)
                        if count >= resources:
                            break
                        if now - started > 600:
                            raise RuntimeError(f"only {count} of {resources} after 10 minutes")
                        await asyncio.sleep(0.25)
                    cpu = sum(s.cpu_seconds() for s in services) - cpu_start
                    postgres = postgres_cpu_seconds() - postgres_start
                    stored = await connection.fetchval("SELECT count(*) FROM record.resources")
                    if stored != resources:
                        raise RuntimeError(f"{stored} resources stored of {resources} consumed")
                    left = await connection.fetchval("SELECT count(*) FROM record.outbox")
                    changes_wait = time.monotonic()
                    while left and time.monotonic() - changes_wait < 60:
                        await asyncio.sleep(0.25)
                        left = await connection.fetchval("SELECT count(*) FROM record.outbox")
            finally:
                await connection.close()
        assert first is not None
        seconds = now - first[0]
        measured = resources - first[1]
        rate = measured / seconds if seconds > 0 else float("inf")
        params = {
            "resources": resources,
            "patients": patients,
            "resource_bytes_mean": round(workload.mean_size),
            "measured_from_resource": first[1],
            "seconds": round(seconds, 2),
            "batch": batch or "default",
            "partitions": 6,
            "record_processes": processes,
            "record_parallel": 1 if processes > 1 else "default (2)",
            "record_cpu_seconds": round(cpu, 1),
            "record_cpu_us_per_resource": round(cpu / measured * 1e6),
            "postgres_cpu_seconds": round(postgres, 1),
            "postgres_cpu_us_per_resource": round(postgres / measured * 1e6),
            "machine_load_average": round(os.getloadavg()[0], 2),
            "outbox_left": left,
            "workload": "Synthea R4 samples cloned (all resource types)",
            "database": "PostgreSQL, fresh database, logged tables, TLS off (loopback)",
        }
        return [_result("record.kafka_to_committed", rate, "resources/s", **params)]
    finally:
        await delete_topics(kafka, prefix)


# --- the 1-million-resource store ----------------------------------------------------------------

RESOURCE_COLUMNS = (
    "resource_type",
    "id",
    "version_id",
    "last_updated",
    "patient_key",
    "source",
    "setting",
    "content_hash",
    "content",
)
INDEX_COLUMNS = {
    "search_token": ("resource_type", "param", "system", "code", "id"),
    "search_string": ("resource_type", "param", "value", "exact", "id"),
    "search_date": ("resource_type", "param", "low", "high", "id"),
    "search_reference": ("resource_type", "param", "target_type", "target_id", "id"),
    "search_quantity": ("resource_type", "param", "value", "system", "code", "unit", "id"),
}


@dataclass
class Rows:
    resources: list[tuple[Any, ...]] = field(default_factory=list)
    index: dict[str, list[tuple[Any, ...]]] = field(
        default_factory=lambda: {name: [] for name in INDEX_COLUMNS}
    )

    def __len__(self) -> int:
        return len(self.resources)

    def add(self, made: Clone, head: str, key: str, moment: datetime) -> None:
        rid = made.id
        rt = made.resource_type
        self.resources.append((rt, rid, 1, moment, key, "bench-gp", "primary", None, made.text))
        rows = made.template.rows
        index = self.index
        index["search_token"].extend(
            (rt, p, s, key if c == "@@NHS@@" else c, rid) for p, s, c in rows.tokens
        )
        index["search_string"].extend((rt, p, v, e, rid) for p, v, e in rows.strings)
        index["search_date"].extend((rt, p, lo, hi, rid) for p, lo, hi in rows.dates)
        index["search_reference"].extend(
            (rt, p, tt, _clone_id(head, ti), rid) for p, tt, ti in rows.references
        )
        index["search_quantity"].extend(
            (rt, p, v, s, c, u, rid) for p, v, s, c, u in rows.quantities
        )


async def _copy(connection: Any, rows: Rows) -> None:
    await connection.copy_records_to_table(
        "resources", records=rows.resources, columns=RESOURCE_COLUMNS, schema_name="record"
    )
    for name, columns in INDEX_COLUMNS.items():
        if rows.index[name]:
            await connection.copy_records_to_table(
                name, records=rows.index[name], columns=columns, schema_name="record"
            )


@dataclass
class Store:
    resources: int
    patients: int
    load_seconds: float
    index_seconds: float
    index_rows: int
    bench_patient: str
    bench_resources: int
    sample_patients: list[tuple[str, str]]  # (Patient id, NHS number)
    common_observation: str
    common_condition: str


async def load_store(database_url: str, workload: Workload, resources: int) -> Store:
    """COPY ``resources`` cloned resources and their index rows into a migrated database, with
    the indexes dropped during the load and built afterwards; plus one patient with 1,000."""
    import asyncpg

    dsn = asyncpg_dsn(database_url)
    admin = await asyncpg.connect(dsn)
    constraints = await admin.fetch(
        "SELECT conname, conrelid::regclass::text AS tab, pg_get_constraintdef(oid) AS def "
        "FROM pg_constraint WHERE connamespace = 'record'::regnamespace AND contype IN ('p', 'u')"
    )
    names = {c["conname"] for c in constraints}
    indexes = [
        r
        for r in await admin.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'record'"
        )
        if r["indexname"] not in names
    ]
    for index in indexes:
        await admin.execute(f'DROP INDEX record."{index["indexname"]}"')
    for constraint in constraints:
        await admin.execute(
            f'ALTER TABLE {constraint["tab"]} DROP CONSTRAINT "{constraint["conname"]}"'
        )
    for table in ("resources", *INDEX_COLUMNS):  # vacuumed below, once, by us
        await admin.execute(f"ALTER TABLE record.{table} SET (autovacuum_enabled = false)")

    started = time.monotonic()
    moment = datetime.now(UTC)
    numbers = nhs_numbers(resources // 100 + 100, 0)
    sample: list[tuple[str, str]] = []
    queue: asyncio.Queue[Rows | None] = asyncio.Queue(maxsize=2)
    loaders = [await asyncpg.connect(dsn) for _ in range(2)]
    for connection in loaders:
        await connection.execute("SET synchronous_commit = off")

    async def copy_forever(connection: Any) -> None:
        while (rows := await queue.get()) is not None:
            await _copy(connection, rows)

    copiers = [asyncio.create_task(copy_forever(c)) for c in loaders]
    rows = Rows()
    made_count = 0
    patients = 0
    bench_nhs = next(nhs_numbers(1, 900_000))
    bench_head = "bbbbbbbb"
    bench_patient = f"{bench_head}{PATIENT_TAIL}"
    # the bench patient: 1,000 resources from several Synthea patients, all about one person
    bench_made = 0
    for templates in workload.templates:
        for made in clone(templates, bench_head, bench_nhs):
            if made.template.is_patient and bench_made:
                continue
            rows.add(made, bench_head, bench_nhs, moment)
            bench_made += 1
            if bench_made == 1000:
                break
        if bench_made == 1000:
            break
    while made_count < resources:
        templates = workload.templates[patients % len(workload.templates)]
        nhs = next(numbers)
        head = f"{patients:08x}"
        for made in clone(templates, head, nhs):
            rows.add(made, head, nhs, moment)
            made_count += 1
            if patients < 20 and made.template.is_patient:
                sample.append((made.id, nhs))
        patients += 1
        if len(rows) >= LOAD_CHUNK:
            await queue.put(rows)
            rows = Rows()
    await queue.put(rows)
    for _ in copiers:
        await queue.put(None)
    await asyncio.gather(*copiers)
    for connection in loaders:
        await connection.close()
    load_seconds = time.monotonic() - started

    started = time.monotonic()
    await admin.execute("SET maintenance_work_mem = '512MB'")
    for constraint in constraints:
        table, name, definition = constraint["tab"], constraint["conname"], constraint["def"]
        await admin.execute(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}')
    builders = await asyncio.gather(*(asyncpg.connect(dsn) for _ in range(2)))
    for connection in builders:
        await connection.execute("SET maintenance_work_mem = '256MB'")

    async def build_indexes(connection: Any, mine: list[Any]) -> None:
        for index in mine:
            await connection.execute(index["indexdef"])

    await asyncio.gather(
        *(build_indexes(c, indexes[n :: len(builders)]) for n, c in enumerate(builders))
    )
    for connection in builders:
        await connection.close()
    # as a store in steady state is: vacuumed (visibility map set) and analysed
    await admin.execute("VACUUM (ANALYZE)")
    index_seconds = time.monotonic() - started
    index_total = 0
    for name in INDEX_COLUMNS:
        index_total += await admin.fetchval(f"SELECT count(*) FROM record.{name}")  # noqa: S608
    common = await admin.fetchrow(
        "SELECT code, system FROM record.search_token WHERE resource_type = 'Observation' "
        "AND param = 'code' GROUP BY code, system ORDER BY count(*) DESC LIMIT 1"
    )
    condition = await admin.fetchrow(
        "SELECT c.code, c.system FROM record.search_token c JOIN record.search_token s "
        "ON s.resource_type = 'Condition' AND s.param = 'clinical-status' AND s.code = 'active' "
        "AND s.id = c.id WHERE c.resource_type = 'Condition' AND c.param = 'code' "
        "GROUP BY c.code, c.system ORDER BY count(*) DESC LIMIT 1"
    )
    await admin.close()
    return Store(
        resources=made_count + bench_made,
        patients=patients + 1,
        load_seconds=load_seconds,
        index_seconds=index_seconds,
        index_rows=index_total,
        bench_patient=bench_patient,
        bench_resources=bench_made,
        sample_patients=sample,
        common_observation=f"{common['system']}|{common['code']}",
        common_condition=f"{condition['system']}|{condition['code']}",
    )


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _timed(client: Any, urls: Sequence[str], token: str) -> tuple[list[float], int]:
    """Milliseconds of each GET, one at a time; and the bytes of the last answer."""
    headers = {"Authorization": f"Bearer {token}"}
    times: list[float] = []
    size = 0
    for url in urls:
        started = time.perf_counter()
        response = await client.get(url, headers=headers)
        body = response.content
        times.append((time.perf_counter() - started) * 1000)
        if response.status_code != 200:
            raise RuntimeError(f"{url}: {response.status_code} {body[:500]!r}")
        size = len(body)
    return times, size


async def store_latency(
    *,
    resources: int = 1_000_000,
    requests: int = 200,
    kafka_bootstrap: str | None = None,
    database_url: str | None = None,
) -> list[Result]:
    """$everything (a patient with 1,000 resources), the summary and three typical searches,
    p50 and p95 over HTTP, on a store of ``resources`` resources (goals: $everything p95 < 50 ms,
    summary p95 < 100 ms)."""
    import httpx

    kafka = _env(kafka_bootstrap, "JOINEDUP_KAFKA_BOOTSTRAP")
    database = _env(database_url, "JOINEDUP_DATABASE_URL")
    workload = load_workload(stored=True)
    prefix = f"rs-{uuid.uuid4().hex[:8]}"
    async with fresh_database(database, "jd_bench_store") as url:
        await migrate(url)
        store = await load_store(url, workload, resources)
        common: dict[str, Any] = {
            "store_resources": store.resources,
            "store_patients": store.patients,
            "index_rows": store.index_rows,
            "requests": requests,
            "client": "httpx, one request at a time, same machine",
            "database_tls": "off (loopback)",
        }
        results: list[Result] = []
        async with (
            record_service(url, kafka, prefix) as service,
            httpx.AsyncClient(base_url=service.url, timeout=30) as client,
        ):
            base = "/fhir"
            everything = f"{base}/Patient/{store.bench_patient}/$everything?_count=2000"
            warm = max(5, requests // 20)
            # how noisy the machine is: a request that does nothing (no token, no database)
            idle, _ = await _timed(client, ["/health"] * 50, service.token)
            common["health_p50_ms"] = round(percentile(idle, 0.5), 2)
            common["health_p95_ms"] = round(percentile(idle, 0.95), 2)
            common["machine_load_average"] = round(os.getloadavg()[0], 2)
            await _timed(client, [everything] * warm, service.token)
            times, size = await _timed(client, [everything] * requests, service.token)
            results.append(
                _result(
                    "record.everything.p95",
                    percentile(times, 0.95),
                    "ms",
                    **common,
                    patient_resources=store.bench_resources,
                    response_bytes=size,
                    p50_ms=round(percentile(times, 0.5), 2),
                )
            )
            results.append(_result("record.everything.p50", percentile(times, 0.5), "ms", **common))
            summary = f"/summary/{store.bench_patient}"
            await _timed(client, [summary] * warm, service.token)
            times, size = await _timed(client, [summary] * requests, service.token)
            results.append(
                _result(
                    "record.summary.p95",
                    percentile(times, 0.95),
                    "ms",
                    **common,
                    patient_resources=store.bench_resources,
                    response_bytes=size,
                    p50_ms=round(percentile(times, 0.5), 2),
                )
            )
            patients = store.sample_patients
            searches = {
                "identifier": [
                    f"{base}/Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs}" for _, nhs in patients
                ],
                "observation_latest": [
                    f"{base}/Observation?patient={pid}&code={store.common_observation}"
                    "&_sort=-date&_count=10"
                    for pid, _ in patients
                ],
                "condition_cohort": [
                    f"{base}/Condition?code={store.common_condition}"
                    "&clinical-status=active&_count=50"
                ],
            }
            for name, urls in searches.items():
                cycle = [urls[n % len(urls)] for n in range(requests)]
                await _timed(client, cycle[:warm], service.token)
                times, size = await _timed(client, cycle, service.token)
                results.append(
                    _result(
                        f"record.search.{name}.p95",
                        percentile(times, 0.95),
                        "ms",
                        **common,
                        query=urls[0].split("?", 1)[1],
                        p50_ms=round(percentile(times, 0.5), 2),
                        response_bytes=size,
                    )
                )
        results.append(
            _result(
                "record.store.load",
                store.resources / store.load_seconds,
                "resources/s",
                load_seconds=round(store.load_seconds, 1),
                index_build_seconds=round(store.index_seconds, 1),
                **common,
                method="COPY (binary) with indexes dropped, then built",
            )
        )
    await delete_topics(kafka, prefix)
    return results


async def _main() -> None:  # pragma: no cover - python -m record.bench [throughput|latency]
    import json

    which = sys.argv[1] if len(sys.argv) > 1 else "all"
    found: list[Result] = []
    if which in ("all", "throughput"):
        found += await kafka_to_committed()
    if which in ("all", "latency"):
        found += await store_latency()
    print(json.dumps(found, indent=1))


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_main())
