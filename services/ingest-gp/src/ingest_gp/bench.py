"""Benchmarks of ingest-gp (issue 5, point 8), for ``make bench`` to run.

Each is an ``async def`` returning result dicts ``{"name", "value", "unit", "params"}``:

* ``bundles_http``: resources/s from HTTP transaction bundles into Kafka.
* ``ndjson_import``: resources/s from an NDJSON ``$import`` into Kafka.
* ``ndjson_import_memory``: peak memory (RSS) of the service importing a ~200 MB NDJSON file,
  and its rate.
* ``per_resource_cpu``: microseconds of CPU per resource of the work every resource needs, on
  one core (no Kafka, no PostgreSQL): what the two rates above can at best be.

ingest-gp runs as its own process (``python -m joinedup serve ingest-gp``: distributed mode, a
fresh PostgreSQL database, the real Kafka broker, its validation pool), driven over real HTTP
from this process. All need ``JOINEDUP_KAFKA_BOOTSTRAP`` and ``JOINEDUP_DATABASE_URL``; without
them they raise ``LookupError`` (the bench runner reports a skip).

The data are the Synthea records of the shared samples, copied with fresh ids as often as
needed (every resource distinct, so nothing is skipped as unchanged).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fhir_common.scratch import create_database, drop_database

SAMPLES = Path(__file__).resolve().parents[4].parent / "shared" / "samples" / "synthea-r4"
ISSUER = "ingest-gp-bench"
FEED_ID = "bench-gp"
IN_FLIGHT = 8
READY_LIMIT = 120.0
WAIT_LIMIT = 1800.0
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _samples_dir() -> Path:
    configured = os.environ.get("JOINEDUP_SAMPLES_DIR")
    if configured:
        return Path(configured) / "synthea-r4"
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "samples" / "synthea-r4"
        if candidate.is_dir():
            return candidate
    raise LookupError("the Synthea samples (shared/samples/synthea-r4) are not found")


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise LookupError(f"{name} is not set (make bench exports it)")
    return value


def result(name: str, value: float, unit: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "value": round(value, 2), "unit": unit, "params": params}


# --- data ----------------------------------------------------------------------------------------


def synthea_bundles() -> list[bytes]:
    return [p.read_bytes() for p in sorted(_samples_dir().glob("*.json"))]


def renamed(data: bytes, copy: int) -> bytes:
    """The same record with every UUID replaced by another, different for each ``copy``."""
    if copy == 0:
        return data
    space = uuid.UUID(int=copy)
    return _UUID.sub(lambda m: str(uuid.uuid5(space, m.group().decode())).encode(), data)


def bundle_copies(count: int) -> tuple[list[bytes], int]:
    """``count`` transaction bundles (the Synthea records over and over, fresh ids)."""
    originals = synthea_bundles()
    bundles = [
        renamed(originals[i % len(originals)], i // len(originals) + 1) for i in range(count)
    ]
    resources = sum(len(orjson.loads(b)["entry"]) for b in bundles)
    return bundles, resources


def ndjson_lines(bundle: bytes) -> Iterator[bytes]:
    """A bundle's resources as NDJSON lines, ``urn:uuid:`` references made relative."""
    data = orjson.loads(bundle)
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in data["entry"]}
    text = bundle
    for full_url, resource_type in types.items():
        text = text.replace(f'"{full_url}"'.encode(), f'"{resource_type}/{full_url[9:]}"'.encode())
    for entry in orjson.loads(text)["entry"]:
        yield orjson.dumps(entry["resource"])


FRESH_COPIES = 1000  # copy numbers of files with ids no warm-up file used


def write_ndjson(path: Path, target_bytes: int, first_copy: int = 1) -> int:
    """Write Synthea resources (fresh ids per copy, copies numbered from ``first_copy``: a file
    whose ids no earlier one used starts far enough on) until the file holds ``target_bytes``."""
    originals = synthea_bundles()
    written = lines = 0
    copy = first_copy
    with path.open("wb") as sink:
        while written < target_bytes:
            for original in originals:
                for line in ndjson_lines(renamed(original, copy)):
                    sink.write(line + b"\n")
                    written += len(line) + 1
                    lines += 1
                if written >= target_bytes:
                    break
            copy += 1
    return lines


