"""The operator's own HTTP endpoints: /metrics (Prometheus) and the activator's POST /wake/<ns>/<name>.

The gateway (its own Deployment, read-only rights) asks here for a replica of a Deployment
scaled to zero; the operator, which owns the Deployment, decides and scales.
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kiln_operator import operator_metrics

log = logging.getLogger("kiln.endpoints")


def app(controller) -> web.Application:
    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(operator_metrics.REGISTRY),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def wake(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info["name"]
        if not controller.wake(ns, name):
            return web.json_response({"error": f"no Kiln Deployment {ns}/{name}"}, status=404)
        return web.json_response({"waking": f"{ns}/{name}"}, status=202)

    application = web.Application(client_max_size=1024)
    application.router.add_get("/metrics", metrics)
    application.router.add_post("/wake/{ns}/{name}", wake)
    return application


async def serve(controller, listen: str) -> web.AppRunner:
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(app(controller), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "0.0.0.0", int(port)).start()
    log.info("operator endpoints (/metrics, /wake) on %s", listen)
    return runner
