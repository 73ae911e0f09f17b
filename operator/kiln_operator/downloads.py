"""Bring-your-own https artifacts, downloaded on the event loop and never in a reconcile worker.

A URL that drips one byte every few seconds would hold a worker thread for as long as the fetch lasts;
eight of them would hold every worker of every namespace. So a Model's reconcile only *asks* for a
download (Result.downloads); the controller runs it here as an asyncio task (kiln_contract.fetch: the
SSRF guard, the resolved address pinned, a size cap, an overall deadline, sha256 while streaming), at
most `concurrency` at a time, and queues the Model again when the file is there or the fetch failed.
The next reconcile imports the verified file (a quick S3 upload) and releases it.

Disk use is bounded by concurrency × KILN_FETCH_MAX_BYTES; nothing survives an operator restart (the
Model simply asks again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path

from kiln_contract import fetch as remote
from kiln_contract import netguard

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (uri, sha256)


@dataclass
class Download:
    path: Path | None = None  # the verified file, once fetched
    error: str | None = None  # why it could not be fetched (for the Model's status: no port-scan detail)
    waiting: set = field(default_factory=set)  # reconcile keys to queue when it ends

    @property
    def finished(self) -> bool:
        return self.path is not None or self.error is not None


class Downloads:
    def __init__(self, concurrency: int, on_done: Callable[[Hashable], None], directory: Path | None = None,
                 fetch: Callable = remote.fetch_to_file):
        self.directory = directory or Path(tempfile.mkdtemp(prefix="kiln-downloads-"))
        self._fetch = fetch  # tests pass one that trusts their own loopback server
        self._items: dict[Key, Download] = {}
        self._tasks: dict[Key, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(concurrency)
        self._on_done = on_done

    def finished(self) -> dict[Key, Download]:
        """What reconciles may use now (a copy: they run in threads)."""
        return {k: Download(d.path, d.error) for k, d in self._items.items() if d.finished}

    def want(self, owner: Hashable, uri: str, sha256: str) -> None:
        key = (uri, sha256.lower())
        item = self._items.setdefault(key, Download())
        if item.finished:
            self._on_done(owner)
            return
        item.waiting.add(owner)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._run(key, item))

    def release(self, uri: str, sha256: str) -> None:
        """The file was imported (or its failure recorded): forget it and free its disk."""
        item = self._items.pop((uri, sha256.lower()), None)
        if item and item.path:
            item.path.unlink(missing_ok=True)

    async def _run(self, key: Key, item: Download) -> None:
        uri, sha256 = key
        dest = self.directory / hashlib.sha256(f"{uri}\0{sha256}".encode()).hexdigest()
        try:
            async with self._slots:
                await self._fetch(uri, dest, sha256=sha256)
            item.path = dest
        except remote.FetchError as exc:
            if exc.detail:
                log.warning("BYO artifact %s: %s (%s)", uri, exc.why, exc.detail)
            item.error = str(exc)
        except netguard.UnsafeURL as exc:
            item.error = str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever went wrong is the Model's to see
            log.exception("BYO artifact %s", uri)
            item.error = f"cannot fetch {uri}: {type(exc).__name__}"
        finally:
            self._tasks.pop(key, None)
        for owner in item.waiting:
            self._on_done(owner)
        item.waiting.clear()

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        shutil.rmtree(self.directory, ignore_errors=True)
