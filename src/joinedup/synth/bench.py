"""Benchmarks of the generator for ``make bench``: patients generated per minute, end to end (all
feeds and the ground truth written and merged), and the peak memory it took.

Each result is ``{"name", "value", "unit", "params"}``.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from joinedup.synth.generate import default_workers, generate


def _peak_rss_mb() -> tuple[float, float]:
    """(this process, the largest finished worker) peak resident memory in MB (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return own, children


def synth_generation_benchmark(
    patients: int = 50_000, years: float = 2.0, workers: int | None = None, seed: int = 2026
) -> list[dict[str, Any]]:
    """Generate ``patients`` x ``years`` into a temporary directory and time it."""
    workers = workers or default_workers()
    params = {"patients": patients, "years": years, "workers": workers, "seed": seed}
    folder = Path(tempfile.mkdtemp(prefix="joinedup-synth-bench-"))
    try:
        began = time.perf_counter()
        manifest = generate(
            folder / "out", patients=patients, seed=seed, years=years, workers=workers
        )
        seconds = time.perf_counter() - began
        size = sum(p.stat().st_size for p in (folder / "out").rglob("*") if p.is_file())
        messages = sum(f["messages"] for f in manifest["feeds"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    own, children = _peak_rss_mb()
    return [
        {
            "name": "synth.generate.patients_per_minute",
            "value": round(patients / seconds * 60.0),
            "unit": "patients/min",
            "params": params,
        },
        {
            "name": "synth.generate.messages_per_second",
            "value": round(messages / seconds),
            "unit": "messages/s",
            "params": params,
        },
        {
            "name": "synth.generate.peak_rss",
            "value": round(max(own, children), 1),
            "unit": "MB",
            "params": params | {"main_process_mb": round(own, 1), "worker_mb": round(children, 1)},
        },
        {
            "name": "synth.generate.output_size",
            "value": round(size / 1e6, 1),
            "unit": "MB",
            "params": params,
        },
    ]
