"""Micro-batching that costs nothing when requests do not queue.

Requests hand their decoded rows to the Batcher and await a future. A flush runs on the
event loop right after the requests that arrived in the same loop iteration were queued,
so a lone request is served at once, in a batch of one. Requests that arrive together, or
while the inference thread is busy, are concatenated into one batch (at most
`max_rows` rows; a larger single request runs alone). When some requests have started
arriving but are not queued yet, a flush waits for them, at most `max_latency` seconds.

Three regimes, chosen by the measured average inference time (warm-up seeds it):

* under DIRECT_MAX_S (a small ONNX forest: ~5 µs a row): with nothing queued, a request runs
  the model directly in its handler. A future, a loop callback and a batch would cost more
  than they could save, and requests never queue, so there is never anything to batch;
* under INLINE_MAX_S: requests go through the queue and run inline on the event loop, in
  batches of what arrived together;
* slower: batches run on one dedicated inference thread, so the loop keeps reading requests
  meanwhile, and what arrives while the thread is busy forms the next batch.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from kiln_server.errors import ClientError

DIRECT_MAX_S = 0.00005
INLINE_MAX_S = 0.0005


def concat(parts: list):
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts) if len(parts) > 1 else parts[0]
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(cols) for cols in zip(*parts, strict=True)]


class Batcher:
    def __init__(self, predict, max_rows: int = 32, max_latency_s: float = 0.001, on_batch=None):
        self.predict = predict  # x -> (labels, probs | None)
        self.max_rows = max_rows
        self.max_latency_s = max_latency_s
        self.on_batch = on_batch  # called with (x, n_rows) for every batch run, e.g. metrics
        self.queue: deque = deque()  # (x, n, future, enqueued_at)
        self.queued_rows = 0
        self.arriving = 0  # requests started but not yet queued (bodies being read, decoded)
        self.busy = False
        self.scheduled: asyncio.Handle | asyncio.TimerHandle | None = None
        self.avg_s = 0.0  # moving average of batch inference time
        self._executor: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # Bookkeeping around reading and decoding a request, so a flush knows more rows are on their way:
    # arrive() when a request starts, then either submit() (it is queued) or depart() (it failed).
    def arrive(self) -> None:
        self.arriving += 1

    def depart(self) -> None:
        self.arriving -= 1
        self._hurry()

    def submit(self, x, n: int) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.arriving -= 1
        fut = loop.create_future()
        self.queue.append((x, n, fut, time.perf_counter()))
        self.queued_rows += n
        if not self.busy:
            if self.scheduled is None:
                self.scheduled = loop.call_soon(self._flush)
            else:
                self._hurry()
        return fut

    def can_run_now(self) -> bool:
        return self.avg_s <= DIRECT_MAX_S and not self.queue and not self.busy and self.scheduled is None

    def run_now(self, x, n: int):
        """Run one request's rows at once, in the caller (see can_run_now); ClientError for bad input."""
        self.arriving -= 1
        t0 = time.perf_counter()
        try:
            result = self.predict(x)
        except Exception as exc:
            raise _as_client_error(exc) from exc
        finally:
            self._note(time.perf_counter() - t0)
        if self.on_batch is not None:
            self.on_batch(x, n)
        return result

    def _hurry(self) -> None:
        """A waiting flush need not wait any longer once nothing else is arriving or the batch is full."""
        handle = self.scheduled
        if isinstance(handle, asyncio.TimerHandle) and (self.arriving <= 0 or self.queued_rows >= self.max_rows):
            handle.cancel()
            self.scheduled = self._loop.call_soon(self._flush)

    def seed(self, seconds: float) -> None:
        """Start the inference-time average from a warm-up measurement."""
        self.avg_s = seconds

    def _flush(self) -> None:
        self.scheduled = None
        if self.busy or not self.queue:
            return
        loop = self._loop
        if self.arriving > 0 and self.queued_rows < self.max_rows and self.max_latency_s > 0:
            waited = time.perf_counter() - self.queue[0][3]
            if waited < self.max_latency_s:
                self.scheduled = loop.call_later(self.max_latency_s - waited, self._flush)
                return
        items = [self.queue.popleft()]
        rows = items[0][1]
        while self.queue and rows + self.queue[0][1] <= self.max_rows:
            item = self.queue.popleft()
            items.append(item)
            rows += item[1]
        self.queued_rows -= rows
        x = concat([it[0] for it in items])
        if self.avg_s <= INLINE_MAX_S:
            t0 = time.perf_counter()
            try:
                result = self.predict(x)
            except Exception as exc:
                result = exc
            self._note(time.perf_counter() - t0)
            self._deliver(items, x, rows, result)
            if self.queue:
                self.scheduled = loop.call_soon(self._flush)
        else:
            self.busy = True
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kiln-inference")
            cf = self._executor.submit(self._timed, x)
            cf.add_done_callback(lambda f: loop.call_soon_threadsafe(self._done, items, x, rows, f))

    def _timed(self, x):
        t0 = time.perf_counter()
        try:
            return self.predict(x), time.perf_counter() - t0
        except Exception as exc:
            return exc, time.perf_counter() - t0

    def _done(self, items, x, rows, cf) -> None:
        result, seconds = cf.result()
        self._note(seconds)
        self.busy = False
        self._deliver(items, x, rows, result)
        if self.queue and self.scheduled is None:
            self.scheduled = self._loop.call_soon(self._flush)

    def _note(self, seconds: float) -> None:
        self.avg_s = seconds if self.avg_s == 0 else 0.8 * self.avg_s + 0.2 * seconds

    def _deliver(self, items, x, rows, result) -> None:
        if isinstance(result, Exception):
            if len(items) > 1:
                # One bad request must not fail its neighbours: run each on its own.
                for it in items:
                    try:
                        self._deliver([it], it[0], it[1], self.predict(it[0]))
                    except Exception as exc:
                        self._deliver([it], it[0], it[1], exc)
                return
            fut = items[0][2]
            if not fut.done():
                fut.set_exception(_as_client_error(result))
            return
        if self.on_batch is not None:
            self.on_batch(x, rows)
        label, probs = result
        start = 0
        for _, n, fut, _ in items:
            if not fut.done():
                stop = start + n
                fut.set_result((label[start:stop], None if probs is None else probs[start:stop]))
            start += n

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _as_client_error(exc: Exception) -> Exception:
    """Errors the model raises on well-formed input (unknown category, values it rejects) are 422s."""
    if isinstance(exc, ClientError):
        return exc
    kind = type(exc).__name__
    if isinstance(exc, ValueError | TypeError) or kind in ("InvalidArgument", "InvalidGraph"):
        return ClientError(422, f"the model rejected the input: {kind}: {str(exc)[:500]}")
    return exc
