"""Fixtures of ingest-gp's tests: a running ingest-gp (in-process bus, its own SQLite database,
real HTTP handling through ASGI) with a FHIR feed and a CSV feed registered, and what it
published or dead-lettered.

Test modules cannot import this file under ``--import-mode=importlib``; what they share comes as
fixtures (``gp`` is the running service, ``samples`` the shared sample data).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from fhir_common.auth import LocalSigner
from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER, FHIR_TOPIC_PATTERN, Message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from ingest_gp.main import create_app
from ingest_gp.settings import IngestGpSettings

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"

GP_FEED = Feed(id="gp-test", kind=FeedKind.FHIR, ods="Y01234", setting="primary")
CSV_FEED = Feed(id="community-zc1", kind=FeedKind.CSV, ods="ZC1", setting="community")
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"


INFRASTRUCTURE = ("JOINEDUP_DATABASE_URL", "JOINEDUP_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="module", autouse=True)
def _no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports. Where
    PostgreSQL and Kafka are stays (the ``database_url`` and ``kafka_bootstrap`` fixtures read
    it, once a session), and everything is put back after each module: a session-wide removal
    failed every later test in the run that was the first to ask for Kafka."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_") and name not in INFRASTRUCTURE:
                monkeypatch.delenv(name)
        yield


class Samples:
    root = SAMPLES
    core = SAMPLES / "fhir-r4-core-examples"
    synthea = SAMPLES / "synthea-r4"
    uk_core = SAMPLES / "uk-core-r4-examples"

    def core_example(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.core / name).read_text())
        return data


@pytest.fixture(scope="session")
def samples() -> Samples:
    return Samples()


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA key for the session (generating one costs ~0.1 s)."""
    path = tmp_path_factory.mktemp("keys") / "signing-key.pem"
    LocalSigner.load_or_create(path)
    return path


class Gp:
    """A running ingest-gp, a client for it, and what it published."""

    def __init__(
        self, client: httpx.AsyncClient, bus: InProcessBus, settings: IngestGpSettings, app: Any
    ) -> None:
        self.client = client
        self.bus = bus
        self.settings = settings
        self.app = app
        self.signer = LocalSigner.load_or_create(settings.signing_key_file())
        self.published: list[Message] = []
        self.dead: list[Message] = []

    def token(
        self, feed: Feed = GP_FEED, scopes: list[str] | None = None, org: str | None = None
    ) -> str:
        return self.signer.mint(
            subject=f"feed:{feed.id}",
            scopes=scopes or ["system/*.cu"],
            issuer=self.settings.auth_issuer,
            audience=self.settings.auth_audience,
            feed=feed.id,
            org=org or feed.ods,
        )

    def headers(
        self,
        content_type: str | None = FHIR_JSON,
        *,
        feed: Feed = GP_FEED,
        accept: str | None = None,
        scopes: list[str] | None = None,
    ) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token(feed, scopes)}"}
        if content_type:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        return headers

    async def idle(self) -> None:
        async with asyncio.timeout(20):
            await self.bus.wait_idle()

    async def push(
        self,
        body: bytes | dict[str, Any],
        content_type: str = FHIR_JSON,
        accept: str | None = None,
        scopes: list[str] | None = None,
    ) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.client.post(
            "/fhir",
            content=content,
            headers=self.headers(content_type, accept=accept, scopes=scopes),
        )
        await self.idle()
        return response

    async def csv(
        self, body: bytes, feed: Feed = CSV_FEED, name: str | None = None
    ) -> httpx.Response:
        headers = self.headers("text/csv; charset=utf-8", feed=feed)
        if name:
            headers["X-Extract-Name"] = name
        response = await self.client.post("/csv", content=body, headers=headers)
        await self.idle()
        return response

    async def wait_for_import(self, status_url: str, seconds: float = 60) -> httpx.Response:
        async with asyncio.timeout(seconds):
            while True:
                response = await self.client.get(status_url, headers=self.headers(None))
                if response.status_code != 202:
                    await self.idle()
                    return response
                await asyncio.sleep(0.05)

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        return [
            orjson.loads(m.value)
            for m in self.published
            if resource_type is None or m.topic == f"fhir.{resource_type}"
        ]

    def keys(self, resource_type: str) -> list[str]:
        return [m.key for m in self.published if m.topic == f"fhir.{resource_type}"]


GpFactory = Callable[..., Any]


@pytest.fixture
def gp_factory(tmp_path: Path, signing_key: Path) -> GpFactory:
    """``async with gp_factory(**settings) as gp:`` a running ingest-gp (several may share a
    data directory, one after the other, to test restarts)."""

    @asynccontextmanager
    async def make(**overrides: Any) -> AsyncIterator[Gp]:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "database_url": f"sqlite+aiosqlite:///{tmp_path / 'joinedup.db'}",
            "feeds_file": tmp_path / "feeds.json",
            "ingest_gp_workers": 0,  # a pool costs seconds to start; tests that want one ask
        }
        values.update(overrides)
        settings = IngestGpSettings(**values)
        key = settings.signing_key_file()
        if not key.exists():
            key.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(signing_key, key)
        registry = FeedRegistry(settings.resolved_feeds_file())
        for feed in (GP_FEED, CSV_FEED):
            if registry.get(feed.id) is None:
                registry.add(feed)
        bus = InProcessBus()
        app = create_app(settings, bus=bus)
        async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gp") as client:
                gp = Gp(client, bus, settings, app)

                def collect(into: list[Message]) -> Any:
                    async def handler(messages: Sequence[Message]) -> None:
                        into.extend(messages)

                    return handler

                bus.subscribe(
                    "t-fhir", collect(gp.published), service="t", pattern=FHIR_TOPIC_PATTERN
                )
                bus.subscribe("t-dead", collect(gp.dead), service="t", topics=[DEADLETTER])
                await bus.start()
                try:
                    yield gp
                finally:
                    await bus.stop()

    return make


@pytest.fixture
async def gp(gp_factory: GpFactory) -> AsyncIterator[Gp]:
    async with gp_factory() as running:
        yield running
