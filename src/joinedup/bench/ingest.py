"""Pushing bundles at ingest-gp concurrently, and timing each push."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from joinedup.bench.registry import Tracker, percentile

IN_FLIGHT = 8  # concurrent POSTs


@dataclass
class Pushed:
    """When the first push started, when the last answered, and how long each took."""

    started: float = 0.0
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def latency_params(self) -> dict[str, Any]:
        return {
            "http_p50_ms": round(percentile(self.latencies, 0.50) * 1000, 2),
            "http_p99_ms": round(percentile(self.latencies, 0.99) * 1000, 2),
            "http_max_ms": round(max(self.latencies) * 1000, 2),
        }


async def push_all(
    client: httpx.AsyncClient,
    url: str,
    bundles: Sequence[bytes],
    headers: dict[str, str],
    *,
    in_flight: int = IN_FLIGHT,
    tracker: Tracker | None = None,
) -> Pushed:
    """POST every bundle, ``in_flight`` at a time; any answer but 200 is an error."""
    pushed = Pushed()
    queue = iter(bundles)

    async def sender() -> None:
        for body in queue:
            began = time.perf_counter()
            if not pushed.started:
                pushed.started = began
            response = await client.post(url, content=body, headers=headers)
            took = time.perf_counter() - began
            if response.status_code != 200:
                raise RuntimeError(
                    f"POST {url} answered {response.status_code}: {response.text[:500]}"
                )
            pushed.latencies.append(took)
            if tracker:
                tracker.advance()

    await asyncio.gather(*(sender() for _ in range(in_flight)))
    pushed.finished = time.perf_counter()
    return pushed
