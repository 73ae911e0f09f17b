"""The metrics clock: one async loop per served Kiln Deployment, off the reconcile path.

Every second it scrapes the Deployment's ready pods (from the pod index, with one shared HTTP
session), feeds the autoscaler and the canary's tally, checks drift when due, and queues a
reconcile only when a decision may change: the autoscaler wants another replica count, a canary
is being judged, or the drift verdict moved. It ends when the Deployment has had no ready pod
for a few rounds; the reconcile starts it again when pods become ready.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from kiln_operator import artifacts, deployment_builder, drift
from kiln_operator.pods import is_ready

log = logging.getLogger("kiln.sampler")
INTERVAL = 1.0
IDLE_ROUNDS = 3


def ready_pods(pods: list[dict]) -> list[dict]:
    return [p for p in pods if is_ready(p)]


async def scrape(session: aiohttp.ClientSession, pod: dict) -> str | None:
    """A serving pod's /metrics text, or None when it cannot be read this round."""
    url = f"http://{pod['status']['podIP']}:{deployment_builder.PORT}/metrics"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1.5)) as resp:
            if resp.status != 200:
                return None
            return await resp.text()
    except (TimeoutError, aiohttp.ClientError):
        return None


async def run(ctl, key: tuple[str, str]) -> None:
    """The loop for one Deployment; ctl is the Controller (world, states, queue, session)."""
    ns, name = key
    idle = 0
    while idle < IDLE_ROUNDS:
        await asyncio.sleep(INTERVAL)
        dep = ctl.world.deployment(ns, name)
        serving = ctl.world.serving(ns, name) if dep is not None else None
        pods = ready_pods(serving.pods) if serving else []
        if not pods:
            idle += 1
            continue
        idle = 0
        texts = await asyncio.gather(*(scrape(ctl.session, p) for p in pods))
        state = ctl.state(key)
        status = dep.get("status") or {}
        now = time.time()
        state.ingest(now, [(p, t) for p, t in zip(pods, texts, strict=True) if t is not None],
                     status.get("canaryVersion"))
        spec = dep.get("spec") or {}
        current = sum(int((s.get("spec") or {}).get("replicas") or 0) for s in serving.servers.values())
        wants_other = (spec.get("autoscaling") or {}).get("metric", "concurrency") != "cpu" and \
            state.autoscaler.desired(now, current, spec) != current
        model = ctl.world.model(ns, (spec.get("model") or {}).get("name"))
        drift_moved = await _check_drift(state, spec, status, model, now)
        if wants_other or status.get("canaryVersion") or drift_moved:
            ctl.queue.add(("Deployment", ns, name))


async def _check_drift(state, spec: dict, status: dict, model: dict | None, now: float) -> bool:
    """Every drift.interval seconds: PSI of the serving version's live inputs vs its training data, and of its
    predictions vs the test split's (drift.assess_all)."""
    cfg = (spec.get("monitoring") or {}).get("drift") or {}
    serving = status.get("servingVersion")
    if not cfg.get("enabled") or not serving or now - state.drift_checked < cfg.get("interval", 60):
        return False
    state.drift_checked = now
    if serving not in state.cards:
        uri = _version_uri(model, serving)
        stored = await asyncio.to_thread(artifacts.read_card, uri) if uri else None
        state.cards[serving] = stored.card if stored else {}
    drifted, scores = drift.assess_all(state.cards[serving], state.live_inputs(serving), state.live_outputs(serving),
                                       cfg.get("threshold", 0.2), cfg.get("minSamples", 100))
    before = state.drift
    state.drift = (serving, drifted, scores)
    return before is None or before[:2] != state.drift[:2] or before[2] != scores


def _version_uri(model: dict | None, version: int) -> str | None:
    entry = next((v for v in ((model or {}).get("status") or {}).get("versions", []) if v["version"] == version), {})
    return entry.get("uri")