# --- the service under test ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Service:
    url: str
    process: asyncio.subprocess.Process
    token: str
    import_dir: Path
    bootstrap: str = ""
    group_prefix: str = ""

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the service and its pool workers so far."""
        total = _cpu(self.process.pid, children=True)
        for child in _children(self.process.pid):
            total += _cpu(child, children=False)
        return total

    async def caught_up(self, limit: float = 180.0) -> None:
        """Wait until ingest-gp's fhir.Patient consumer has read what is on the topic (the
        warm-up's Patients included), so that it is not what is measured."""
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.admin import AIOKafkaAdminClient

        group = f"{self.group_prefix}ingest-gp.patients"
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap)
        await admin.start()
        await consumer.start()
        try:
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                consumer.subscribe(["fhir.Patient"])
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic("fhir.Patient") or set()
                partitions = [TopicPartition("fhir.Patient", p) for p in parts]
                ends = await consumer.end_offsets(partitions) if partitions else {}
                done = await admin.list_consumer_group_offsets(group)
                if all(tp in done and done[tp].offset >= end for tp, end in ends.items()):
                    return
                await asyncio.sleep(1)
        finally:
            await consumer.stop()
            await admin.close()

    def headers(self, content_type: str = "application/fhir+json") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", "Content-Type": content_type}

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of the service process and of its pool workers."""
        peaks = {"service": _vm(self.process.pid, "VmHWM")}
        for child in _children(self.process.pid):
            peaks[f"worker-{child}"] = _vm(child, "VmHWM")
        return peaks


def _vm(pid: int, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu(pid: int, children: bool) -> float:
    """utime + stime (and, with ``children``, that of children waited for) in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


@contextlib.asynccontextmanager
async def fresh_database(database_url: str, name: str) -> AsyncIterator[str]:

    url = await create_database(database_url, name)
    try:
        yield url
    finally:
        await drop_database(database_url, name)


