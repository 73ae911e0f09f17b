"""The operator's gateway and activator: /<namespace>/<deployment>/<path> → a ready serving pod.

It forwards to ready pods of a Kiln Deployment (round robin, retrying another pod when a
connection is refused, so a pod going away mid-rollout costs no request). When the
Deployment is scaled to zero it holds the request, asks for a replica, and forwards once
one is ready: the first request after zero is answered, just later.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time

import aiohttp
from aiohttp import web

from kiln_operator import deployment_builder, deployments, kube, serving_state

log = logging.getLogger("kiln.gateway")
CACHE_SECONDS = 0.5
WAKE_TIMEOUT = 180.0
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}


class Gateway:
    def __init__(self):
        self.cache: dict[tuple[str, str], tuple[float, list[str]]] = {}
        self.counter = itertools.count()
        self.session: aiohttp.ClientSession | None = None

    async def endpoints(self, ns: str, name: str, fresh: bool = False) -> list[str]:
        key = (ns, name)
        hit = self.cache.get(key)
        if hit and not fresh and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
        pods = await asyncio.to_thread(deployments._pods, ns, name)
        ips = [p["status"]["podIP"] for p in deployments.ready_pods(pods)]
        self.cache[key] = (time.monotonic(), ips)
        return ips

    async def wake(self, ns: str, name: str) -> list[str]:
        state = serving_state.get(ns, name)
        state.autoscaler.poke(time.time())
        state.wake = True
        await asyncio.to_thread(_scale_serving_to_one, ns, name)
        deadline = time.monotonic() + WAKE_TIMEOUT
        while time.monotonic() < deadline:
            ips = await self.endpoints(ns, name, fresh=True)
            if ips:
                return ips
            await asyncio.sleep(0.2)
        return []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ns, name, tail = request.match_info["ns"], request.match_info["name"], request.match_info["tail"]
        body = await request.read()
        ips = await self.endpoints(ns, name)
        if not ips:
            ips = await self.wake(ns, name)
            if not ips:
                return web.json_response({"error": f"no ready replica of {ns}/{name}"}, status=503)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        tried = set()
        for _ in range(min(3, len(ips) + 2)):
            candidates = [ip for ip in ips if ip not in tried] or await self.endpoints(ns, name, fresh=True)
            candidates = [ip for ip in candidates if ip not in tried]
            if not candidates:
                break
            ip = candidates[next(self.counter) % len(candidates)]
            tried.add(ip)
            url = f"http://{ip}:{deployment_builder.PORT}/{tail}"
            try:
                async with self.session.request(request.method, url, data=body, headers=headers,
                                                params=request.query) as resp:
                    payload = await resp.read()
                    out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
                    return web.Response(status=resp.status, body=payload, headers=out)
            except (TimeoutError, aiohttp.ClientConnectionError):
                self.cache.pop((ns, name), None)  # that pod is going away: look again
                continue
        return web.json_response({"error": f"no replica of {ns}/{name} answered"}, status=502)


def _scale_serving_to_one(ns: str, name: str) -> None:
    dep = kube.get_custom("deployments", ns, name)
    version = ((dep or {}).get("status") or {}).get("servingVersion")
    if not version:
        return
    apps = kube.dynamic().resources.get(api_version="apps/v1", kind="Deployment")
    server = deployment_builder.server_name(name, int(version))
    current = apps.get(name=server, namespace=ns).to_dict()
    if not (current.get("spec") or {}).get("replicas"):
        apps.patch(body={"spec": {"replicas": 1}}, name=server, namespace=ns,
                   content_type="application/merge-patch+json")


async def serve(host: str, port: int) -> web.AppRunner:
    gw = Gateway()
    gw.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60, connect=2))
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.router.add_route("*", "/{ns}/{name}/{tail:.*}", gw.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("gateway listening on %s:%d", host, port)
    return runner
