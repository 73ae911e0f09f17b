"""The request path: route, check who asks, pick a ready pod (or wait for one), forward, answer.

The body arrives whole and bounded (server.py); what is decided here is whether it may go and where. Who asks is
settled before anything that costs more than a lookup: a request that is refused never waits, never wakes a
Deployment scaled to zero and never learns whether the Deployment exists. With the caller's answer cached
(auth.py) a request makes no API call.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kiln_operator.gateway import metrics, routing, upstream
from kiln_operator.gateway.config import Settings
from kiln_operator.gateway.endpoints import Endpoints, Key
from kiln_operator.gateway.server import Headers, Request, Response, json_response
from kiln_operator.gateway.waiting import Waiters
from kiln_operator.gateway.wake import REPEAT, Waker

if TYPE_CHECKING:
    from kiln_operator.gateway.auth import Authorizer

log = logging.getLogger("kiln.gateway.proxy")
ATTEMPTS = 4  # pods tried for one request when connections are refused (a rollout removing pods)
RETRY_AFTER_BUSY = 1
RETRY_AFTER_NO_POD = 5
NO_ROUTE = "no such route: requests go to /<namespace>/<deployment>/<path>"


class Refusal(Exception):
    """An answer the gateway gives itself: a status and a message, as JSON."""

    def __init__(self, status: int, message: str, retry_after: int | None = None,
                 headers: list[tuple[bytes, bytes]] = ()):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        self.headers = headers

    def response(self) -> Response:
        extra = [(b"Retry-After", b"%d" % self.retry_after)] if self.retry_after else []
        return json_response(self.status, self.message, [*extra, *self.headers])


class Proxy:
    def __init__(self, settings: Settings, table: Endpoints, waiters: Waiters, waker: Waker,
                 pool: upstream.Pool, synced: Callable[[], bool]):
        self.settings = settings
        self.table = table
        self.waiters = waiters
        self.waker = waker
        self.pool = pool
        self.synced = synced
        self.auth: Authorizer | None = None  # None: KILN_GATEWAY_AUTH=none
        self.drop_headers = routing.HOP_BY_HOP

    def authenticate_with(self, auth: Authorizer) -> None:
        self.auth = auth
        # The caller's token is a credential for the gateway, not for the model code in the pod: never forwarded.
        self.drop_headers = routing.HOP_BY_HOP | {b"authorization"}

    def screen(self, target: bytes, headers: Headers) -> tuple[int, str, Headers] | None:
        """On the request's head, before its body is read: a request to a routable name without a usable
        credential is refused here, as _answer would refuse it, so an anonymous client cannot make the gateway
        buffer a body. Junk routes pass: _answer gives them their 404 without an API call either way."""
        if self.auth is None:
            return None
        route = routing.split(target)
        if route is None or not (self.table.exists(route[:2]) or routing.valid(*route[:2])):
            return None
        try:
            self.auth.bearer(headers)
        except Refusal as refusal:
            return refusal.status, refusal.message, refusal.headers
        return None

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        try:
            response = await self._answer(request)
        except Refusal as refusal:
            response = refusal.response()
        except asyncio.CancelledError:
            # The client went away (server.py cancels the handler): whatever this request held (a waiter
            # slot, a pod connection) was released by the finally blocks on the way up.
            metrics.answered(499, time.perf_counter() - started)
            raise
        except Exception:
            log.exception("%s %r failed", request.method, request.target[:200])
            response = Refusal(500, "the gateway failed; see its log").response()
        metrics.answered(response[0], time.perf_counter() - started)
        return response

    async def _answer(self, request: Request) -> Response:
        route = routing.split(request.target)
        if route is None:
            raise Refusal(404, NO_ROUTE)
        namespace, name, target = route
        key = (namespace, name)
        # Names the API server could never hold are refused before any review: junk paths cost no API call.
        if not self.table.exists(key) and not routing.valid(namespace, name):
            raise Refusal(404, NO_ROUTE)
        auth = self.auth
        if auth is not None:
            token = auth.bearer(request.headers)
            token_digest = hashlib.sha256(token).digest()
            if not auth.cached(token_digest, namespace, name):
                await auth.verify(token, token_digest, namespace, name)
        # Only now may the answer tell whether the Deployment exists: another namespace's Deployments all get the
        # same 403, existing or not, so no tenant can list another's models.
        if not self.table.exists(key):
            if not self.synced():
                raise Refusal(503, "the gateway is starting (its routing table is not loaded yet)", RETRY_AFTER_BUSY)
            raise Refusal(404, f'no Kiln Deployment "{name}" in namespace "{namespace}"')
        body = request.body
        head = routing.request_head(request.method, target, f"{name}.{namespace}.svc".encode(), request.headers,
                                    len(body), self.drop_headers)
        return await self._forward(key, (head, body), request.method == "HEAD")

    async def _forward(self, key: Key, data: tuple[bytes, bytes], head_only: bool) -> Response:
        tried: set[str] | None = None
        deadline = None
        for _ in range(ATTEMPTS):
            ip = self.table.pick(key, tried)
            if ip is None:
                deadline = deadline or asyncio.get_running_loop().time() + self.settings.wait_seconds
                ip = await self._wait_for_pod(key, tried, deadline)
            try:
                status, headers, payload = await self.pool.request(ip, data, head_only)
            except upstream.Unreachable:
                metrics.RETRIES.inc()
                tried = tried or set()
                tried.add(ip)
                continue
            except upstream.UpstreamTimeout as exc:
                raise Refusal(504, f"pod {ip} of {key[0]}/{key[1]}: {exc}") from None
            except upstream.BadResponse as exc:
                raise Refusal(502, f"pod {ip} of {key[0]}/{key[1]}: {exc}") from None
            return status, routing.response_headers(headers, keep_length=head_only), payload
        raise Refusal(502, f"no pod of {key[0]}/{key[1]} could be reached ({len(tried or ())} tried)")

    async def _wait_for_pod(self, key: Key, tried: set[str] | None, deadline: float) -> str:
        """Hold the request until key has a ready pod not in tried, asking the operator for one."""
        namespace, name = key
        if not self.waiters.admit(key):
            raise Refusal(503, f"{self.waiters.cap} requests already wait for a replica of {namespace}/{name}",
                          RETRY_AFTER_BUSY)
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self.table.exists(key):
                    raise Refusal(404, f'Kiln Deployment "{name}" in namespace "{namespace}" was deleted')
                ip = self.table.pick(key, tried)
                if ip is not None:
                    return ip
                if not self.table.has_ready(key):
                    self.waker.wake(key)
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise Refusal(503, f"no ready replica of {namespace}/{name} within "
                                       f"{self.settings.wait_seconds:g}s", RETRY_AFTER_NO_POD)
                # A held request is traffic: the wake goes out again every REPEAT seconds while it waits, so a
                # cold start slower than scaleToZeroAfter is not scaled back to zero before its pod is ready.
                await self.waiters.changed(key, min(remaining, REPEAT))
        finally:
            self.waiters.leave(key)
