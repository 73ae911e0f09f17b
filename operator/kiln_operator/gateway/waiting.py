"""Requests held until a Deployment has a ready pod: capped per Deployment, woken by watch events."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable


class Waiters:
    """Counts the requests waiting per key (at most `cap` each) and wakes them when their key changes.

    A waiter enters once (admit), then awaits changed(key) as often as it needs, and leaves in a `finally`:
    a request that ends in any way, a client disconnect included, leaves nothing behind.
    """

    def __init__(self, cap: int):
        self.cap = cap
        self.total = 0
        self._count: dict[Hashable, int] = {}
        self._futures: dict[Hashable, set[asyncio.Future]] = {}

    def waiting(self, key: Hashable) -> int:
        return self._count.get(key, 0)

    def admit(self, key: Hashable) -> bool:
        n = self._count.get(key, 0)
        if n >= self.cap:
            return False
        self._count[key] = n + 1
        self.total += 1
        return True

    def leave(self, key: Hashable) -> None:
        n = self._count.get(key, 0) - 1
        if n > 0:
            self._count[key] = n
        else:
            self._count.pop(key, None)
        self.total -= 1

    async def changed(self, key: Hashable, timeout: float) -> bool:
        """Wait until notify(key) or timeout; True when notified."""
        future = asyncio.get_running_loop().create_future()
        futures = self._futures.setdefault(key, set())
        futures.add(future)
        try:
            await asyncio.wait_for(future, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            futures.discard(future)
            if not futures and self._futures.get(key) is futures:
                del self._futures[key]

    def notify(self, key: Hashable) -> None:
        for future in self._futures.pop(key, ()):
            if not future.done():
                future.set_result(None)

    def holds(self) -> int:
        """Futures held right now (0 when nobody waits): what a leak would make grow."""
        return sum(len(f) for f in self._futures.values())