@contextlib.asynccontextmanager
async def running_service(workers: int = 2, batch: int = 1000) -> AsyncIterator[Service]:
    """ingest-gp as its own process on a fresh database and the real broker."""
    import httpx

    from fhir_common.auth import LocalSigner
    from fhir_common.bus.kafka import start_groups_at_end
    from fhir_common.feeds import Feed, FeedKind, FeedRegistry

    bootstrap = _env("JOINEDUP_KAFKA_BOOTSTRAP")
    database_url = _env("JOINEDUP_DATABASE_URL")
    run = uuid.uuid4().hex[:10]
    with tempfile.TemporaryDirectory(prefix="ingest-gp-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        signer = LocalSigner.load_or_create(workdir / "issuer" / "key.pem")
        (workdir / "public.pem").write_text(signer.public_key_pem())
        feed = Feed(id=FEED_ID, kind=FeedKind.FHIR, ods="Y09009", setting="primary")
        FeedRegistry(workdir / "feeds.json").add(feed)
        token = signer.mint(
            subject=f"feed:{feed.id}",
            scopes=["system/*.cu"],
            issuer=ISSUER,
            audience=ISSUER,
            ttl_seconds=7200,
            feed=feed.id,
        )
        async with fresh_database(database_url, f"jd_gpbench_{run}") as url:
            # The service's fhir.Patient consumer is a new group each run: on a long-lived
            # broker it would first replay every earlier run's Patients (minutes, and not what
            # is measured). It starts where the topics end now.
            await start_groups_at_end(bootstrap, [f"gpbench-{run}.ingest-gp.patients"])
            port = _free_port()
            env = {
                **os.environ,
                "JOINEDUP_MODE": "distributed",
                "JOINEDUP_DATABASE_URL": url,
                "JOINEDUP_KAFKA_BOOTSTRAP": bootstrap,
                "JOINEDUP_KAFKA_GROUP_PREFIX": f"gpbench-{run}.",
                "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(workdir / "public.pem"),
                "JOINEDUP_AUTH_ISSUER": ISSUER,
                "JOINEDUP_AUTH_AUDIENCE": ISSUER,
                "JOINEDUP_FEEDS_FILE": str(workdir / "feeds.json"),
                "JOINEDUP_DATA_DIR": str(workdir),
                "JOINEDUP_INGEST_GP_WORKERS": str(workers),
                "JOINEDUP_INGEST_GP_IMPORT_BATCH": str(batch),
                "JOINEDUP_LOG_LEVEL": "WARNING",
            }
            log = (workdir / "ingest-gp.log").open("wb")
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "joinedup", "serve", "ingest-gp", "--port", str(port),
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            service = Service(
                f"http://127.0.0.1:{port}",
                process,
                token,
                workdir / "imports",
                bootstrap,
                f"gpbench-{run}.",
            )
            try:
                async with httpx.AsyncClient(timeout=5) as client:
                    deadline = time.monotonic() + READY_LIMIT
                    while True:
                        with contextlib.suppress(httpx.HTTPError):
                            if (await client.get(f"{service.url}/ready")).status_code == 200:
                                break
                        if process.returncode is not None or time.monotonic() > deadline:
                            tail = (workdir / "ingest-gp.log").read_text()[-3000:]
                            raise RuntimeError(f"ingest-gp did not start: {tail}")
                        await asyncio.sleep(0.3)
                yield service
            finally:
                if process.returncode is None:
                    process.terminate()
                    try:
                        await asyncio.wait_for(process.wait(), 30)
                    except TimeoutError:
                        process.kill()
                log.close()


# --- HTTP bundles --------------------------------------------------------------------------------


async def _push_all(service: Service, bundles: list[bytes]) -> tuple[float, float, list[float]]:
    import httpx

    queue = iter(bundles)
    latencies: list[float] = []
    started = time.perf_counter()

    async def sender(client: httpx.AsyncClient) -> None:
        for body in queue:
            began = time.perf_counter()
            response = await client.post(
                f"{service.url}/fhir", content=body, headers=service.headers()
            )
            if response.status_code != 200:
                raise RuntimeError(
                    f"POST /fhir answered {response.status_code}: {response.text[:300]}"
                )
            latencies.append(time.perf_counter() - began)

    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with httpx.AsyncClient(timeout=WAIT_LIMIT, limits=limits) as client:
        await asyncio.gather(*(sender(client) for _ in range(IN_FLIGHT)))
    return started, time.perf_counter(), latencies


async def bundles_http(quick: bool = False) -> list[dict[str, Any]]:
    """Transaction bundles (Synthea records, ~200 resources each) POSTed to ingest-gp, 8 at a
    time: resources/s from the first POST to the last answer (an answer means published)."""
    warmup, _ = bundle_copies(4)
    bundles, resources = bundle_copies(10 if quick else 80)
    bundles = [renamed(b, 10_000) for b in bundles]  # not the warm-up's ids
    async with running_service() as service:
        await _push_all(service, warmup)
        await service.caught_up()
        cpu_before = service.cpu_seconds()
        started, finished, latencies = await _push_all(service, bundles)
        cpu = service.cpu_seconds() - cpu_before
    seconds = finished - started
    latencies.sort()
    params = {
        "bundles": len(bundles),
        "resources": resources,
        "resources_per_bundle": round(resources / len(bundles), 1),
        "in_flight": IN_FLIGHT,
        "seconds": round(seconds, 3),
        "http_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
        "http_max_ms": round(latencies[-1] * 1000, 1),
        "service_cpu_seconds": round(cpu, 2),
        "resources_per_service_cpu_second": round(resources / cpu, 1) if cpu else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "service": "1 process + 2 validation workers, PostgreSQL, Kafka",
    }
    return [result("ingest_gp.bundles.http", resources / seconds, "resources/s", params)]


# --- NDJSON import -------------------------------------------------------------------------------


async def _import(service: Service, path: Path) -> tuple[float, dict[str, Any], float]:
    """Kick off an import of ``path`` (by file:// URL) and wait for it; seconds, report, and
    the peak service RSS seen while it ran (MB)."""
    import httpx

    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "input", "part": [{"name": "url", "valueUrl": path.as_uri()}]}],
    }
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.perf_counter()
        kick = await client.post(
            f"{service.url}/fhir/$import", content=orjson.dumps(params), headers=service.headers()
        )
        if kick.status_code != 202:
            raise RuntimeError(f"$import answered {kick.status_code}: {kick.text[:300]}")
        status_url = kick.headers["Content-Location"]
        async with asyncio.timeout(WAIT_LIMIT):
            while True:
                status = await client.get(status_url, headers=service.headers())
                if status.status_code != 202:
                    break
                await asyncio.sleep(0.2)
        seconds = time.perf_counter() - started
    if status.status_code != 200:
        raise RuntimeError(f"import ended {status.status_code}: {status.text[:500]}")
    return seconds, status.json(), 0.0


