"""Ask the operator for a replica of a Deployment that has no ready pod: POST {KILN_WAKE_URL}/wake/<ns>/<name>.

Fire and forget: the waiting requests learn of the new pod from the pod watch, not from this call. One call
in flight per Deployment, and at most one every REPEAT seconds while requests keep waiting (the operator
may have been restarting when the first one went out).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable

import aiohttp

from kiln_operator.gateway import metrics

log = logging.getLogger("kiln.gateway.wake")
REPEAT = 5.0
TIMEOUT = 5.0


class Waker:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self._session: aiohttp.ClientSession | None = None
        self._last: dict[Hashable, float] = {}
        self._tasks: set[asyncio.Task] = set()

    def due(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        return last is None or now - last >= REPEAT

    def wake(self, key: tuple[str, str]) -> bool:
        """Send a wake for key unless one went out less than REPEAT s ago; True when one is sent."""
        now = time.monotonic()
        if not self.base_url or not self.due(key, now):
            return False
        self._last[key] = now
        if len(self._last) > 4096:  # forget Deployments not woken lately; the map stays small
            self._last = {k: t for k, t in self._last.items() if now - t < REPEAT}
        task = asyncio.get_running_loop().create_task(self._post(*key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _post(self, namespace: str, name: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT))
        url = f"{self.base_url}/wake/{namespace}/{name}"
        try:
            async with self._session.post(url) as resp:
                body = (await resp.content.read(2048)).decode(errors="replace")
                outcome = "accepted" if resp.status < 300 else "refused"
                if outcome == "refused":
                    log.warning("wake %s/%s: the operator answered %d: %s", namespace, name, resp.status, body)
        except (aiohttp.ClientError, TimeoutError) as exc:
            outcome = "error"
            log.warning("wake %s/%s: %s unreachable (%s)", namespace, name, url, exc or type(exc).__name__)
        metrics.WAKES.labels(outcome).inc()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._session is not None:
            await self._session.close()
