"""The benchmark registry: named async functions, what they return, and what they are given.

A benchmark is an ``async def`` taking a ``Context`` and returning one or more ``Result``s;
``@benchmark("area.thing.measure")`` registers it under that name (``--only`` selects by name
or glob). Its first result should carry the benchmark's own name; further results are named
``<name>.<what>`` (``bus.kafka.throughput.publish``). Size everything with ``ctx.size(full,
quick)`` and put every size used in ``params``, so that a figure can be read on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import Progress, TaskID

T = TypeVar("T")


@dataclass(frozen=True)
class Result:
    """One figure: ``value`` ``unit``, measured over ``seconds``, with the sizes it used."""

    name: str
    value: float
    unit: str
    params: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "unit": self.unit,
            "params": self.params,
            "seconds": self.seconds,
        }


class Skip(Exception):  # noqa: N818 - it is not an error: the benchmark cannot run here
    """Raised by a benchmark that cannot run here (say, no Kafka): noted, not a failure."""


@dataclass
class Context:
    """What a running benchmark is given: its size class, the console and the progress bars."""

    quick: bool
    console: Console
    progress: Progress

    def size(self, full: T, quick: T) -> T:
        return quick if self.quick else full

    def env(self, name: str) -> str:
        """The environment variable ``name``, or ``Skip`` saying it is needed."""
        value = os.environ.get(name, "").strip()
        if not value:
            raise Skip(f"{name} is not set (make bench exports it)")
        return value

    def note(self, text: str) -> None:
        self.console.print(f"  [dim]{text}[/]")

    @contextlib.contextmanager
    def track(self, description: str, total: float | None) -> Iterator[Tracker]:
        """A progress bar for the duration of the block, gone when it ends."""
        task = self.progress.add_task(description, total=total)
        try:
            yield Tracker(self.progress, task)
        finally:
            self.progress.remove_task(task)


@dataclass(frozen=True)
class Tracker:
    progress: Progress
    task: TaskID

    def advance(self, amount: float = 1) -> None:
        self.progress.advance(self.task, amount)

    def update(self, completed: float) -> None:
        self.progress.update(self.task, completed=completed)


BenchFunction = Callable[[Context], Awaitable[Result | Sequence[Result]]]


@dataclass(frozen=True)
class Benchmark:
    name: str
    function: BenchFunction
    description: str

    async def run(self, ctx: Context) -> list[Result]:
        outcome = await self.function(ctx)
        return [outcome] if isinstance(outcome, Result) else list(outcome)


REGISTRY: dict[str, Benchmark] = {}


def benchmark(name: str, description: str = "") -> Callable[[BenchFunction], BenchFunction]:
    """Register ``function`` as the benchmark ``name`` (run in registration order)."""

    def register(function: BenchFunction) -> BenchFunction:
        if name in REGISTRY:
            raise ValueError(f"benchmark {name!r} registered twice")
        doc = (function.__doc__ or "").strip().splitlines()
        REGISTRY[name] = Benchmark(name, function, description or (doc[0] if doc else ""))
        return function

    return register


def rate(count: float, seconds: float) -> float:
    """``count`` per second, refusing a measurement too short to mean anything."""
    if seconds <= 0:
        raise ValueError("a measured interval must be positive")
    return count / seconds


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in (0, 1]) of a non-empty sample."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = math.ceil(round(fraction * len(ordered), 9))
    return ordered[min(max(rank, 1), len(ordered)) - 1]
