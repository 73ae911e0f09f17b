"""The HTTP/1.1 server for prediction traffic: asyncio protocols and httptools' parser (llhttp, as in uvicorn).

Not aiohttp's web server: measured on the same machine (bench/bench_gateway.py), this one carries 15-30 % more
requests per second through the gateway, because a request is one parse into bytes and a response one
writelines, with no request or response objects in between. What a server owes its clients is here:

- bounds: request line and headers (8 KiB URL, 64 KiB and 128 headers in all, else 414/431), the body
  (Content-Length over the limit is refused with 413 before a byte of it is read; a chunked body when it
  grows past it), a request whose head or body trickles (408 after body_timeout), idle keep-alive connections
  (closed after idle_timeout), all enforced by one clock per listener rather than timers per request;
- Expect: 100-continue is answered as soon as the headers are in;
- pipelined requests are answered in order, one at a time, and reading pauses while too many are queued;
- a client that disconnects cancels the handler of its request (connection_lost), so a request waiting for a
  replica stops waiting and releases what it holds at once;
- writes wait while the client does not read (pause_writing/resume_writing).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus

import httptools

log = logging.getLogger("kiln.gateway.server")
MAX_URL = 8 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 128
MAX_QUEUED = 8  # pipelined requests read ahead before reading pauses

Headers = list[tuple[bytes, bytes]]
Response = tuple[int, Headers, bytes]
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    target: bytes  # the request-target exactly as received, e.g. b"/ml/iris/v2/models/iris/infer?x=1"
    headers: Headers
    body: bytes
    keep_alive: bool = True


@dataclass(frozen=True)
class Limits:
    max_body: int = 16 * 1024 * 1024
    body_timeout: float = 30.0
    idle_timeout: float = 75.0
    # screen(target, headers) → None, or (status, message, headers) to refuse a request on its head alone,
    # before a byte of its body is read (the gateway: no credential, no body).
    screen: Callable[[bytes, Headers], tuple[int, str, Headers] | None] | None = None


class Connections:
    """The open connections of one listener, and the one clock that enforces their timeouts: a sweep every
    fraction of a second instead of a timer armed and cancelled for every request."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.open: set[HttpProtocol] = set()
        self._clock: asyncio.Task | None = None

    def add(self, conn: HttpProtocol) -> None:
        self.open.add(conn)
        if self._clock is None:
            self._clock = asyncio.get_running_loop().create_task(self._tick())

    def discard(self, conn: HttpProtocol) -> None:
        self.open.discard(conn)

    async def _tick(self) -> None:
        interval = min(1.0, self.limits.idle_timeout / 4, self.limits.body_timeout / 4)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for conn in list(self.open):
                conn.expire(now)

    def close(self) -> None:
        if self._clock is not None:
            self._clock.cancel()
            self._clock = None
        for conn in list(self.open):
            conn.transport.close()


