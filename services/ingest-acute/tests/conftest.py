"""Fixtures of ingest-acute's tests: the shared samples, feeds for their senders, and a running
ingest-acute (in-process bus, SQLite, MLLP on a free port) to talk to over real sockets.

Test modules cannot import this file under ``--import-mode=importlib``; what they share
comes as fixtures.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager
from hl7.mllp import open_hl7_connection

from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER, Message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from ingest_acute.main import create_app
from ingest_acute.settings import IngestAcuteSettings

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"
NHS_ADT = SAMPLES / "nhs-england-itk-hl7v2-adt"
CONVERTER = SAMPLES / "fhir-converter-hl7v2"

# One hl7v2 feed per sending facility (MSH-4) found in the samples.
FEEDS = [
    Feed(id="rcb-pas", kind=FeedKind.HL7V2, ods="RCB", setting="acute", sender="RCB"),
    Feed(id="ghh-adt", kind=FeedKind.HL7V2, ods="RGH01", setting="acute", sender="GHHSFacility"),
    Feed(
        id="gh-hospital",
        kind=FeedKind.HL7V2,
        ods="RGH02",
        setting="acute",
        sender="GOOD HEALTH HOSPITAL",
    ),
    Feed(id="accmgr", kind=FeedKind.HL7V2, ods="RAM01", setting="acute", sender="1"),
    Feed(id="nintendo", kind=FeedKind.HL7V2, ods="RNI01", setting="acute", sender="NINTENDO"),
    Feed(id="redox", kind=FeedKind.HL7V2, ods="RRD01", setting="acute", sender="RDX"),
    Feed(
        id="ntierprise",
        kind=FeedKind.HL7V2,
        ods="RNT01",
        setting="acute",
        sender="Ntierprise Clinic",
    ),
    Feed(
        id="nist-lab", kind=FeedKind.HL7V2, ods="RNL01", setting="acute", sender="NIST Lab Facility"
    ),
    Feed(
        id="ia-lab",
        kind=FeedKind.HL7V2,
        ods="RIA01",
        setting="acute",
        sender="IA Public Health Lab",
    ),
    Feed(id="ghh-lab", kind=FeedKind.HL7V2, ods="RGL01", setting="acute", sender="ELAB-3"),
    Feed(id="gp-fhir", kind=FeedKind.FHIR, ods="Y01234", setting="primary"),
]


@pytest.fixture(autouse=True)
def no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports (a
    distributed-mode shell would otherwise change the mode, feeds file or database)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_"):
                monkeypatch.delenv(name)
        yield


@dataclass(frozen=True)
class Sample:
    name: str
    path: Path
    data: bytes

    @property
    def trigger(self) -> str:
        header = self.data.split(b"\n", 1)[0].split(b"\r", 1)[0].split(b"|")
        return header[8].decode().split("^")[1] if len(header) > 8 and b"^" in header[8] else ""


def _sample(path: Path, root: Path) -> Sample:
    return Sample(str(path.relative_to(root)), path, path.read_bytes())


def nhs_adt_samples() -> list[Sample]:
    """Every ER7 example of the NHS England ITK set (the scenarios and XML copies are not)."""
    paths = sorted(p for p in NHS_ADT.rglob("*.txt") if "scenario" not in p.name.lower())
    return [_sample(p, NHS_ADT) for p in paths]


def converter_samples() -> list[Sample]:
    return [_sample(p, CONVERTER) for p in sorted((CONVERTER / "input").glob("*.hl7"))]


def converter_expected(sample: Sample) -> list[dict[str, Any]]:
    stem = sample.path.stem
    (found,) = (CONVERTER / "expected-fhir-r4").glob(f"*/{stem}-expected.json")
    bundle = json.loads(found.read_text())
    return [entry["resource"] for entry in bundle["entry"]]


class Samples:
    nhs_adt = staticmethod(nhs_adt_samples)
    converter = staticmethod(converter_samples)
    expected = staticmethod(converter_expected)
    feeds = FEEDS

    @staticmethod
    def nhs(file_name: str) -> Sample:
        """The NHS England example with this file name (the first, where names repeat)."""
        return next(s for s in nhs_adt_samples() if s.path.name == file_name)

    @staticmethod
    def feed(feed_id: str) -> Feed:
        return next(f for f in FEEDS if f.id == feed_id)


@pytest.fixture
def samples() -> type[Samples]:
    return Samples


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests taking ``nhs_adt_sample``, ``nhs_query_sample`` or ``converter_sample`` run once
    for each such sample."""
    queries = [s for s in nhs_adt_samples() if "QueryPatient" in s.name]
    choices = {
        "nhs_adt_sample": [s for s in nhs_adt_samples() if s not in queries],
        "nhs_query_sample": queries,
        "converter_sample": converter_samples(),
    }
    for name, found in choices.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, found, ids=[s.name for s in found])


