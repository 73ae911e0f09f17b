"""Stopping on SIGTERM without dropping a request a client has already sent.

uvicorn's own shutdown loses requests under load in two ways: closing the listening socket
resets every connection the kernel had completed but uvicorn had not accepted yet, and it
closes at once each connection with no request in progress, including a new one whose
request is still on its way. Here, on SIGTERM (or SIGINT):

1. A socket filter makes the listening socket drop new SYNs (Linux): no new connection can
   complete; a client that tries waits for its SYN retry and is then refused, not reset. The
   handshakes already under way complete for HANDSHAKE_S, while the server still accepts.
2. What the kernel has queued is accepted, then the socket is closed, with nothing in between
   that could let a connection in (without the filter, the window is a few microseconds).
3. A connection with no request in progress stays open for IDLE_S: a request arriving on it is
   served, with `Connection: close`; a connection that stays silent is closed then. Requests in
   progress finish (within --graceful-timeout-s), answered with `Connection: close`.

With --workers N, `supervise` runs the worker processes on one listening socket; when the signal
arrives it closes its own copy of the socket first, so the socket goes away when the last worker
has drained it, then passes SIGTERM on to the workers.

The same protocol class bounds what one client can make the server hold (`HttpLimits`), counted as
the bytes arrive, never after buffering them: httptools joins a header or URL piece by piece with
`bytes +=`, so an unbounded one costs memory and quadratic time on the event loop, which every
other connection (health checks included) waits behind. Past a limit the client is answered
414/431/400/408/503 with a short JSON message and the connection is closed (see `_reject`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import math
import multiprocessing
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

log = logging.getLogger("kiln_server")

HANDSHAKE_S = 0.1  # after new SYNs are dropped: time for handshakes under way to complete
IDLE_S = 0.5  # after the drain began: how long a connection with no request in progress is kept
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker whose startup (model load) failed
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)

LINGER_S = 2.0  # after a refusal: how long the rest of what the client sends is read and dropped
HEAD_SLACK = 64  # request-line bytes besides the URL (method, spaces, version) not charged to the headers
REPORT_S = 60.0  # refusals are logged as one summary line at most this often (a flood must not flood the log)

# Classic BPF, run on the TCP header: drop a segment whose flags are SYN without ACK, keep the rest.
_DROP_SYN = [
    (0x30, 0, 0, 13),  # ldb [13]          TCP flags
    (0x54, 0, 0, 0x12),  # and #SYN|ACK
    (0x15, 0, 1, 0x02),  # jeq #SYN, drop, keep
    (0x06, 0, 0, 0),  # drop: ret #0
    (0x06, 0, 0, 0xFFFFFFFF),  # keep: ret #-1 (the whole segment)
]


def drop_new_connections(sock: socket.socket) -> bool:
    """Make a listening TCP socket ignore new SYNs; True if the filter is in place."""
    if not sys.platform.startswith("linux"):
        return False
    code = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *ins) for ins in _DROP_SYN))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, struct.pack("HL", len(_DROP_SYN), ctypes.addressof(code)))
    except OSError as exc:
        log.warning("cannot filter new connections during shutdown: %s", exc)
        return False
    return True


def accept_pending(sock: socket.socket) -> list[socket.socket]:
    """Every connection the kernel has completed on a listening socket, without waiting."""
    out = []
    sock.setblocking(False)
    while True:
        try:
            conn, _ = sock.accept()
        except (BlockingIOError, InterruptedError):
            return out
        except ConnectionAbortedError:
            continue
        except OSError as exc:
            log.warning("accepting queued connections at shutdown: %s", exc)
            return out
        out.append(conn)


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may make a worker process hold (config: --max-url-bytes …)."""

    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    request_timeout_s: float = 10.0
    max_connections: int = 1024