class _Reject(Exception):
    def __init__(self, status: int, message: str, headers: Headers = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def json_response(status: int, message: str, extra: Headers = ()) -> Response:
    body = json.dumps({"error": message, "code": status}).encode()
    return status, [(b"Content-Type", b"application/json"), *extra], body


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\n" % status


class HttpProtocol(asyncio.Protocol):
    """One client connection. handler(request) → (status, headers, body); headers exclude the length."""

    def __init__(self, handler: Callable[[Request], Awaitable[Response]], connections: Connections):
        self.handler = handler
        self.connections = connections
        self.limits = connections.limits
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.queue: deque[Request] = deque()
        self.task: asyncio.Task | None = None
        self.closing = False  # no more requests are read on this connection
        self._writable: asyncio.Future | None = None
        self._reading_paused = False
        self._idle_since: float | None = None  # loop time since when nothing is in progress
        self._message_since: float | None = None  # loop time since when a request is arriving
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: Headers = []
        self._header_bytes = 0
        self._body = bytearray()
        self._in_message = False

    # -- connection ---------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self._idle_since = asyncio.get_running_loop().time()
        self.connections.add(self)

    def connection_lost(self, exc) -> None:
        self.connections.discard(self)
        self.closing = True
        if self.task is not None:
            self.task.cancel()  # the client is gone: stop its request (a waiter leaves, a pod exchange ends)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__
            if isinstance(reject, _Reject):
                self._refuse(reject.status, reject.message, reject.headers)
            else:
                log.error("parser callback failed", exc_info=reject)
                self._refuse(500, "the gateway failed to read the request")
            return
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request itself was queued; no other protocol is spoken here
        except httptools.HttpParserError as exc:
            self._refuse(400, f"bad request: {exc}")

    # -- httptools callbacks ------------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()
        self._in_message = True
        self._idle_since = None
        self._message_since = asyncio.get_running_loop().time()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Reject(414, f"request target longer than {MAX_URL} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES or len(self._headers) > MAX_HEADERS:
            raise _Reject(431, f"request headers over {MAX_HEADERS} or {MAX_HEADER_BYTES} bytes")

    def on_headers_complete(self) -> None:
        length, expect, chunked = None, False, False
        for name, value in self._headers:
            lower = name.lower()
            if lower == b"content-length":
                length = int(value)  # llhttp has already refused a malformed one
            elif lower == b"expect":
                expect = value.strip().lower() == b"100-continue"
            elif lower == b"transfer-encoding":
                chunked = True
        if length is not None and length > self.limits.max_body:
            raise _Reject(413, f"request body of {length} bytes is larger than {self.limits.max_body}")
        if self.limits.screen is not None and (refusal := self.limits.screen(self._url, self._headers)):
            raise _Reject(*refusal)
        if expect and (chunked or length):
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self._body += chunk
        if len(self._body) > self.limits.max_body:
            raise _Reject(413, f"request body is larger than {self.limits.max_body} bytes")

    def on_message_complete(self) -> None:
        self._message_since = None
        self.queue.append(Request(self.parser.get_method().decode("ascii"), self._url, self._headers,
                                  bytes(self._body), self.parser.should_keep_alive()))
        self._in_message = False
        if len(self.queue) >= MAX_QUEUED and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve())

    # -- answering ---------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        try:
            while self.queue:
                request = self.queue.popleft()
                if self._reading_paused and len(self.queue) < MAX_QUEUED // 2:
                    self._reading_paused = False
                    self.transport.resume_reading()
                try:
                    status, headers, body = await self.handler(request)
                except Exception:  # the handler answers errors itself; this is a bug, not a reason to hang
                    log.exception("%s %r failed", request.method, request.target[:200])
                    status, headers, body = json_response(500, "the gateway failed; see its log")
                keep_alive = request.keep_alive and not (self.closing and not self.queue)
                self._write(status, headers, body, request.method == "HEAD", keep_alive)
                if self._writable is not None:
                    await self._writable
                if not keep_alive or self.transport.is_closing():
                    self.transport.close()
                    return
        finally:
            self.task = None
            if not self._in_message:
                self._idle_since = asyncio.get_running_loop().time()

    def _write(self, status: int, headers: Headers, body: bytes, head: bool, keep_alive: bool) -> None:
        if self.transport.is_closing():
            return
        parts = [status_line(status)]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if not keep_alive:
            parts.append(b"Connection: close\r\n")
        if not (head and any(n.lower() == b"content-length" for n, _ in headers)):
            parts.append(b"Content-Length: %d\r\n" % len(body))
        parts.append(b"\r\n")
        if not head:
            parts.append(body)
        self.transport.writelines(parts)

    def _refuse(self, status: int, message: str, extra: Headers = ()) -> None:
        """Refuse what the client is sending (too large, malformed, no credential) and close: the rest of it is
        not read, so the connection's framing cannot be trusted."""
        self.closing = True
        if self.task is None and not self.queue:
            code, headers, body = json_response(status, message, extra)
            self._write(code, headers, body, False, False)
        self.transport.close()

    def expire(self, now: float) -> None:
        """The clock's sweep: a request (head or body) too slow gets 408; a connection idle too long is closed."""
        if self._message_since is not None and now - self._message_since > self.limits.body_timeout:
            self._message_since = None
            self._refuse(408, f"request not received within {self.limits.body_timeout:g}s")
        elif (self._idle_since is not None and self.task is None
              and now - self._idle_since > self.limits.idle_timeout):
            self.closing = True
            self.transport.close()

    def close_when_idle(self) -> bool:
        """Close now unless a request is in progress (shutdown); True when closed."""
        self.closing = True
        if self.task is None and not self._in_message:
            self.transport.close()
            return True
        return False
