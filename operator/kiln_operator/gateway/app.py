"""Wiring: the routing table and its watches, the proxy on the traffic port, health and metrics on the admin port.

Prediction traffic is served by server.py (httptools on asyncio protocols; a disconnect cancels its request's
handler); the admin port, where speed does not matter, by an ordinary aiohttp application.
"""

from __future__ import annotations

import asyncio
import functools
import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kiln_contract import GROUP, VERSION
from kiln_operator.gateway import apiserver, metrics, upstream
from kiln_operator.gateway.auth import Authorizer
from kiln_operator.gateway.config import Settings
from kiln_operator.gateway.endpoints import DEPLOYMENT_LABEL, Endpoints
from kiln_operator.gateway.proxy import Proxy
from kiln_operator.gateway.server import Connections, HttpProtocol, Limits
from kiln_operator.gateway.waiting import Waiters
from kiln_operator.gateway.wake import Waker
from kiln_operator.gateway.watch import Watch

log = logging.getLogger("kiln.gateway")
SHUTDOWN_TIMEOUT = 15.0  # seconds in-flight requests get to finish after the listener closed


def _prefix(group_version: str, namespace: str | None) -> str:
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{base}/namespaces/{namespace}" if namespace else base


class Gateway:
    def __init__(self, settings: Settings, credentials: apiserver.Credentials | None = None):
        self.settings = settings
        self.credentials = credentials
        self.waiters = Waiters(settings.max_waiting)
        self.pool = upstream.Pool(settings.pod_port, settings.upstream_timeout, settings.max_response)
        self.table = Endpoints(on_change=self.waiters.notify, on_gone=self.pool.forget)
        self.waker = Waker(settings.wake_url)
        self.proxy = Proxy(settings, self.table, self.waiters, self.waker, self.pool, self.synced)
        self.watches: list[Watch] = []
        self.stopping = False
        self._tasks: list[asyncio.Task] = []
        self._connections = Connections(Limits(max_body=settings.max_body, body_timeout=settings.body_timeout,
                                               screen=self.proxy.screen))
        self._listener: asyncio.AbstractServer | None = None
        self._admin: web.AppRunner | None = None
        self._api = None
        self.auth: Authorizer | None = None

    def synced(self) -> bool:
        """The first list of every watch is loaded: 404 now means "does not exist", not "not known yet"."""
        return bool(self.watches) and all(w.synced.is_set() for w in self.watches)

    @property
    def port(self) -> int:
        return self._listener.sockets[0].getsockname()[1]

    @property
    def admin_port(self) -> int:
        return self._admin.addresses[0][1]

    async def start(self) -> None:
        credentials = self.credentials or apiserver.from_environment()
        self._api = apiserver.session(credentials, self.settings.watch_timeout)
        s = self.settings
        if s.auth == "kubernetes":
            self.auth = Authorizer(credentials, ttl=s.auth_ttl, negative_ttl=s.auth_negative_ttl,
                                   size=s.auth_cache_size, concurrency=s.auth_concurrency,
                                   max_pending=s.auth_max_pending, audiences=s.auth_audiences)
            self.proxy.authenticate_with(self.auth)
            metrics.AUTH_CACHED.set_function(lambda: len(self.auth.users) + len(self.auth.decisions))
        else:
            log.warning("KILN_GATEWAY_AUTH=none: every client that reaches %s:%d may query every model it routes to",
                        *self.settings.listen)
        for namespace in self.settings.namespaces or (None,):
            self.watches += [
                Watch(self._api, credentials, _prefix("v1", namespace) + "/pods", "pods",
                      functools.partial(self.table.reset_pods, namespace=namespace), self.table.pod_event,
                      selector=DEPLOYMENT_LABEL, timeout=self.settings.watch_timeout),
                Watch(self._api, credentials, _prefix(f"{GROUP}/{VERSION}", namespace) + "/deployments", "deployments",
                      functools.partial(self.table.reset_deployments, namespace=namespace),
                      self.table.deployment_event, timeout=self.settings.watch_timeout),
            ]
        self._tasks = [asyncio.create_task(w.run(), name=f"watch {w.path}") for w in self.watches]
        metrics.WAITING.set_function(lambda: self.waiters.total)
        metrics.READY_PODS.set_function(self.table.ready_count)
        metrics.DEPLOYMENTS.set_function(self.table.count)
        await self._serve_admin()
        await self._serve_traffic()

    async def _serve_traffic(self) -> None:
        handle, connections = self.proxy.handle, self._connections
        host, port = self.settings.listen
        self._listener = await asyncio.get_running_loop().create_server(
            lambda: HttpProtocol(handle, connections), host, port, backlog=1024)
        log.info("gateway listening on %s:%d (admin on %s:%d), watching %s, auth %s", host, self.port,
                 *self.settings.admin_listen, ", ".join(self.settings.namespaces) or "all namespaces",
                 self.settings.auth)

    async def _serve_admin(self) -> None:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._admin = web.AppRunner(app, access_log=None)
        await self._admin.setup()
        host, port = self.settings.admin_listen
        await web.TCPSite(self._admin, host, port).start()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _request: web.Request) -> web.Response:
        pending = [w.path for w in self.watches if not w.synced.is_set()]
        if self.stopping or pending or not self.watches:
            return web.json_response({"status": "stopping" if self.stopping else "loading", "pending": pending},
                                     status=503)
        return web.json_response({"status": "ready", "deployments": self.table.count(),
                                  "readyPods": self.table.ready_count()})

    async def _metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stop(self) -> None:
        self.stopping = True  # /readyz fails from now on, so that Service endpoints drop this pod
        await asyncio.sleep(self.settings.drain_seconds)
        if self._listener is not None:
            self._listener.close()
            await self._finish_requests()
            await self._listener.wait_closed()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.waker.close()
        if self.auth is not None:
            await self.auth.close()
        self.pool.close()
        if self._api is not None:
            await self._api.close()
        if self._admin is not None:
            await self._admin.cleanup()


    async def _finish_requests(self) -> None:
        """Idle connections close now; requests in flight get SHUTDOWN_TIMEOUT to finish, then are cut."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SHUTDOWN_TIMEOUT
        while self._connections.open and loop.time() < deadline:
            for conn in list(self._connections.open):
                conn.close_when_idle()
            await asyncio.sleep(0.05)
        self._connections.close()


async def run(settings: Settings) -> None:
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(settings)
    await gateway.start()
    await stop.wait()
    log.info("stopping: draining for %gs", settings.drain_seconds)
    await gateway.stop()
