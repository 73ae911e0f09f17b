"""A work queue of object keys, as client-go's: a key is queued at most once, and never handled twice at once.

A key added while it is being handled is queued again when that handling ends, so the latest
state is always seen. Keys come out by priority (lower first), then in order of arrival: under a
burst, what a user waits for (a training run's Job) goes before bookkeeping. Only the event loop's
thread touches it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Hashable


class WorkQueue:
    def __init__(self, priority: Callable[[Hashable], int] = lambda key: 0) -> None:
        self._priority = priority
        self._order = itertools.count()
        self._queue: asyncio.PriorityQueue = asyncio.PriorityQueue()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = {}

    def __len__(self) -> int:
        return len(self._dirty)

    def outstanding(self) -> int:
        """Keys queued or being handled now: the work in hand (a delayed add does not count)."""
        return len(self._dirty | self._processing)

    def add(self, key: Hashable) -> None:
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._put(key)

    def _put(self, key: Hashable) -> None:
        self._queue.put_nowait((self._priority(key), next(self._order), key))

    def add_after(self, key: Hashable, delay: float) -> None:
        """Queue key after delay seconds; an earlier pending deadline for the same key wins."""
        loop = asyncio.get_running_loop()
        when = loop.time() + max(0.0, delay)
        pending = self._timers.get(key)
        if pending and pending[0] <= when:
            return
        if pending:
            pending[1].cancel()
        self._timers[key] = (when, loop.call_at(when, self._fire, key))

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Hashable:
        _, _, key = await self._queue.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def busy(self, key: Hashable) -> bool:
        """Whether key is queued or being handled now (a delayed add does not count)."""
        return key in self._dirty or key in self._processing

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._put(key)

    def forget(self, key: Hashable) -> None:
        """Drop a pending delayed add (the object is gone)."""
        pending = self._timers.pop(key, None)
        if pending:
            pending[1].cancel()
