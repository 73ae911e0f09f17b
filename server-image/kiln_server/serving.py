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
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import multiprocessing
import signal
import socket
import struct
import sys
import threading

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("kiln_server")

HANDSHAKE_S = 0.1  # after new SYNs are dropped: time for handshakes under way to complete
IDLE_S = 0.5  # after the drain began: how long a connection with no request in progress is kept
STARTUP_FAILURE = 3  # uvicorn's exit status for a worker whose startup (model load) failed
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)

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


class DrainingProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol; at shutdown, idle connections get IDLE_S for a request."""

    draining = False
    quiet = True  # no bytes received since the last look

    def data_received(self, data: bytes) -> None:
        self.quiet = False
        super().data_received(data)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered with Connection: close

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


def config(app, **kwargs) -> uvicorn.Config:
    return uvicorn.Config(app, **{**kwargs, "http": DrainingProtocol})


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
