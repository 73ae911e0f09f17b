"""List, then watch from the list's resourceVersion; renew the watch where it ended; list again on 410 Gone.

An informer's loop, on aiohttp: a watch that ends (timeoutSeconds, a dropped connection, an API server
restart) resumes from the last resourceVersion seen (bookmarks keep it fresh while nothing changes); only when
the API server no longer has that version (410) is the whole set listed again and the table replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from kiln_operator.gateway import metrics
from kiln_operator.gateway.apiserver import Credentials

log = logging.getLogger("kiln.gateway.watch")
MAX_EVENT_BYTES = 8 * 1024 * 1024  # one watch event is one line; larger ones are refused, not buffered
PAGE = 500
BACKOFF_MIN = 0.5
BACKOFF_MAX = 10.0


class Expired(Exception):
    """410 Gone: the resourceVersion is too old to watch from."""


class ApiError(Exception):
    pass


@dataclass
class Watch:
    """One list+watch loop over `path` (e.g. /api/v1/pods), feeding reset(items) and event(type, object)."""

    session: aiohttp.ClientSession
    credentials: Credentials
    path: str
    resource: str  # the metrics label: pods, deployments
    reset: Callable[[list[dict]], None]
    event: Callable[[str, dict], None]
    selector: str = ""
    timeout: int = 300
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN
        while True:
            started, failed = loop.time(), False
            try:
                version = await self._list()
                self.synced.set()
                await self._follow(version)
                metrics.RELISTS.labels(self.resource, "expired").inc()
                log.info("%s: resourceVersion %s expired; listing again", self.path, version)
            except (aiohttp.ClientError, TimeoutError, ValueError, ApiError, Expired) as exc:
                failed = True
                metrics.RELISTS.labels(self.resource, "error").inc()
                log.warning("listing %s failed (%s); again in %.1fs", self.path, exc, backoff)
            # A list that expires again at once (or fails) must not become a tight loop against the API server.
            if failed or loop.time() - started < BACKOFF_MAX:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            else:
                backoff = BACKOFF_MIN

    async def _list(self) -> str:
        items: list[dict] = []
        params = {"limit": str(PAGE), **({"labelSelector": self.selector} if self.selector else {})}
        while True:
            async with self.session.get(self.credentials.server + self.path, params=params,
                                        headers=self.credentials.headers()) as resp:
                body = await self._json(resp)
            items += body.get("items") or []
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                break
            params["continue"] = meta["continue"]
        self.reset(items)
        log.info("listed %d %s at resourceVersion %s", len(items), self.resource, meta.get("resourceVersion"))
        return meta.get("resourceVersion", "")

    async def _follow(self, version: str) -> None:
        """Watch until the version expires (then return); a broken watch resumes from the last version."""
        backoff = BACKOFF_MIN
        while True:
            try:
                version = await self._watch(version)
                backoff = BACKOFF_MIN
            except Expired:
                return
            except (aiohttp.ClientError, TimeoutError, ValueError, ApiError) as exc:
                log.warning("watching %s failed (%s); resuming from %s in %.1fs", self.path, exc, version, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch(self, version: str) -> str:
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(self.timeout), **({"labelSelector": self.selector} if self.selector else {})}
        async with self.session.get(self.credentials.server + self.path, params=params,
                                    headers=self.credentials.headers()) as resp:
            if resp.status == 410:
                raise Expired(version)
            if resp.status != 200:
                raise ApiError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
            while line := await resp.content.readline(max_line_length=MAX_EVENT_BYTES):
                if line.strip():
                    version = self._apply(json.loads(line), version)
        return version

    def _apply(self, event: dict, version: str) -> str:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(version)
            raise ApiError(f"watch error: {obj.get('message') or obj}")
        if kind != "BOOKMARK":
            metrics.WATCH_EVENTS.labels(self.resource).inc()
            self.event(kind, obj)
        return (obj.get("metadata") or {}).get("resourceVersion") or version

    @staticmethod
    async def _json(resp: aiohttp.ClientResponse) -> dict:
        if resp.status == 410:
            raise Expired("list continuation expired")
        if resp.status != 200:
            raise ApiError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
        return await resp.json(content_type=None)
