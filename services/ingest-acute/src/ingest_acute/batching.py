"""Group commit: many concurrent callers, one database round trip per batch.

Each MLLP connection handles its messages one at a time, so a busy listener has many
connections each waiting on a small query. ``Batcher`` gathers whatever requests are waiting
into one call of ``work`` (one SELECT ... IN, one multi-row INSERT). A batch is taken one
event-loop pass after its first request arrives (one "tick"): every connection whose bytes are
already in hand runs up to its own request in that pass, so they share the round trip (at 32
busy connections a batch holds about 14 requests); requests that arrive while a batch is in
hand form the next one.
Per-caller order is kept because each caller waits for its own answer before it asks again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


class Batcher(Generic[Request, Answer]):
    def __init__(
        self,
        work: Callable[[Sequence[Request]], Awaitable[Sequence[Answer]]],
        *,
        max_batch: int = 500,
        name: str = "batcher",
    ) -> None:
        self._work = work
        self._max_batch = max_batch
        self._name = name
        self._waiting: list[tuple[Request, asyncio.Future[Answer]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def submit(self, request: Request) -> Answer:
        future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # one tick: let the other ready connections ask too
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            try:
                answers = await self._work([request for request, _ in batch])
            except asyncio.CancelledError:
                _fail(batch, RuntimeError(f"{self._name} stopped"))
                _fail(self._waiting, RuntimeError(f"{self._name} stopped"))
                self._waiting.clear()
                raise
            except Exception as error:
                _fail(batch, error)
                continue
            if len(answers) != len(batch):
                _fail(batch, RuntimeError(f"{self._name}: {len(answers)} answers for {len(batch)}"))
                continue
            for (_, future), answer in zip(batch, answers, strict=True):
                if not future.done():
                    future.set_result(answer)

    async def close(self) -> None:
        if self._runner is not None and not self._runner.done():
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner


def _fail(batch: Sequence[tuple[object, asyncio.Future[Answer]]], error: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(error)
