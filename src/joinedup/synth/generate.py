"""``generate``: a whole synthetic world into a directory, practice by practice, in parallel.

Practices are the unit of work (``pipeline.run_practice``); they go to a pool of worker processes
and come back as shard files, which are then merged per feed, also in parallel. The output for a
seed is the same byte for byte whatever the number of workers: each practice draws from its own
stream and each patient from theirs, and merges break ties by practice order.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict
from datetime import date
from pathlib import Path
from typing import Any

from joinedup.synth import identity, output, truth
from joinedup.synth.noise import Noise
from joinedup.synth.pipeline import Config, PracticeSummary, run_practice, world_for

DEFAULT_START = date(2024, 4, 1)
Progress = Callable[[str, int, int], None]  # (stage, done, total)


class _InProcess(Executor):
    """An executor that runs tasks where it is: no processes for small worlds and tests."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        from concurrent.futures import Future

        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:  # handed to the caller through the future
            future.set_exception(error)
        return future


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def generate(
    out: Path,
    *,
    patients: int = 50_000,
    seed: int = 2026,
    years: float = 2.0,
    start: date = DEFAULT_START,
    workers: int | None = None,
    noise: Noise | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate into ``out`` (created; existing feed files are replaced); return the manifest."""
    if not 1 <= patients <= identity.max_patients():
        raise ValueError(f"patients must be 1..{identity.max_patients()} (the NHS test range)")
    if years <= 0:
        raise ValueError("years must be positive")
    config = Config(patients=patients, seed=seed, years=years, start=start, noise=noise or Noise())
    world = world_for(seed, patients)
    practices = len(world.practices)
    workers = workers or default_workers()
    out.mkdir(parents=True, exist_ok=True)
    output.remove_shards(out)
    for stale in (out / "feeds", out / "csv", out / "truth"):
        if stale.exists():
            import shutil

            shutil.rmtree(stale)
    began = time.perf_counter()
    dirs = output.shard_dirs(out, practices)
    summaries: list[PracticeSummary] = []
    with _executor(workers, practices) as pool:
        futures = [pool.submit(run_practice, config, i, dirs[i]) for i in range(practices)]
        done = 0
        for future in futures:
            summary = future.result()
            summaries.append(summary)
            done += summary.patients
            if progress:
                progress("patients", done, patients)
        generated = time.perf_counter() - began
        feeds = world.feeds()
        merges = [
            pool.submit(output.merge_feed, out, world, f.id, str(f.kind), practices) for f in feeds
        ]
        lines: dict[str, int] = {}
        for number, (feed, merge) in enumerate(zip(feeds, merges, strict=True), start=1):
            lines[feed.id] = merge.result()
            if progress:
                progress("feeds", number, len(feeds))
    truth_counts = output.write_truth(out, practices)
    output.remove_shards(out)
    elapsed = time.perf_counter() - began
    messages: dict[str, int] = {}
    for summary in summaries:
        for feed_id, count in summary.messages.items():
            messages[feed_id] = messages.get(feed_id, 0) + count
    manifest = {
        "format_version": output.FORMAT_VERSION,
        "generator": "joinedup.synth",
        "seed": seed,
        "patients": patients,
        "years": years,
        "start": start.isoformat(),
        "end": _end(start, years),
        "index_date": _end(start, config.index_day / 365.25),
        "horizons_days": list(truth.HORIZONS),
        "alert_rules": truth.ALERT_RULES,
        "noise": asdict(config.noise),
        "practices": practices,
        "mdgs": len(world.mdgs),
        "feeds": [
            {
                **feed.model_dump(mode="json"),
                "file": f"feeds/{feed.id}.ndjson",
                "messages": messages.get(feed.id, 0),
                "lines": lines[feed.id],
            }
            for feed in feeds
        ],
        "truth": {
            "patients": "truth/patients.csv",
            "events": "truth/events.ndjson",
            "alerts": "truth/alerts.ndjson",
            **{f"{k}_count": v for k, v in truth_counts.items()},
        },
        "timing": {
            "workers": workers,
            "generate_seconds": round(generated, 3),
            "total_seconds": round(elapsed, 3),
            "patients_per_minute": round(patients / elapsed * 60.0),
        },
    }
    output.write_json(out / "world.json", world.to_json())
    output.write_json(out / "feeds.json", [f.model_dump(mode="json") for f in feeds])
    output.write_json(out / "manifest.json", manifest)
    return manifest


def _executor(workers: int, practices: int) -> Executor:
    if workers <= 1 or practices <= 1:
        return _InProcess()
    # spawn, not fork: generation may be started from a process with threads or an event loop
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(max_workers=min(workers, practices), mp_context=context)


def _end(start: date, years: float) -> str:
    from datetime import timedelta

    return (start + timedelta(days=round(years * 365.25))).isoformat()
