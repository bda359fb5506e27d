"""Replay sends a generated world through the real ingest interfaces of the embedded platform,
in process: the GP FHIR feed is acknowledged and reaches the record; HL7 v2 and CSV are counted
as acknowledged or rejected (their endpoints may not exist yet), never lost."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from typer.testing import CliRunner

from joinedup.embedded import create_embedded_app
from joinedup.synth import replay
from joinedup.synth.cli import synth_app
from joinedup.synth.generate import generate
from joinedup.tokens import user_token


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth-replay")
    generate(out, patients=120, seed=8, years=0.5, workers=1)
    return out


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Path]]:
    logging.getLogger().setLevel(logging.WARNING)
    app = create_embedded_app(tmp_path)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            http.app = app  # type: ignore[attr-defined]
            yield http, tmp_path


def _kind_totals(world: Path) -> dict[str, int]:
    manifest = replay.output.read_manifest(world)
    totals: dict[str, int] = {}
    for feed in manifest["feeds"]:
        totals[feed["kind"]] = totals.get(feed["kind"], 0) + feed["lines"]
    return totals


async def test_gp_feeds_are_acknowledged_and_reach_the_record(
    world: Path, client: tuple[httpx.AsyncClient, Path]
) -> None:
    http, data_dir = client
    tokens = replay.register_feeds(world, data_dir)
    gp_feeds = {f.id for f in replay.load_feeds(world) if f.kind == "fhir"}
    tally = await replay.Replayer(world, http, tokens, concurrency=3).run(feeds=gp_feeds)
    fhir = tally.of("fhir")
    assert fhir.sent == _kind_totals(world)["fhir"]
    assert fhir.acknowledged == fhir.sent, tally.reasons
    app = http.app  # type: ignore[attr-defined]
    async with asyncio.timeout(60):
        await app.state.bus.wait_idle()
    nhs = (world / "truth" / "patients.csv").read_text().splitlines()[1].split(",")[1]
    reader = {"Authorization": f"Bearer {user_token(data_dir)}"}
    found = await http.get(
        "/record/fhir/Patient",
        params={"identifier": f"https://fhir.nhs.uk/Id/nhs-number|{nhs}"},
        headers=reader,
    )
    assert found.status_code == 200
    assert found.json().get("total", len(found.json().get("entry", []))) >= 1


async def test_every_message_is_counted_whatever_the_endpoints(
    world: Path, client: tuple[httpx.AsyncClient, Path]
) -> None:
    http, data_dir = client
    tokens = replay.register_feeds(world, data_dir)
    non_gp = {f.id for f in replay.load_feeds(world) if f.kind != "fhir"}
    tally = await replay.Replayer(world, http, tokens, concurrency=2).run(feeds=non_gp)
    totals = _kind_totals(world)
    for kind in ("hl7v2", "csv"):
        counts = tally.of(kind)
        assert counts.acknowledged + counts.rejected == totals[kind], (kind, tally.as_dict())
        assert counts.sent == counts.acknowledged + counts.rejected - counts.unavailable


async def test_rate_limit_and_since(world: Path, client: tuple[httpx.AsyncClient, Path]) -> None:
    http, data_dir = client
    tokens = replay.register_feeds(world, data_dir)
    manifest = replay.output.read_manifest(world)
    everything = replay.total_messages(world)
    recent = sum(1 for _ in replay.messages(world, since=manifest["end"]))
    initial_load = sum(1 for m in replay.messages(world) if m["sent_at"] < manifest["start"])
    assert recent == initial_load < everything
    loop = asyncio.get_running_loop()
    began = loop.time()
    tally = await replay.Replayer(world, http, tokens, rate=40.0).run(limit=20)
    assert tally.sent + tally.rejected == 20
    assert loop.time() - began >= 19 / 40.0


def test_rates_and_acks_are_read() -> None:
    assert replay.parse_rate("500/s") == 500.0
    assert replay.parse_rate("30/min") == 0.5
    assert replay.parse_rate(None) is None
    assert replay.ack_code("MSH|^~\\&|A\rMSA|AA|123") == "AA"
    assert replay.ack_code("MSH|^~\\&|A\nMSA|AE|123|bad") == "AE"
    assert replay.ack_code("not hl7") is None


def test_cli_generates_and_refuses_to_replay_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "world"
    result = runner.invoke(
        synth_app,
        ["generate", "--out", str(out), "--patients", "200", "--years", "0.25", "--workers", "1"],
    )
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").exists()
    missing = runner.invoke(synth_app, ["replay", str(tmp_path / "nothing")])
    assert missing.exit_code != 0
