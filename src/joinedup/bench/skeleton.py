"""The walking skeleton under load: transaction bundles pushed to ingest-gp until the record
has committed every resource in them.

* ``skeleton.embedded.ingest``: the whole platform in this process (in-process bus, SQLite),
  driven through ASGI. "Committed" is the record's ``record.changes`` announcement (it is
  published after the commit); the count is then checked in the record's own table.
* ``skeleton.distributed.ingest``: ingest-gp and record as separate ``joinedup serve``
  processes on Kafka and a fresh PostgreSQL database, driven over real HTTP; "committed" is
  what ``SELECT count(*) FROM record.resources`` sees.

Both push a few bundles first (warm-up: connections, model classes, consumer groups) and time
from the first measured POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

from fhir_common.events import RECORD_CHANGES
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.net import free_port
from fhir_common.scratch import create_database, drop_database
from fhir_common.settings import Settings
from joinedup.bench.bus import WAIT_LIMIT, Counter
from joinedup.bench.ingest import IN_FLIGHT, Pushed, push_all
from joinedup.bench.population import Population, build
from joinedup.bench.registry import Context, Result, benchmark, rate

ODS = "Y09001"
POLL_SECONDS = 0.1  # how often the distributed run asks PostgreSQL how much is committed
READY_LIMIT = 120.0  # seconds a service may take to answer /ready
STOP_LIMIT = 20.0  # seconds a service may take to stop after SIGTERM
SERVICES = ("ingest-gp", "record")
ISSUER = "joinedup-bench"  # issuer and audience of the tokens the bench mints


def _feed(feed_id: str) -> Feed:
    return Feed(id=feed_id, kind=FeedKind.FHIR, ods=ODS, setting="primary", description="benchmark")


def _populations(ctx: Context, prefix: str, full: int, quick: int) -> tuple[Population, Population]:
    warmup = build(ctx.size(8, 2), prefix=f"{prefix}w", ods=ODS, seed=1)
    measured = build(ctx.size(full, quick), prefix=prefix, ods=ODS, seed=2)
    return warmup, measured


# What would turn embedded mode into something else (make bench exports the first two for the
# distributed benchmarks); tuning knobs such as JOINEDUP_RECORD_CONSUMER_BATCH still apply.
NOT_EMBEDDED = (
    "JOINEDUP_MODE",
    "JOINEDUP_DATABASE_URL",
    "JOINEDUP_KAFKA_BOOTSTRAP",
    "JOINEDUP_DATA_DIR",
    "JOINEDUP_FEEDS_FILE",
    "JOINEDUP_AUTH_ISSUER",
    "JOINEDUP_AUTH_AUDIENCE",
    "JOINEDUP_AUTH_PUBLIC_KEY_FILE",
    "JOINEDUP_AUTH_JWKS_URL",
)


@contextlib.contextmanager
def embedded_environment() -> Iterator[None]:
    """Hide the settings that point away from embedded mode (SQLite, in-process bus)."""
    hidden = {name: os.environ.pop(name) for name in NOT_EMBEDDED if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(hidden)


def _push_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}


# -- embedded ----------------------------------------------------------------------------


@benchmark("skeleton.embedded.ingest")
async def embedded_ingest(ctx: Context) -> list[Result]:
    """Embedded platform: resources/s from the first POST to committed in the record."""
    from asgi_lifespan import LifespanManager
    from sqlalchemy import func, select

    from fhir_common.bus import InProcessBus
    from joinedup.embedded import create_embedded_app
    from joinedup.tokens import feed_token
    from record.tables import resources

    warmup, population = _populations(ctx, "emb", full=400, quick=30)
    feed = _feed("bench-gp")
    with (
        embedded_environment(),
        tempfile.TemporaryDirectory(prefix="joinedup-bench-", ignore_cleanup_errors=True) as tmp,
    ):
        data_dir = Path(tmp)
        FeedRegistry(Settings(data_dir=data_dir).resolved_feeds_file()).add(feed)
        headers = _push_headers(feed_token(data_dir, feed, ttl_seconds=3600))
        app = create_embedded_app(data_dir)
        async with LifespanManager(app, startup_timeout=READY_LIMIT, shutdown_timeout=60):
            bus: InProcessBus = app.state.bus
            committed = Counter()
            bus.subscribe("bench-changes", committed, service="bench", topics=[RECORD_CHANGES])
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://bench", timeout=WAIT_LIMIT
            ) as client:
                url = "/ingest-gp/fhir"
                committed.expect(warmup.resources)
                await push_all(client, url, warmup.bundles, headers)
                await committed.wait("embedded warm-up")
                async with asyncio.timeout(WAIT_LIMIT):
                    await bus.wait_idle()

                total = warmup.resources + population.resources
                committed.expect(total)
                with ctx.track("embedded: pushing bundles", total=len(population.bundles)) as t:
                    pushed = await push_all(client, url, population.bundles, headers, tracker=t)
                await committed.wait("embedded ingest")
                async with asyncio.timeout(WAIT_LIMIT):
                    await bus.wait_idle()
                idle_at = time.perf_counter()
            record_db = app.state.services["record"].state.ctx.db
            if not record_db.is_sqlite:
                raise RuntimeError(f"embedded record is not on SQLite: {record_db.engine.url!r}")
            async with record_db.engine.connect() as conn:
                in_record = await conn.scalar(
                    select(func.count()).select_from(resources).where(resources.c.source == feed.id)
                )
    if in_record != total:
        raise RuntimeError(f"the record holds {in_record} of the {total} resources pushed")
    seconds = committed.reached_at - pushed.started
    params = {
        **population.params(),
        "in_flight": IN_FLIGHT,
        "warmup_bundles": len(warmup.bundles),
        "warmup_resources": warmup.resources,
        "resources_in_record": in_record,
        "push_seconds": round(pushed.finished - pushed.started, 4),
        "idle_seconds": round(idle_at - pushed.started, 4),
        **pushed.latency_params(),
        "transport": "ASGI in process",
        "database": "SQLite",
    }
    return [
        Result(
            "skeleton.embedded.ingest",
            rate(population.resources, seconds),
            "resources/s",
            params,
            seconds,
        )
    ]


# -- distributed -------------------------------------------------------------------------


@benchmark("skeleton.distributed.ingest")
async def distributed_ingest(ctx: Context) -> list[Result]:
    """ingest-gp and record as processes on Kafka + PostgreSQL: resources/s and POST latency."""
    import asyncpg

    from fhir_common.auth import LocalSigner
    from fhir_common.bus.kafka import start_groups_at_end

    database_url = ctx.env("JOINEDUP_DATABASE_URL")
    bootstrap = ctx.env("JOINEDUP_KAFKA_BOOTSTRAP")
    warmup, population = _populations(ctx, "dist", full=600, quick=40)
    run = uuid.uuid4().hex[:10]
    feed = _feed(f"bench-{run}")
    with tempfile.TemporaryDirectory(prefix="joinedup-bench-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        signer = LocalSigner.load_or_create(workdir / "issuer" / "key.pem")
        token = signer.mint(
            subject=f"feed:{feed.id}",
            scopes=["system/*.cu"],
            issuer=ISSUER,
            audience=ISSUER,
            ttl_seconds=3600,
            feed=feed.id,
        )
        headers = _push_headers(token)
        async with fresh_database(database_url, f"jd_bench_{run}") as (url, dsn):
            env = _service_env(workdir, signer.public_key_pem(), feed, url, bootstrap)
            # groups of this run's own, started at the end of the fhir.* topics: on a broker
            # that other runs used, the record would first replay all they published
            groups = f"bench-{run}."
            env["JOINEDUP_KAFKA_GROUP_PREFIX"] = groups
            await start_groups_at_end(bootstrap, [f"{groups}record", f"{groups}ingest-gp.patients"])
            ctx.note(f"starting {', '.join(SERVICES)} (logs in a temporary directory)")
            async with serving(SERVICES, env, workdir) as urls:
                conn = await asyncpg.connect(dsn)
                try:
                    push_url = f"{urls['ingest-gp']}/fhir"
                    async with httpx.AsyncClient(
                        timeout=WAIT_LIMIT, limits=httpx.Limits(max_connections=IN_FLIGHT)
                    ) as client:
                        await push_all(client, push_url, warmup.bundles, headers)
                        await _committed(conn, feed.id, warmup.resources)
                        # The measured run starts with the record caught up and in its group.

                        total = warmup.resources + population.resources
                        waiting = asyncio.create_task(_committed(conn, feed.id, total))
                        try:
                            with ctx.track(
                                "distributed: pushing bundles", total=len(population.bundles)
                            ) as t:
                                pushed = await push_all(
                                    client, push_url, population.bundles, headers, tracker=t
                                )
                            with ctx.track("distributed: waiting for the record", total=None):
                                committed_at, in_record = await waiting
                        finally:
                            waiting.cancel()
                finally:
                    await conn.close()
    seconds = committed_at - pushed.started
    params = {
        **population.params(),
        "in_flight": IN_FLIGHT,
        "warmup_bundles": len(warmup.bundles),
        "warmup_resources": warmup.resources,
        "resources_in_record": in_record,
        "push_seconds": round(pushed.finished - pushed.started, 4),
        "poll_seconds": POLL_SECONDS,
        "processes": list(SERVICES),
        "client": "this process, same machine",
    }
    return [
        Result(
            "skeleton.distributed.ingest",
            rate(population.resources, seconds),
            "resources/s",
            {**params, **pushed.latency_params()},
            seconds,
        ),
        *_latency_results(pushed, len(population.bundles)),
    ]


def _latency_results(pushed: Pushed, posts: int) -> list[Result]:
    latency = pushed.latency_params()
    seconds = pushed.finished - pushed.started
    params = {"posts": posts, "in_flight": IN_FLIGHT}
    return [
        Result(
            "skeleton.distributed.ingest.http_p50", latency["http_p50_ms"], "ms", params, seconds
        ),
        Result(
            "skeleton.distributed.ingest.http_p99", latency["http_p99_ms"], "ms", params, seconds
        ),
    ]


async def _committed(conn: Any, source: str, expected: int) -> tuple[float, int]:
    """Poll the record until it holds ``expected`` resources from ``source``.

    Returns when it saw them and how many it saw.
    """
    query = "SELECT count(*) FROM record.resources WHERE source = $1"
    found = 0
    try:
        async with asyncio.timeout(WAIT_LIMIT):
            while True:
                found = await conn.fetchval(query, source)
                if found >= expected:
                    return time.perf_counter(), int(found)
                await asyncio.sleep(POLL_SECONDS)
    except TimeoutError:
        raise RuntimeError(
            f"the record committed {found} of {expected} resources in {WAIT_LIMIT:.0f} s"
        ) from None


@contextlib.asynccontextmanager
async def fresh_database(database_url: str, name: str) -> AsyncIterator[tuple[str, str]]:
    """A database of its own on the server of ``database_url``, dropped afterwards.

    Yields its SQLAlchemy URL (for the services) and a plain DSN (for asyncpg).
    """
    from sqlalchemy.engine import make_url

    url = await create_database(database_url, name)
    try:
        yield url, make_url(url).set(drivername="postgresql").render_as_string(False)
    finally:
        await drop_database(database_url, name)


def _service_env(
    workdir: Path, public_key: str, feed: Feed, database_url: str, bootstrap: str
) -> dict[str, str]:
    key_file = workdir / "public.pem"
    key_file.write_text(public_key)
    feeds = workdir / "feeds.json"
    FeedRegistry(feeds).add(feed)
    return {
        **os.environ,
        "JOINEDUP_MODE": "distributed",
        "JOINEDUP_DATABASE_URL": database_url,
        "JOINEDUP_KAFKA_BOOTSTRAP": bootstrap,
        "JOINEDUP_AUTH_PUBLIC_KEY_FILE": str(key_file),
        "JOINEDUP_AUTH_ISSUER": ISSUER,
        "JOINEDUP_AUTH_AUDIENCE": ISSUER,
        "JOINEDUP_FEEDS_FILE": str(feeds),
        "JOINEDUP_DATA_DIR": str(workdir),
    }


@dataclass
class _Process:
    service: str
    process: asyncio.subprocess.Process
    log_path: Path
    log: IO[bytes]

    def tail(self, chars: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


@contextlib.asynccontextmanager
async def serving(
    services: tuple[str, ...], env: dict[str, str], workdir: Path
) -> AsyncIterator[dict[str, str]]:
    """Run each service as ``python -m joinedup serve``; yield their URLs once all are ready.

    On the way out every process gets SIGTERM (the graceful path), and SIGKILL if it has not
    stopped within ``STOP_LIMIT`` seconds.
    """
    running: list[_Process] = []
    urls: dict[str, str] = {}
    try:
        for service in services:
            port = free_port()
            log_path = workdir / f"{service}.log"
            log = _open_log(log_path)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "joinedup", "serve", service, "--port", str(port),
                env=env, stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            running.append(_Process(service, process, log_path, log))
            urls[service] = f"http://127.0.0.1:{port}"
        await _wait_ready(running, urls)
        try:
            yield urls
        except Exception as error:
            tails = "\n".join(f"--- {p.service} log:\n{p.tail(1500)}" for p in running)
            raise RuntimeError(f"{error}\n{tails}") from error
    finally:
        for item in running:
            if item.process.returncode is None:
                item.process.send_signal(signal.SIGTERM)
        for item in running:
            try:
                await asyncio.wait_for(item.process.wait(), STOP_LIMIT)
            except TimeoutError:
                item.process.kill()
                await item.process.wait()
            item.log.close()


async def _wait_ready(running: list[_Process], urls: dict[str, str]) -> None:
    pending = {item.service: item for item in running}
    deadline = time.monotonic() + READY_LIMIT
    async with httpx.AsyncClient(timeout=2) as client:
        while pending:
            for service, item in list(pending.items()):
                if item.process.returncode is not None:
                    raise RuntimeError(
                        f"{service} exited with {item.process.returncode}:\n{item.tail()}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{urls[service]}/ready")).status_code == 200:
                        del pending[service]
            if pending and time.monotonic() > deadline:
                tails = "\n".join(f"--- {s}:\n{i.tail()}" for s, i in pending.items())
                raise RuntimeError(f"not ready in {READY_LIMIT:.0f} s:\n{tails}")
            await asyncio.sleep(0.3)