DEFAULT_LIMITS = HttpLimits()


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the reason is on the protocol (`_refusal`)."""


class _Refusals:
    """Counts refusals by status and logs them as one line per REPORT_S, per process."""

    counts: dict[int, int] = {}
    last = 0.0

    @classmethod
    def note(cls, status: int, message: str) -> None:
        cls.counts[status] = cls.counts.get(status, 0) + 1
        log.debug("refused a connection: %d %s", status, message)
        now = time.monotonic()
        if now - cls.last >= REPORT_S:
            log.warning("refused requests at the HTTP layer since the last report, by status: %s (last: %d %s)",
                        dict(sorted(cls.counts.items())), status, message[:200])
            cls.counts = {}
            cls.last = now


def _idle_key(conn) -> float | None:
    """How long-idle a connection is, as a sort key (lowest first to close), or None if it is busy."""
    if conn.transport.is_closing():
        return None
    if getattr(conn, "_refused", False):
        return -math.inf
    if getattr(conn, "_began", True) or not (conn.cycle is None or conn.cycle.response_complete):
        return None
    since = conn._idle_since
    return math.inf if since is None else since  # idle since before the last sweep, or only just


def _sweep(loop: asyncio.AbstractEventLoop, state, interval: float) -> None:
    """Once per interval: close connections past their deadline (one timer per process, not per request).

    A request in progress marks its deadline 0.0 ("from now on"), and this sweep turns that into a
    time: no clock is read per request, and a timeout fires within one interval of its due time.
    """
    now = loop.time()
    for conn in list(state.connections):
        check = getattr(conn, "check_deadline", None)
        if check is not None:
            check(now)
    state.kiln_sweeper = loop.call_later(interval, _sweep, loop, state, interval)


class DrainingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with limits on what a client may send, and, at shutdown, IDLE_S
    for a request on a connection that is idle."""

    draining = False
    quiet = True  # no bytes received since the last look

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        self.limits: HttpLimits = getattr(config, "kiln_http_limits", DEFAULT_LIMITS)
        self._refused = False
        self._refusal: tuple[int, str] | None = None
        # The request being read: where it is (head, body or neither) and what it has cost so far.
        self._in_head = True
        self._in_body = False
        self._marks = 0  # head and message ends so far: a change tells that a chunk crossed a boundary
        self._head_bytes = 0
        self._body_raw = 0  # bytes of the body as sent (chunk framing and trailers included)
        self._body_bytes = 0  # bytes of the body itself
        self._began = False  # a byte of the current request has arrived
        self._deadline: float | None = None  # None: not timed; 0.0: timed from the next sweep
        self._body_seen = 0  # body bytes at the last sweep: progress since moves the deadline on
        self._idle_since: float | None = None  # stamped by the sweep: since when it has been idle

    # -- connections ------------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._deadline = 0.0  # a connection that never asks is closed
        state = self.server_state
        if getattr(state, "kiln_sweeper", None) is None:
            interval = min(1.0, self.limits.request_timeout_s / 4)
            state.kiln_sweeper = self.loop.call_later(interval, _sweep, self.loop, state, interval)
        if len(self.connections) > self.limits.max_connections:
            idle = [(key, i, c) for i, c in enumerate(self.connections)
                    if c is not self and (key := _idle_key(c)) is not None]
            if idle:  # the longest-idle connection makes room: HTTP lets a server close idle ones
                min(idle)[2].transport.close()
            else:
                self._reject(503, f"too many open connections (KILN_MAX_CONNECTIONS={self.limits.max_connections}); "
                             "try again")

    def check_deadline(self, now: float) -> None:
        if self._began or not (self.cycle is None or self.cycle.response_complete):
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = now
        deadline = self._deadline
        if deadline is None or self.transport.is_closing():
            return
        timeout = self.limits.request_timeout_s
        if deadline == 0.0 or (self._in_body and self._body_bytes != self._body_seen):
            self._deadline = now + timeout  # a stall of the body is timed, not the whole of it
            self._body_seen = self._body_bytes
            return
        if now < deadline:
            return
        cycle = self.cycle
        if self._in_body:
            if self.flow.read_paused:  # the server is not reading, so the client cannot be late
                self._deadline = now + timeout
            elif cycle is not None and (cycle.response_started or cycle.response_complete):
                self.transport.close()  # answered already; the rest of the body is not coming
            else:
                self._reject(408, f"the request body stalled for more than {timeout:g} s "
                             "(KILN_REQUEST_TIMEOUT_S)")
        elif self._began:
            self._reject(408, f"the request head did not arrive within {timeout:g} s (KILN_REQUEST_TIMEOUT_S)")
        else:
            self.transport.close()  # connected and said nothing

    # -- bytes in ---------------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.quiet = False
        if self._refused:
            return  # lingering: read and dropped, so the client reads the answer, not a reset
        self._unset_keepalive_if_required()
        marks = self._marks
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol switch is offered here: the request was answered over HTTP; close after it.
            if self.cycle is not None:
                self.cycle.keep_alive = False
            self._refused = True
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()
            return
        except httptools.HttpParserError as exc:
            status, message = self._refusal or (400, f"malformed HTTP request: {str(exc)[:100]}")
            self._reject(status, message)
            return
        if self._marks != marks:
            return  # a head or a message ended inside this chunk: the next one starts counting afresh
        limits = self.limits
        url = len(self.url) if self._began else 0  # uvicorn makes self.url when a request begins
        if self._in_head and url > limits.max_url_bytes:
            self._reject(*self._too_long_url())
            return
        if self.headers is not None and len(self.headers) > limits.max_headers:  # trailers are held alike
            self._reject(431, f"more than {limits.max_headers} header fields (KILN_MAX_HEADERS)")
            return
        if self._in_head:
            self._head_bytes += len(data)
            if self._head_bytes - url > limits.max_header_bytes + HEAD_SLACK:
                self._reject(431, f"request header fields exceed {limits.max_header_bytes} bytes "
                             "(KILN_MAX_HEADER_BYTES)")
        elif self._in_body:
            self._body_raw += len(data)
            # Framing, chunk extensions and trailers, which the application never sees, stay within
            # the header budget plus the size of the body itself.
            if self._body_raw - 2 * self._body_bytes > limits.max_header_bytes:
                self._reject(400, f"the chunked encoding of the request body (chunk headers, extensions, trailers) "
                             f"exceeds {limits.max_header_bytes} bytes beyond the body (KILN_MAX_HEADER_BYTES)")

    def _refuse(self, status: int, message: str) -> None:
        self._refusal = (status, message)
        raise _Refused(message)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._began = True
        self._idle_since = None
        if self._deadline is None:
            self._deadline = 0.0

    def _too_long_url(self) -> tuple[int, str]:
        return 414, f"the request target (URL) exceeds {self.limits.max_url_bytes} bytes (KILN_MAX_URL_BYTES)"

    def on_headers_complete(self) -> None:
        # Before the request is dispatched: a whole head can arrive in one read.
        if len(self.url) > self.limits.max_url_bytes:
            self._refuse(*self._too_long_url())
        if len(self.headers) > self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields (KILN_MAX_HEADERS)")
        self._marks += 1
        self._in_head = False
        self._in_body = True
        self._body_raw = self._body_bytes = self._body_seen = 0
        self._deadline = 0.0
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._marks += 1
        self._in_head = True
        self._in_body = False
        self._head_bytes = 0
        self._began = False
        self._deadline = None
        super().on_message_complete()

    # -- refusing ---------------------------------------------------------------------------------
    def _reject(self, status: int, message: str) -> None:
        """Answer `status` and close; what the client still sends meanwhile is read and dropped."""
        if self._refused:
            return
        self._refused = True
        self._deadline = None
        _Refusals.note(status, message)
        cycle = self.cycle
        if cycle is not None:
            if not cycle.response_complete:
                if cycle.response_started or not cycle.more_body:
                    cycle.keep_alive = False  # a request is being answered: that answer goes out, then the close
                    return
                cycle.disconnected = True  # the application, waiting for this body, sees the client gone
                cycle.message_event.set()
            elif self._in_body:  # answered already, without its body: what went wrong is the rest of it
                self.transport.close()
                return
        self._idle_since = -math.inf  # lingering: the first to go when connections run short
        body = json.dumps({"error": message}).encode()
        head = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            head.extend([name, b": ", value, b"\r\n"])
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        transport = self.transport
        transport.write(b"".join(head) + body)
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if transport.can_write_eof():
                transport.write_eof()
        self.flow.resume_reading()
        self.loop.call_later(LINGER_S, self._end_linger)

    def _end_linger(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    # -- shutdown ---------------------------------------------------------------------------------
    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is None or self.cycle.response_complete:
            self.quiet = True
            self.loop.call_later(IDLE_S, self._close_if_quiet)
        else:
            self.cycle.keep_alive = False

    def _close_if_quiet(self) -> None:
        if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
            return  # closed, or a request in progress: the connection closes after its answer
        if self.quiet:
            self.transport.close()
            return
        self.quiet = True  # part of a request came in: wait for the rest
        self.loop.call_later(IDLE_S, self._close_if_quiet)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server whose shutdown first takes in every connection the kernel completed."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        sockets = sockets or []
        if sockets and all([drop_new_connections(s) for s in sockets]):
            await asyncio.sleep(HANDSHAKE_S)
        pending = [conn for s in sockets for conn in accept_pending(s)]
        for server in self.servers:  # no await since the last accept: nothing could queue meanwhile
            server.close()
        for s in sockets:
            s.close()
        if pending:
            loop = asyncio.get_running_loop()
            factory = functools.partial(self.config.http_protocol_class, config=self.config,
                                        server_state=self.server_state, app_state=self.lifespan.state)
            for conn in pending:
                try:
                    await loop.connect_accepted_socket(factory, conn)
                except OSError:
                    conn.close()
        await super().shutdown(sockets)  # calls DrainingProtocol.shutdown on every connection, then waits


class BindError(Exception):
    """The listening socket could not be bound (uvicorn logged why)."""


def config(app, limits: HttpLimits = DEFAULT_LIMITS, **kwargs) -> uvicorn.Config:
    # No WebSocket protocol: nothing here speaks it, and an upgrade request is answered over HTTP.
    cfg = uvicorn.Config(app, **{**kwargs, "http": DrainingProtocol, "ws": "none"})
    cfg.kiln_http_limits = limits  # read by each DrainingProtocol; travels to spawned workers with cfg
    return cfg


def _bind(cfg: uvicorn.Config) -> socket.socket:
    try:
        return cfg.bind_socket()
    except SystemExit:  # uvicorn logs the OSError and exits
        raise BindError(f"cannot listen on {cfg.host}:{cfg.port}") from None


def serve(cfg: uvicorn.Config) -> bool:
    """One process: serve until SIGTERM/SIGINT; False if startup failed. Raises BindError."""
    sock = _bind(cfg)
    server = DrainingServer(cfg)
    server.run(sockets=[sock])
    return server.started


def _worker(cfg: uvicorn.Config, sockets: list[socket.socket]) -> None:
    cfg.configure_logging()
    DrainingServer(cfg).run(sockets=sockets)


def supervise(cfg: uvicorn.Config, workers: int) -> None:
    """`workers` processes serving one listening socket until SIGTERM/SIGINT; a worker that dies is
    replaced, one that fails its startup stops them all (see STARTUP_FAILURE). Raises BindError."""
    sock = _bind(cfg)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)}
    spawn = multiprocessing.get_context("spawn")

    def start() -> multiprocessing.process.BaseProcess:
        proc = spawn.Process(target=_worker, args=(cfg, [sock]), name="kiln-server-worker")
        proc.start()
        return proc

    procs: list = []
    try:
        for _ in range(workers):
            if not stop.is_set():
                procs.append(start())
        while not stop.wait(0.2):  # the signal handler wakes this at once
            for i, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                if proc.exitcode == STARTUP_FAILURE:
                    log.error("worker %s failed to start; stopping", proc.pid)
                    stop.set()
                    break
                log.warning("worker %s exited (%s); starting another", proc.pid, proc.exitcode)
                procs[i] = start()
    finally:
        # The workers hold the socket now: the last one to stop closes it, right after draining it.
        with contextlib.suppress(OSError):
            sock.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()  # SIGTERM: the worker drains, then exits
        for proc in procs:
            proc.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
