"""Fixtures of the record's tests: databases (SQLite, and a real PostgreSQL server for the tests
marked ``integration``), the record app on an in-process bus, tokens, and message builders.

Tests that take ``db`` or ``record`` run once on SQLite (embedded mode) and once on PostgreSQL
(distributed mode's database), since the two take different SQL paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text

from fhir_common.bus import InProcessBus
from fhir_common.db import Database
from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id
from joinedup.tokens import user_token
from record import versioning
from record.main import MIGRATIONS, create_app
from record.outbox import Relay
from record.reindex import ensure_index
from record.settings import RecordSettings
from record.tables import SCHEMA, metadata

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"
CORE = SAMPLES / "fhir-r4-core-examples"
NHS_NUMBER = "9434765919"
OTHER_NHS_NUMBER = "9912003888"
FHIR_JSON = "application/fhir+json"
INFRASTRUCTURE = ("JOINEDUP_DATABASE_URL", "JOINEDUP_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="module", autouse=True)
def no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports (a
    distributed-mode shell would otherwise change the mode, feeds file, issuer or database).
    Where PostgreSQL and Kafka are stays (the ``database_url`` and ``kafka_bootstrap`` fixtures
    read it); everything is put back after each module, so tests elsewhere in the same run still
    see it."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_") and name not in INFRASTRUCTURE:
                monkeypatch.delenv(name)
        yield


# --- databases -----------------------------------------------------------------------------------


T = TypeVar("T")


def in_a_thread(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run async set-up work from a sync (session-scoped) fixture, on a loop of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work()).result()


@pytest.fixture(scope="session")
def postgresql_url(database_url: str) -> Iterator[str]:
    """A database of its own on the real PostgreSQL server, migrated once for the session and
    dropped afterwards; each test starts from empty tables (``empty``)."""
    from fhir_common.scratch import create_database, drop_database

    name = f"jd_test_{uuid.uuid4().hex[:10]}"
    test_url = in_a_thread(lambda: create_database(database_url, name))

    async def migrate() -> None:
        database = Database(test_url, SCHEMA)
        try:
            await database.migrate(MIGRATIONS)
            await ensure_index(database)
        finally:
            await database.dispose()

    try:
        in_a_thread(migrate)
        yield test_url
    finally:
        in_a_thread(lambda: drop_database(database_url, name))


async def empty(database: Database) -> None:
    tables = ", ".join(
        f"{SCHEMA}.{t.name}" for t in metadata.sorted_tables if t.name != "index_state"
    )
    async with database.transaction() as session:
        await session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'joinedup.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``db_url`` for a module that fills one store and only reads it in its tests."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('store') / 'joinedup.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[Database]:
    database = Database(db_url, SCHEMA)
    if database.is_sqlite:
        await database.migrate(MIGRATIONS)
        await ensure_index(database)
    else:
        await empty(database)
    try:
        yield database
    finally:
        await database.dispose()


# --- tokens --------------------------------------------------------------------------------------


class Keys:
    """One signing key for the session, and tokens minted by ``joinedup.tokens.user_token``
    (each load of the RSA key costs ~0.1 s, so tokens are minted once)."""

    def __init__(self, data_dir: Path) -> None:
        self.file = RecordSettings(data_dir=data_dir).signing_key_file()
        self.reader = user_token(data_dir)  # user/*.rs
        self.patients_only = user_token(data_dir, scopes=["user/Patient.rs"])
        self.observations_only = user_token(data_dir, scopes=["user/Observation.rs"])
        self.read_no_search = user_token(data_dir, scopes=["user/*.r"])
        self.patient_context = user_token(data_dir, scopes=["patient/*.rs"])
        self.no_medications = user_token(
            data_dir,
            scopes=[
                "user/Patient.rs",
                "user/Condition.rs",
                "user/Encounter.rs",
                "user/AllergyIntolerance.rs",
                "user/Organization.rs",
            ],
        )


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


# --- messages ------------------------------------------------------------------------------------


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / name).read_text())
    return data


def from_feed(
    resource: dict[str, Any], feed: str, key: str, setting: str = "primary", topic: str = ""
) -> Message:
    """The message an ingest service publishes: the resource with its deterministic id, and
    its patient reference (subject or patient) rewritten the same way."""
    resource = copy.deepcopy(resource)
    resource["id"] = resource_id(feed, resource["resourceType"], resource["id"])
    for element in ("subject", "patient"):
        if element in resource and "reference" in resource[element]:
            local = resource[element]["reference"].split("/", 1)[1]
            resource[element] = {"reference": f"Patient/{resource_id(feed, 'Patient', local)}"}
    message = fhir_message(resource, key, event_headers(source=feed, setting=setting))
    if topic:
        return Message(topic=topic, key=message.key, value=message.value, headers=message.headers)
    return message


def gp_patient(nhs_number: str | None = NHS_NUMBER, local_id: str = "example") -> dict[str, Any]:
    patient = sample("Patient-example.json")
    patient["id"] = local_id
    if nhs_number:
        patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": nhs_number})
    return patient


def message(
    resource: dict[str, Any] | bytes, topic: str | None = None, key: str = NHS_NUMBER
) -> Message:
    """A message carrying ``resource`` as it is (no id rewriting)."""
    if isinstance(resource, dict):
        topic = topic or f"fhir.{resource['resourceType']}"
        value = orjson.dumps(resource)
    else:
        value = resource
    assert topic is not None
    return Message(
        topic=topic,
        key=key,
        value=value,
        headers=event_headers(source="gp-a", setting="primary"),
    )


class Kit:
    """Builders for the tests (a fixture: test modules cannot import conftest)."""

    NHS_NUMBER = NHS_NUMBER
    OTHER_NHS_NUMBER = OTHER_NHS_NUMBER
    sample = staticmethod(sample)
    from_feed = staticmethod(from_feed)
    gp_patient = staticmethod(gp_patient)
    message = staticmethod(message)
    resource_id = staticmethod(resource_id)

    @staticmethod
    async def apply(db: Database, *messages: Message) -> versioning.Applied:
        async with db.transaction() as session:
            return await versioning.apply(session, list(messages))

    @staticmethod
    async def store(db: Database, *resources: dict[str, Any]) -> list[versioning.Change]:
        async with db.transaction() as session:
            applied = await versioning.apply(session, [message(r) for r in resources])
        return applied.changes


@pytest.fixture
def kit() -> type[Kit]:
    return Kit


# --- the app -------------------------------------------------------------------------------------


class Record:
    """The record app on an in-process bus, driven through ASGI."""

    def __init__(
        self, app: Any, client: httpx.AsyncClient, bus: InProcessBus, keys: Keys, db_url: str
    ) -> None:
        self.app = app
        self.client = client
        self.bus = bus
        self.keys = keys
        self.db_url = db_url
        self.changes: list[Message] = []
        self.dead: list[Message] = []

    @property
    def relay(self) -> Relay:
        """The app's outbox relay (started with the app)."""
        relay: Relay | None = self.app.state.record.relay
        assert relay is not None, "the record app is not started"
        return relay

    async def publish(self, *messages: Message) -> None:
        await self.bus.publish(list(messages))
        async with asyncio.timeout(20):
            await self.bus.wait_idle()

    async def get(
        self, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        token = self.keys.reader if token is None else token
        sent = {"Authorization": f"Bearer {token}"} if token else {}
        return await self.client.get(path, headers={**sent, **(headers or {})})

    async def bundle(self, path: str, token: str | None = None, **headers: str) -> dict[str, Any]:
        response = await self.get(path, token, headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith(FHIR_JSON)
        found: dict[str, Any] = response.json()
        assert found["resourceType"] == "Bundle", found
        return found

    async def ids(self, path: str, token: str | None = None, **headers: str) -> list[str]:
        found = await self.bundle(path, token, **headers)
        return [
            e["resource"]["id"]
            for e in found.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]


@contextlib.asynccontextmanager
async def running_record(
    data_dir: Path, keys: Keys, db_url: str, *, outbox_grace: float = 0.5
) -> AsyncIterator[Record]:
    """The record app on a fresh in-process bus (and emptied tables, on PostgreSQL). Its outbox
    relay takes rows older than ``outbox_grace`` seconds to be left behind and publishes them."""
    settings = RecordSettings(
        data_dir=data_dir,
        database_url=db_url,
        record_outbox_grace_seconds=outbox_grace,
        record_outbox_poll_seconds=0.2,
    )
    if not db_url.startswith("sqlite"):
        database = Database(db_url, SCHEMA)
        try:
            await empty(database)
        finally:
            await database.dispose()
    settings.signing_key_file().parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(keys.file, settings.signing_key_file())
    bus = InProcessBus()
    app = create_app(settings, bus=bus)
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://record") as client,
    ):
        found = Record(app, client, bus, keys, db_url)

        async def collect_changes(messages: Any) -> None:
            found.changes.extend(messages)

        async def collect_dead(messages: Any) -> None:
            found.dead.extend(messages)

        bus.subscribe("t-changes", collect_changes, service="t", topics=["record.changes"])
        bus.subscribe("t-dead", collect_dead, service="t", topics=["deadletter"])
        await bus.start()
        try:
            yield found
        finally:
            await bus.stop()


@pytest.fixture
async def record(tmp_path: Path, keys: Keys, db_url: str) -> AsyncIterator[Record]:
    async with running_record(tmp_path, keys, db_url) as found:
        yield found


@pytest.fixture(scope="session")
def start_record(keys: Keys) -> Callable[..., Any]:
    """For module-scoped apps, or settings of a test's own: ``async with start_record(data_dir,
    db_url) as record`` (keyword arguments of ``running_record``, e.g. ``outbox_grace=60``)."""

    def start(data_dir: Path, db_url: str, **options: Any) -> Any:
        return running_record(data_dir, keys, db_url, **options)

    return start
