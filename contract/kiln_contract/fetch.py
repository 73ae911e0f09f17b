"""The one way Kiln downloads a user's https:// URL: bounded, checked, and pinned to the checked address.

Used by the operator (bring-your-own artifacts) and the trainer (datasets). A URL is parsed once
(netguard.parse_url), its host resolved once, every address checked (netguard.check_addresses),
and the connection made to those addresses only: aiohttp asks a resolver that can answer nothing
else, so a second DNS answer (rebinding) never reaches a socket. TLS still verifies the
certificate against the host name (SNI and Host header are the name, not the address).

Bounds: a size cap (refused at once when Content-Length is over it, cut when the bytes read pass
it), an overall deadline on the whole fetch (a server dripping a byte at a time is cut there, not
kept alive by each read being on time), a connect and a per-read timeout. Redirects are not
followed. The sha256 is computed while streaming; fetch_to_file writes to a temporary file beside
the destination and moves it into place only when the fetch is complete and the digest matches.

Failures before an HTTP response arrives read the same whatever happened (refused, reset, timed
out, TLS not verified): a distinct message per cause would let a spec probe which ports answer on
addresses the guard allows. FetchError.detail holds the cause for the caller to log where users
cannot read it (the operator's log), never in a status or event.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import os
import re
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from kiln_contract import netguard
from kiln_contract.netguard import UnsafeURL

__all__ = ["FetchError", "Fetched", "UnsafeURL", "fetch_bytes", "fetch_bytes_sync", "fetch_to_file",
           "fetch_to_file_sync", "limits"]

GiB = 1 << 30
DEFAULT_MAX_BYTES = 2 * GiB
DEFAULT_DEADLINE_SECONDS = 300.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
DEFAULT_READ_TIMEOUT_SECONDS = 60.0
_CHUNK = 1 << 16
_SHA256 = re.compile(r"[0-9a-f]{64}")

CONNECTION_FAILED = ("connection failed: no verified HTTPS response "
                     "(refused, unreachable, timed out or certificate not trusted)")

# (host, port) -> addresses; sync or async. Injectable so tests can play a rebinding DNS server.
Resolver = Callable[[str, int], Awaitable[Iterable[str]] | Iterable[str]]


class FetchError(ValueError):
    """A fetch that did not deliver the whole body; str() names the URL and why.

    reason: "resolve", "connect", "status", "redirect", "too-large", "deadline", "read-timeout",
    "incomplete" or "sha256". status: the HTTP status when one was received. detail: the
    underlying cause, for operator-side logs only. retryable: asking again may help (a failed
    connection, a body cut short, 5xx, 429).
    """

    def __init__(self, url: str, why: str, *, reason: str, status: int | None = None,
                 detail: str | None = None, retryable: bool = False):
        super().__init__(f"cannot fetch {url}: {why}")
        self.url, self.why, self.reason = url, why, reason
        self.status, self.detail, self.retryable = status, detail, retryable


@dataclass(frozen=True)
class Fetched:
    url: str
    sha256: str
    bytes: int
    path: Path | None = None
    data: bytes | None = None


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"{name}={raw!r} must be positive")
    return value


@dataclass(frozen=True)
class Limits:
    max_bytes: int
    deadline: float
    connect_timeout: float
    read_timeout: float


def limits(max_bytes: int | None = None, deadline: float | None = None, connect_timeout: float | None = None,
           read_timeout: float | None = None) -> Limits:
    """Explicit values win; otherwise KILN_FETCH_MAX_BYTES, KILN_FETCH_DEADLINE_SECONDS,
    KILN_FETCH_CONNECT_TIMEOUT_SECONDS, KILN_FETCH_READ_TIMEOUT_SECONDS, read at each call."""
    return Limits(
        max_bytes=int(max_bytes if max_bytes is not None else _env_number("KILN_FETCH_MAX_BYTES", DEFAULT_MAX_BYTES)),
        deadline=deadline if deadline is not None
        else _env_number("KILN_FETCH_DEADLINE_SECONDS", DEFAULT_DEADLINE_SECONDS),
        connect_timeout=connect_timeout if connect_timeout is not None
        else _env_number("KILN_FETCH_CONNECT_TIMEOUT_SECONDS", DEFAULT_CONNECT_TIMEOUT_SECONDS),
        read_timeout=read_timeout if read_timeout is not None
        else _env_number("KILN_FETCH_READ_TIMEOUT_SECONDS", DEFAULT_READ_TIMEOUT_SECONDS),
    )


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} bytes"


class _PinnedResolver(AbstractResolver):
    """What aiohttp connects to: the checked addresses of the checked host, and nothing else."""

    def __init__(self, host: str, addresses: list[netguard.IPAddress]):
        self._host = host.rstrip(".")
        self._addresses = addresses

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_UNSPEC) -> list[ResolveResult]:
        if host.rstrip(".").lower() != self._host:
            raise OSError(f"{host} is not the host that was checked")
        results: list[ResolveResult] = []
        for ip in self._addresses:
            fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            if family in (socket.AF_INET, socket.AF_INET6) and fam != family:
                continue
            results.append({"hostname": host, "host": str(ip), "port": port, "family": fam,
                            "proto": socket.IPPROTO_TCP, "flags": socket.AI_NUMERICHOST})
        if not results:
            raise OSError(f"no checked address of {host} in the address family asked for")
        return results

    async def close(self) -> None:
        pass


async def _system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.to_thread(socket.getaddrinfo, host, port, proto=socket.IPPROTO_TCP)
    return [info[4][0] for info in infos]


async def _resolve(target: netguard.Target, resolver: Resolver | None) -> list[str]:
    if target.ip is not None:
        return [str(target.ip)]
    try:
        answer = (resolver or _system_resolve)(target.host, target.port)
        if inspect.isawaitable(answer):
            answer = await answer
        addresses = [str(a) for a in answer]
    except (OSError, UnicodeError) as exc:
        raise FetchError(target.url, f"cannot resolve {target.host}", reason="resolve",
                         detail=f"{type(exc).__name__}: {exc}", retryable=True) from None
    # Order kept, duplicates dropped: getaddrinfo lists an address once per socket type.
    return list(dict.fromkeys(addresses))


class _Progress:
    phase = "resolve"  # resolve, connect (until response headers), body
    read = 0


async def _transfer(target: netguard.Target, sink: Callable[[bytes], object], lim: Limits,
                    ssl_context: ssl.SSLContext | None, allow_networks: Iterable[netguard.Network],
                    resolver: Resolver | None, progress: _Progress) -> str:
    addresses = netguard.check_addresses(target, await _resolve(target, resolver), allow_networks)
    progress.phase = "connect"
    connector = aiohttp.TCPConnector(
        resolver=_PinnedResolver(target.host, addresses), ssl=ssl_context or ssl.create_default_context(),
        use_dns_cache=False, force_close=True, limit=1)
    timeout = aiohttp.ClientTimeout(total=None, connect=lim.connect_timeout, sock_connect=lim.connect_timeout,
                                    sock_read=lim.read_timeout)
    url = URL.build(scheme="https", host=f"[{target.host}]" if ":" in target.host else target.host,
                    port=target.port, path=target.path, query_string=target.query, encoded=True)
    digest = hashlib.sha256()
    # identity: the bytes hashed and capped are the bytes sent, and no decompression bomb.
    headers = {"Accept-Encoding": "identity", "User-Agent": "kiln-fetch"}
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                         trust_env=False, cookie_jar=aiohttp.DummyCookieJar()) as session:
            async with session.get(url, headers=headers, allow_redirects=False) as resp:
                progress.phase = "body"
                try:
                    _check_response(target, resp, lim)
                    async for chunk in resp.content.iter_chunked(_CHUNK):
                        progress.read += len(chunk)
                        if progress.read > lim.max_bytes:
                            raise FetchError(target.url, f"larger than the {_size(lim.max_bytes)} limit "
                                             f"(cut after {progress.read} bytes)", reason="too-large")
                        digest.update(chunk)
                        sink(chunk)
                except BaseException:
                    # Abandoned mid-body (deadline, cap): drop the socket now. A TLS close would wait
                    # on the peer, and the sync wrapper's loop is gone before it finishes (fd leak).
                    if resp.connection is not None and resp.connection.transport is not None:
                        resp.connection.transport.abort()
                    raise
    except FetchError:
        raise
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        if progress.phase == "connect":
            raise FetchError(target.url, CONNECTION_FAILED, reason="connect", detail=detail,
                             retryable=True) from None
        if isinstance(exc, TimeoutError):
            raise FetchError(target.url, f"no data for {lim.read_timeout:g} s after {progress.read} bytes",
                             reason="read-timeout", detail=detail, retryable=True) from None
        raise FetchError(target.url, f"the connection ended after {progress.read} bytes, before the whole body "
                         "(shorter than its Content-Length, or broken chunked framing)",
                         reason="incomplete", detail=detail, retryable=True) from None
    return digest.hexdigest()


def _check_response(target: netguard.Target, resp: aiohttp.ClientResponse, lim: Limits) -> None:
    if 300 <= resp.status < 400:
        where = resp.headers.get("Location", "?")
        where = where if len(where) <= 300 else where[:300] + "…"  # it lands in a status message
        raise FetchError(target.url, f"HTTP {resp.status} redirect to {where} (redirects are not followed)",
                         reason="redirect", status=resp.status)
    if resp.status != 200:
        raise FetchError(target.url, f"HTTP {resp.status}", reason="status", status=resp.status,
                         retryable=resp.status >= 500 or resp.status == 429)
    if resp.content_length is not None and resp.content_length > lim.max_bytes:
        raise FetchError(target.url, f"Content-Length {resp.content_length} is over the "
                         f"{_size(lim.max_bytes)} limit", reason="too-large", status=resp.status)


async def _fetch(url: str, sink: Callable[[bytes], object], lim: Limits, ssl_context: ssl.SSLContext | None,
                 allow_networks: Iterable[netguard.Network], resolver: Resolver | None) -> tuple[str, int]:
    target = netguard.parse_url(url)
    progress = _Progress()
    try:
        async with asyncio.timeout(lim.deadline):
            return await _transfer(target, sink, lim, ssl_context, allow_networks, resolver, progress), progress.read
    except TimeoutError:
        # Only the deadline gets here: _transfer turns every other timeout into a FetchError.
        if progress.phase == "resolve":
            raise FetchError(url, f"cannot resolve {target.host}", reason="resolve",
                             detail=f"no answer within the {lim.deadline:g} s deadline", retryable=True) from None
        if progress.phase == "connect":
            raise FetchError(url, CONNECTION_FAILED, reason="connect",
                             detail=f"no response within the {lim.deadline:g} s deadline", retryable=True) from None
        raise FetchError(url, f"not complete within the {lim.deadline:g} s deadline ({progress.read} bytes read)",
                         reason="deadline") from None


def _expected(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not _SHA256.fullmatch(sha256.lower()):
        raise ValueError(f"expected sha256 {sha256!r} is not 64 hex digits")
    return sha256.lower()


def _mismatch(url: str, expected: str) -> FetchError:
    # The digest actually read is not echoed: it would let a user probe content they cannot read.
    return FetchError(url, f"sha256 mismatch: the bytes served do not have sha256 {expected}", reason="sha256")


async def fetch_to_file(url: str, dest: str | os.PathLike, *, sha256: str | None = None,
                        max_bytes: int | None = None, deadline: float | None = None,
                        connect_timeout: float | None = None, read_timeout: float | None = None,
                        ssl_context: ssl.SSLContext | None = None,
                        allow_networks: Iterable[netguard.Network] = (),
                        resolver: Resolver | None = None) -> Fetched:
    """Download url to dest, or raise FetchError / UnsafeURL and leave dest as it was.

    sha256: when given, dest is written only if the body has this digest. Limits default as
    `limits()` says. ssl_context: whom to trust (default: the system's CAs). allow_networks and
    resolver exist for tests (loopback servers, a rebinding DNS); production passes neither.
    """
    expected = _expected(sha256)
    lim = limits(max_bytes, deadline, connect_timeout, read_timeout)
    dest = Path(dest)
    # Beside dest, so the final move is a rename on one filesystem: dest is whole or absent.
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        # Plain writes in the event loop: chunks are 64 KiB into the page cache, shorter than any await.
        with os.fdopen(fd, "wb") as out:
            digest, size = await _fetch(url, out.write, lim, ssl_context, allow_networks, resolver)
        if expected and digest != expected:
            raise _mismatch(url, expected)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Fetched(url=url, sha256=digest, bytes=size, path=dest)


async def fetch_bytes(url: str, *, sha256: str | None = None, max_bytes: int | None = None,
                      deadline: float | None = None, connect_timeout: float | None = None,
                      read_timeout: float | None = None, ssl_context: ssl.SSLContext | None = None,
                      allow_networks: Iterable[netguard.Network] = (),
                      resolver: Resolver | None = None) -> Fetched:
    """Like fetch_to_file, into memory: Fetched.data holds the body (at most max_bytes)."""
    expected = _expected(sha256)
    lim = limits(max_bytes, deadline, connect_timeout, read_timeout)
    body = bytearray()
    digest, size = await _fetch(url, body.extend, lim, ssl_context, allow_networks, resolver)
    if expected and digest != expected:
        raise _mismatch(url, expected)
    return Fetched(url=url, sha256=digest, bytes=size, data=bytes(body))


def fetch_to_file_sync(url: str, dest: str | os.PathLike, **options) -> Fetched:
    """fetch_to_file for callers without an event loop (the trainer, a worker thread)."""
    return asyncio.run(fetch_to_file(url, dest, **options))


def fetch_bytes_sync(url: str, **options) -> Fetched:
    """fetch_bytes for callers without an event loop (the trainer, a worker thread)."""
    return asyncio.run(fetch_bytes(url, **options))