async def ndjson_import(quick: bool = False) -> list[dict[str, Any]]:
    """An NDJSON file of Synthea resources imported by ``$import``: resources/s from kick-off
    to the job's completion (everything published); then the same file again (nothing new:
    every line skipped by its digest)."""
    async with running_service() as service:
        service.import_dir.mkdir(parents=True, exist_ok=True)
        warm = service.import_dir / "warm.ndjson"
        write_ndjson(warm, 2_000_000)
        await _import(service, warm)
        await service.caught_up()
        path = service.import_dir / "bench.ndjson"
        size = 10_000_000 if quick else 60_000_000
        lines = await asyncio.to_thread(write_ndjson, path, size, FRESH_COPIES)
        cpu_before = service.cpu_seconds()
        seconds, report, _ = await _import(service, path)
        cpu = service.cpu_seconds() - cpu_before
        again_seconds, again, _ = await _import(service, path)
        file_mb = path.stat().st_size / 2**20
    if report["failed"]:
        raise RuntimeError(f"{report['failed']} lines refused: {report['error'][:3]}")
    params = {
        "lines": lines,
        "file_mb": round(file_mb, 1),
        "published": report["published"],
        "seconds": round(seconds, 3),
        "service_cpu_seconds": round(cpu, 2),
        "resources_per_service_cpu_second": round(report["resources"] / cpu, 1) if cpu else None,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "service": "1 process + 2 validation workers, PostgreSQL, Kafka",
    }
    again_params = {
        "lines": lines,
        "unchanged": again["unchanged"],
        "published": again["published"],
        "seconds": round(again_seconds, 3),
    }
    return [
        result("ingest_gp.ndjson.import", report["resources"] / seconds, "resources/s", params),
        result(
            "ingest_gp.ndjson.reimport_unchanged",
            again["resources"] / again_seconds,
            "resources/s",
            again_params,
        ),
    ]


async def ndjson_import_memory(quick: bool = False) -> list[dict[str, Any]]:
    """Peak RSS of ingest-gp (and of each validation worker) importing a ~200 MB NDJSON file:
    memory must not grow with the file."""
    size = 40_000_000 if quick else 200_000_000
    async with running_service() as service:
        service.import_dir.mkdir(parents=True, exist_ok=True)
        path = service.import_dir / "big.ndjson"
        lines = await asyncio.to_thread(write_ndjson, path, size, FRESH_COPIES)
        file_mb = path.stat().st_size / 2**20
        await service.caught_up()
        before = service.peak_rss_mb()
        seconds, report, _ = await _import(service, path)
        peaks = service.peak_rss_mb()
    service_peak = peaks.pop("service")
    params = {
        "file_mb": round(file_mb, 1),
        "lines": lines,
        "published": report["published"],
        "seconds": round(seconds, 2),
        "rate_resources_per_s": round(report["resources"] / seconds, 1),
        "service_peak_rss_mb_before": round(before.get("service", 0.0), 1),
        "worker_peak_rss_mb": {k: round(v, 1) for k, v in peaks.items()},
        "measured": "VmHWM of /proc/<pid>/status (peak resident set)",
    }
    return [
        result("ingest_gp.ndjson.import.peak_rss", service_peak, "MB", params),
        result(
            "ingest_gp.ndjson.import.peak_rss_workers",
            max(peaks.values()) if peaks else 0.0,
            "MB",
            params,
        ),
    ]