# ----------------------------------------------------------------------------- running service


@dataclass
class Acute:
    """A running ingest-acute and what it published."""

    app: Any
    bus: InProcessBus
    data_dir: Path
    published: list[Message] = field(default_factory=list)

    @property
    def port(self) -> int:
        port = self.app.state.acute.mllp_port
        assert port, "the MLLP listener is not running"
        return int(port)

    def topic(self, name: str) -> list[Message]:
        return [m for m in self.published if m.topic == name]

    def resources(self, resource_type: str) -> list[dict[str, Any]]:
        return [orjson.loads(m.value) for m in self.topic(f"fhir.{resource_type}")]

    @property
    def dead(self) -> list[Message]:
        return self.topic(DEADLETTER)

    async def idle(self) -> None:
        async with asyncio.timeout(10):
            await self.bus.wait_idle()

    async def send(self, *messages: bytes) -> list[str]:
        """Send over one MLLP connection (python-hl7's client), one ACK per message."""
        reader, writer = await open_hl7_connection("127.0.0.1", self.port)
        try:
            acks = []
            for message in messages:
                writer.writeblock(message)
                await writer.drain()
                async with asyncio.timeout(10):
                    acks.append((await reader.readblock()).decode())
        finally:
            writer.close()
            await writer.wait_closed()
        await self.idle()
        return acks

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="http://test"
        )


def msa(ack: str) -> list[str]:
    """MSA's fields of an ACK (MSA-1 is ``msa(ack)[0]``)."""
    line = next(s for s in ack.split("\r") if s.startswith("MSA"))
    return line.split("|")[1:]


def err(ack: str) -> list[str]:
    return [s for s in ack.split("\r") if s.startswith("ERR")]


class Ack:
    msa = staticmethod(msa)
    err = staticmethod(err)

    @staticmethod
    def code(ack: str) -> str:
        return msa(ack)[0]


@pytest.fixture
def ack() -> type[Ack]:
    return Ack


@pytest.fixture
def acute_settings(tmp_path: Path) -> Callable[..., IngestAcuteSettings]:
    def make(**overrides: Any) -> IngestAcuteSettings:
        values: dict[str, Any] = {
            "data_dir": tmp_path,
            "mllp_host": "127.0.0.1",
            "mllp_port": 0,
            "log_json": False,
            # every resource the tests publish is validated (production samples a share)
            "hl7v2_validate": True,
            **overrides,
        }
        return IngestAcuteSettings(**values)

    registry = FeedRegistry(IngestAcuteSettings(data_dir=tmp_path).resolved_feeds_file())
    for feed in FEEDS:
        registry.add(feed)
    return make


@pytest.fixture
async def acute(
    acute_settings: Callable[..., IngestAcuteSettings], tmp_path: Path
) -> AsyncIterator[Acute]:
    async with running_acute(acute_settings(), tmp_path) as running:
        yield running


@pytest.fixture
def run_acute(
    acute_settings: Callable[..., IngestAcuteSettings], tmp_path: Path
) -> Callable[..., Any]:
    """``async with run_acute(mllp_max_message_bytes=...) as acute``: other settings."""

    def run(**overrides: Any) -> Any:
        return running_acute(acute_settings(**overrides), tmp_path)

    return run


class _Running:
    def __init__(self, settings: IngestAcuteSettings, data_dir: Path) -> None:
        self.settings = settings
        self.data_dir = data_dir
        self.bus = InProcessBus()
        self.app = create_app(settings, self.bus)
        self.manager = LifespanManager(self.app, startup_timeout=60, shutdown_timeout=60)

    async def __aenter__(self) -> Acute:
        running = Acute(self.app, self.bus, self.data_dir)

        async def collect(messages: Sequence[Message]) -> None:
            running.published.extend(messages)

        self.bus.subscribe(
            "test-collector", collect, service="test", pattern=r"fhir\..+|deadletter"
        )
        await self.manager.__aenter__()
        await self.bus.start()
        return running

    async def __aexit__(self, *exc: Any) -> None:
        await self.manager.__aexit__(*exc)  # the listener stops before the bus does
        await self.bus.stop()


def running_acute(settings: IngestAcuteSettings, data_dir: Path) -> _Running:
    return _Running(settings, data_dir)
