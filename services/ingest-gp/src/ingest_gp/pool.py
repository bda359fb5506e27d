"""The validation pool: checking resources on every core.

Validation is what limits ingest (DESIGN.md "Budgets"; a few thousand resources a second per
core), so a bundle large enough to be worth it and every ``$import`` are checked in a pool of
worker processes (``spawn``: the service process runs threads and an event loop, which ``fork``
would copy in an unknown state). The pool starts on first use and stops with the service. With
``ingest_gp_workers = 0`` everything runs in the service process instead (tests, tiny installs).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import orjson

from fhir_common.errors import Issue
from ingest_gp import fastcheck, workers
from ingest_gp.checks import full_check

log = logging.getLogger(__name__)
T = TypeVar("T")


class Pool:
    def __init__(self, processes: int) -> None:
        self.processes = max(0, processes)
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor | None:
        if self.processes == 0:
            return None
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=workers.warm_up,
            )
        return self._executor

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker process (or here, without a pool)."""
        executor = self._pool()
        if executor is None:
            return function(*args)
        return await asyncio.get_running_loop().run_in_executor(executor, function, *args)

    async def check_all(
        self, items: Sequence[tuple[dict[str, Any], str]], parallel: bool
    ) -> list[list[Issue]]:
        """Issues of each (resource, FHIRPath prefix), in order; [] for a good one.

        The fast check runs here, on every resource (it also makes identifiers canonical, in
        place); only what it does not vouch for goes to the full validator, spread over the
        pool when ``parallel`` and there is one.
        """
        results: list[list[Issue]] = [[] for _ in items]
        doubtful = [
            i for i, (resource, _) in enumerate(items) if not fastcheck.vouches_for(resource)
        ]
        if not doubtful:
            return results
        if not parallel or self.processes == 0 or len(doubtful) < 4:
            for i in doubtful:
                results[i] = full_check(*items[i])
            return results
        encoded = [(orjson.dumps(items[i][0]), items[i][1]) for i in doubtful]
        parts = min(len(encoded), self.processes * 2)
        size = -(-len(encoded) // parts)
        chunks = [encoded[i : i + size] for i in range(0, len(encoded), size)]
        verdicts = await asyncio.gather(*(self.run(workers.check_encoded, c) for c in chunks))
        for i, issues in zip(doubtful, (v for chunk in verdicts for v in chunk), strict=True):
            results[i] = issues
        return results

    def start(self) -> None:
        """Start the workers now (each warms up), not on the first request."""
        executor = self._pool()
        if executor is not None:
            for _ in range(self.processes):
                executor.submit(workers.warm_up)

    def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
