"""The ``make run`` demo: a few thousand generated patients loaded through the real ingest path
at start-up, so that a new user sees a living system.

The world ends today: its feeds start ``years`` ago. The practices' initial load goes in whole,
then only the last ``recent_days`` of traffic (loading two years of every feed would take the
embedded platform minutes). The generated directory is kept under the data dir and reused.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import orjson
from fastapi import FastAPI
from rich.progress import Progress

from joinedup.synth.generate import generate
from joinedup.synth.replay import Replayer, register_feeds, total_messages


async def load_synthetic_demo(
    app: FastAPI,
    patients: int = 2_500,
    seed: int = 2026,
    years: float = 1.0,
    recent_days: int = 45,
) -> dict[str, Any]:
    """Generate (or reuse) the demo world, replay it into ``app``; return the replay counts."""
    data_dir = app.state.data_dir
    out = data_dir / "synth-demo"
    today = datetime.now(UTC).date()
    start = today - timedelta(days=round(years * 365.25))
    if not _same_world(out, patients, seed, years, start):
        generate(out, patients=patients, seed=seed, years=years, start=start, workers=1)
    tokens = register_feeds(out, data_dir)
    since = (today - timedelta(days=recent_days)).isoformat()
    total = total_messages(out)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://embedded") as client:
        with Progress(transient=True) as progress:
            task = progress.add_task(f"Loading {patients:,} synthetic patients", total=None)
            replayer = Replayer(
                out, client, tokens, concurrency=4, on_sent=lambda: progress.advance(task)
            )
            tally = await replayer.run(since=since)
            progress.update(task, total=tally.sent + tally.rejected, completed=tally.sent)
    await app.state.bus.wait_idle()
    return tally.as_dict() | {"directory": str(out), "messages_in_world": total}


def _same_world(out: Any, patients: int, seed: int, years: float, start: date) -> bool:
    manifest = out / "manifest.json"
    if not manifest.exists():
        return False
    data = orjson.loads(manifest.read_bytes())
    wanted = {"patients": patients, "seed": seed, "years": years, "start": start.isoformat()}
    return all(data.get(key) == value for key, value in wanted.items())