# --- CPU per resource, on one core ---------------------------------------------------------------

#: The stages timed by ``per_resource_cpu``, in the order an ``$import`` line goes through them.
CPU_STAGES = ("parse", "fast_check", "full_validation", "whole_line")


def _time_stages(lines: list[bytes], rounds: int) -> dict[str, float]:
    """Microseconds of CPU per resource for each stage (best of ``rounds``): runs in a pool
    worker, which holds what a validation worker holds (models, GC tuned)."""
    from fhir_common.feeds import Feed, FeedKind
    from fhir_common.validation import validate_resource
    from ingest_gp import fastcheck, workers

    feed = Feed(id=FEED_ID, kind=FeedKind.FHIR, ods="Y09009", setting="primary")
    numbered = list(enumerate(lines, start=1))
    parsed = [orjson.loads(line) for line in lines]
    stages: dict[str, Callable[[], object]] = {
        "parse": lambda: [orjson.loads(line) for line in lines],
        "fast_check": lambda: [fastcheck.vouches_for(r) for r in parsed],
        "full_validation": lambda: [validate_resource(r) for r in parsed],
        "whole_line": lambda: workers.prepare_lines(feed, None, numbered),
    }
    for name in CPU_STAGES:  # warm up: caches, compiled patterns, validators built lazily
        stages[name]()
    best = dict.fromkeys(CPU_STAGES, float("inf"))
    for _ in range(rounds):
        for name in CPU_STAGES:
            began = time.process_time()
            stages[name]()
            best[name] = min(best[name], time.process_time() - began)
    return {name: seconds / len(lines) * 1e6 for name, seconds in best.items()}


async def per_resource_cpu(quick: bool = False) -> list[dict[str, Any]]:
    """CPU per resource of what every ingested resource goes through (parse, the fast check,
    the full R4 validator it stands in for, and an ``$import`` line's whole work: parse, check,
    normalise, serialise) on one core, in a process like a validation worker; no Kafka or
    PostgreSQL. Each goal in resources/s on 2 cores allows at most 2,000,000 / goal µs of CPU
    per resource for everything the machine does, which these figures are set against."""
    from ingest_gp.pool import Pool

    lines = [line for bundle in synthea_bundles() for line in ndjson_lines(bundle)]
    if quick:
        lines = lines[:2_000]
    pool = Pool(1)  # the service's own validation pool, with one worker
    try:
        timed = await pool.run(_time_stages, lines, 1 if quick else 3)
    finally:
        pool.close()
    micros = {name: round(value, 1) for name, value in timed.items()}
    params = {
        "resources": len(lines),
        "microseconds_per_resource": micros,
        "budget_microseconds_for_everything": {"bundles 10,000/s": 200, "ndjson 25,000/s": 80},
        "data": "the Synthea records of the shared samples, as NDJSON lines",
    }
    return [
        result("ingest_gp.cpu.whole_line", micros["whole_line"], "µs/resource", params),
        result("ingest_gp.cpu.fast_check", micros["fast_check"], "µs/resource", params),
        result("ingest_gp.cpu.full_validation", micros["full_validation"], "µs/resource", params),
    ]


if __name__ == "__main__":  # python -m ingest_gp.bench [name ...] [--quick]
    names = [a for a in sys.argv[1:] if not a.startswith("-")] or [
        "bundles_http",
        "ndjson_import",
        "ndjson_import_memory",
        "per_resource_cpu",
    ]
    quick = "--quick" in sys.argv
    for name in names:
        for item in asyncio.run(globals()[name](quick)):
            print(orjson.dumps(item).decode())
