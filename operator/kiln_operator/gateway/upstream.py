"""Keep-alive HTTP/1.1 connections to serving pods, one exchange at a time per connection.

A small client on asyncio protocols and httptools' response parser rather than aiohttp's ClientSession:
the request head is built once as bytes and the response arrives as one body, which measured about twice
the throughput of ClientSession on the same machine (bench/bench_gateway.py). The pods are Kiln's own
servers; responses are still bounded in size and time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httptools

Response = tuple[int, list[tuple[bytes, bytes]], bytes]


class Unreachable(Exception):
    """The pod gave no byte of a response (refused, reset, gone): another pod may be tried."""


class BadResponse(Exception):
    """The pod failed mid-response or sent something unparseable or too large (502)."""


class UpstreamTimeout(Exception):
    """The pod did not answer in time (504)."""


class _Connection(asyncio.Protocol):
    __slots__ = ("transport", "parser", "limit", "future", "headers", "body", "received", "head_only",
                 "keep_alive", "closed", "deadline", "timeout")

    def __init__(self, limit: int):
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.limit = limit
        self.future: asyncio.Future | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.received = False
        self.head_only = False
        self.keep_alive = False
        self.closed = False
        self.deadline = 0.0  # loop time by which the current exchange must be answered (the pool's clock checks)
        self.timeout = 0.0

    # -- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.received:
            self._fail(BadResponse("the pod closed the connection mid-response"))
        else:
            self._fail(Unreachable(f"the pod closed the connection ({exc or 'EOF'})"))

    def data_received(self, data: bytes) -> None:
        if self.future is None:
            self.close()  # bytes nobody asked for: this connection's framing cannot be trusted
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unparseable response: {exc}"))
            self.close()

    # -- httptools callbacks ------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self.head_only:
            # A response to HEAD announces a length but has no body; httptools cannot be told so, hence the
            # connection is not reused.
            self.keep_alive = False
            self._finish()

    def on_body(self, chunk: bytes) -> None:
        self.body += chunk
        if len(self.body) > self.limit:
            self._fail(BadResponse(f"response larger than {self.limit} bytes"))
            self.close()

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        self._finish()

    # -- one exchange ----------------------------------------------------------------------------------
    def send(self, data: Sequence[bytes], timeout: float, head_only: bool) -> asyncio.Future:
        """Write one request; the future gets the response or the reason there is none."""
        loop = asyncio.get_running_loop()
        future = self.future = loop.create_future()
        if self.transport is None or self.transport.is_closing():
            self._fail(Unreachable("the connection closed before the request was sent"))
            return future
        self.headers = []
        self.body = bytearray()
        self.received = False
        self.head_only = head_only
        self.timeout = timeout
        self.deadline = loop.time() + timeout
        self.transport.writelines(data)
        return future

    def _finish(self) -> None:
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.set_result((self.parser.get_status_code(), self.headers, bytes(self.body)))

    def _fail(self, exc: Exception) -> None:
        future, self.future = self.future, None
        if future is not None and not future.done():
            future.set_exception(exc)

    def expire(self, now: float) -> None:
        if self.future is not None and now > self.deadline:
            self._fail(UpstreamTimeout(f"no answer within {self.timeout:g}s"))
            self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections per pod IP."""

    def __init__(self, port: int, timeout: float = 60.0, max_response: int = 64 * 1024 * 1024,
                 connect_timeout: float = 2.0, max_idle: int = 256):
        self.port = port
        self.timeout = timeout
        self.max_response = max_response
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        self._idle: dict[str, list[_Connection]] = {}
        self._busy: set[_Connection] = set()
        self._clock: asyncio.Task | None = None

    def idle(self) -> int:
        return sum(len(c) for c in self._idle.values())

    async def request(self, ip: str, data: Sequence[bytes], head_only: bool = False) -> Response:
        """One exchange (data: the request's head and body) with the pod at ip.

        Raises Unreachable (try another pod), BadResponse or UpstreamTimeout.
        """
        conn = self._take(ip)
        if conn is not None:
            try:
                return await self._exchange(ip, conn, data, head_only)
            except Unreachable:
                pass  # the pod closed an idle connection as we reused it: once more on a fresh one
        conn = await self._connect(ip)
        return await self._exchange(ip, conn, data, head_only)

    def _take(self, ip: str) -> _Connection | None:
        idle = self._idle.get(ip)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _connect(self, ip: str) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self.max_response), ip, self.port), self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot connect to {ip}:{self.port}: {exc or 'timeout'}") from exc
        return conn

    async def _exchange(self, ip: str, conn: _Connection, data: Sequence[bytes], head_only: bool) -> Response:
        if self._clock is None:
            self._clock = asyncio.get_running_loop().create_task(self._tick())
        self._busy.add(conn)
        try:
            response = await conn.send(data, self.timeout, head_only)
        except BaseException:
            # Failed or cancelled (the client went away) mid-exchange: its late response must never be read
            # as the answer to another request.
            conn.close()
            raise
        finally:
            self._busy.discard(conn)
        if conn.keep_alive and not conn.closed:
            idle = self._idle.setdefault(ip, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return response
        conn.close()
        return response

    async def _tick(self) -> None:
        """One clock for every exchange's timeout, instead of a timer armed and cancelled per request."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            now = loop.time()
            for conn in list(self._busy):
                conn.expire(now)

    def forget(self, ip: str) -> None:
        """The pod is gone: close its idle connections now rather than at the next failed reuse."""
        for conn in self._idle.pop(ip, ()):
            conn.close()

    def close(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        for ip in list(self._idle):
            self.forget(ip)
