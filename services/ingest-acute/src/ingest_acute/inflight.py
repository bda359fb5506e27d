"""One message at a time per key, among the connections of one process.

A sender that times out waiting for an ACK often sends the same message again on a new
connection while the first copy is still being processed. Both copies would look up the
receipt before either had written it, and both would be published. Holding the message's
(sender, MSH-10) while it is processed makes the second copy wait and then find the first's
receipt, so it is answered alike and not processed again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Hashable


class KeyedLock:
    def __init__(self) -> None:
        # key -> (its lock, how many callers hold or wait for it); gone when nobody does
        self._locks: dict[Hashable, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (None, 0))
        lock = lock or asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            _, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        """How many keys are held or waited for (none once every caller is done)."""
        return len(self._locks)
