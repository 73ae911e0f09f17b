"""The controller: watch events queue object keys; workers reconcile them from the observed world.

As an informer-based controller does: kopf's watches fill the indexes (indexes.py) and queue the
key of the Kiln object an event concerns (handlers.py); a worker takes a snapshot of the world on
the event loop (world.py), runs observe → decide → act in a thread, then writes status only
where it changed. Clocks queue keys too: cron ticks and canary steps (requeue_after), the
metrics samplers (sampler.py), and a slow resync that only re-reads the caches.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import aiohttp

from kiln_contract import storage
from kiln_operator import (
    conditions,
    deployments,
    downloads,
    kube,
    models,
    operator_metrics,
    sampler,
    trainingjobs,
)
from kiln_operator.reconcile import Result, status_changes
from kiln_operator.serving_state import ServingState
from kiln_operator.settings import Settings
from kiln_operator.workqueue import WorkQueue
from kiln_operator.world import World

log = logging.getLogger("kiln.controller")
PLURALS = {"TrainingJob": "trainingjobs", "Model": "models", "Deployment": "deployments"}
# Under a burst a TrainingJob's Job comes first, then serving, then following runs that have their Job (the
# Job and pod events of a burst's runs, as many as its new runs), then Model bookkeeping.
PRIORITY = {"TrainingJob": 0, "Deployment": 1, "Model": 3}
FOLLOWING_PRIORITY = 2
WAKE_SIGNAL_SECONDS = 5.0
EVENT_DEFER = 5.0
# A Model whose runs are about to reserve versions waits for them: each reservation settles the Model too,
# so its own pass then writes nothing, instead of racing them for the same status (a 409 and a retry each).
MODEL_AFTER_RUNS = 0.25
NEW_MODEL_WAIT = 1.0
BUSY_QUEUE = 20
GC_CHECK_SECONDS = 5.0
GC_QUIET_SECONDS = 30.0
GC_AT_LEAST_SECONDS = 300.0
GC_FULL_NEVER = 1 << 30  # generation 2's threshold: full collections only by _collect_garbage


def full_collection_due(quiet: bool, since_last: float) -> bool:
    """Whether the operator runs a full garbage collection now: when quiet and a while since the last, or
    when it has waited too long for a quiet moment (cycles keep memory until collected)."""
    return since_last >= GC_QUIET_SECONDS if quiet else since_last >= GC_AT_LEAST_SECONDS


class Controller:
    def __init__(self, cfg: Settings, indexes: dict):
        self.cfg = cfg
        self.world = World(indexes=indexes)
        self.queue = WorkQueue(priority=self._priority)
        self.states: dict[tuple[str, str], ServingState] = {}
        self.samplers: dict[tuple[str, str], asyncio.Task] = {}
        self.new_generation: dict[tuple, tuple[int, float]] = {}  # key -> (generation, monotonic when seen)
        self.failures: dict[tuple, int] = {}
        self.new_models: set[tuple] = set()  # Models whose first pass waited already (_model_waits)
        self.executor = ThreadPoolExecutor(cfg.workers, thread_name_prefix="kiln-reconcile")
        self.event_executor = ThreadPoolExecutor(2, thread_name_prefix="kiln-events")
        self.events: asyncio.Queue = asyncio.Queue(maxsize=10_000)
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task] = []
        self.side_tasks: set[asyncio.Task] = set()
        self.downloads: downloads.Downloads | None = None

    def _priority(self, key: tuple) -> int:
        kind, ns, name = key
        if kind == "TrainingJob" and trainingjobs.following(self.world.trainingjob(ns, name)):
            return FOLLOWING_PRIORITY
        return PRIORITY[kind]

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        # Made now rather than by the first reconciles of a burst, which would all wait for them.
        await asyncio.to_thread(kube.api)
        await asyncio.to_thread(storage.s3_client)
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
        self.downloads = downloads.Downloads(self.cfg.downloads, self.queue.add)
        self.tasks = [asyncio.create_task(self._worker()) for _ in range(self.cfg.workers)]
        self.tasks.append(asyncio.create_task(self._resync()))
        self.tasks += [asyncio.create_task(self._post_events()) for _ in range(2)]
        self.tasks.append(asyncio.create_task(self._collect_garbage()))

    async def stop(self) -> None:
        for task in [*self.tasks, *self.samplers.values()]:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.samplers.values(), return_exceptions=True)
        if self.session:
            await self.session.close()
        if self.downloads:
            await self.downloads.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.event_executor.shutdown(wait=False, cancel_futures=True)

    # --- inputs --------------------------------------------------------------------------------
    def notice(self, kind: str, namespace: str, name: str, body: dict | None = None) -> None:
        """A watch event concerns this object: queue it (and note a new spec generation's arrival)."""
        key = (kind, namespace, name)
        if body is not None:
            generation = (body.get("metadata") or {}).get("generation")
            observed = (body.get("status") or {}).get("observedGeneration")
            if generation and generation != observed and self.new_generation.get(key, (None,))[0] != generation:
                self.new_generation[key] = (generation, time.monotonic())
        self.queue.add(key)
        operator_metrics.QUEUE_DEPTH.set(len(self.queue))

    def trainingjob_deleted(self, namespace: str, body: dict) -> None:
        """A deleted TrainingJob's reserved version becomes Failed (Cancelled), off the event loop."""
        model = self.world.model(namespace, (body.get("spec") or {}).get("model"))
        uid = (body.get("metadata") or {}).get("uid")
        if model is None or not uid:
            return
        users = self.world.users_of(namespace, model["metadata"]["name"])

        async def cancel() -> None:
            try:
                written = await asyncio.get_running_loop().run_in_executor(
                    self.executor, trainingjobs.cancel_deleted, model, uid, users)
            except Exception:  # noqa: BLE001 - the Model's next reconcile is unaffected; say why
                log.exception("could not cancel the version of deleted TrainingJob %s/%s", namespace, uid)
                return
            for w in written:
                self.world.remember(w)

        task = asyncio.create_task(cancel())
        self.side_tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self.side_tasks.discard)

    def wake(self, namespace: str, name: str) -> bool:
        """The activator holds a request for this Deployment: there is traffic, whatever the samples say."""
        if self.world.deployment(namespace, name) is None:
            return False
        state = self.state((namespace, name))
        now = time.time()
        state.woken_at = now
        state.autoscaler.poke(now)
        self.queue.add(("Deployment", namespace, name))
        return True

    def state(self, key: tuple[str, str]) -> ServingState:
        return self.states.setdefault(key, ServingState())

    # --- the loop ------------------------------------------------------------------------------
    async def _resync(self) -> None:
        """A slow safety net: queue every object again. It reads caches only; unchanged objects cost nothing."""
        while True:
            await asyncio.sleep(self.cfg.resync_seconds)
            for kind, index in (("TrainingJob", "kiln_trainingjobs"), ("Model", "kiln_models"),
                                ("Deployment", "kiln_deployments")):
                for ns, name in list(self.world.indexes.get(index) or {}):
                    self.queue.add((kind, ns, name))

    async def _worker(self) -> None:
        while True:
            key = await self.queue.get()
            try:
                await self._handle(key)
                self.failures.pop(key, None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one object's failure must not stop the worker
                if kube.namespace_terminating(exc):
                    # e.g. a child re-created while its namespace is deleted: the object is going away too
                    operator_metrics.RECONCILES.labels(kind=key[0], outcome="namespace_terminating").inc()
                    log.debug("%s %s/%s: its namespace is being deleted; not retried", *key)
                    continue
                operator_metrics.RECONCILES.labels(kind=key[0], outcome="error").inc()
                n = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(60.0, 0.5 * 2 ** min(n, 7))
                log.exception("reconcile of %s %s/%s failed (attempt %d); again in %.1fs", *key, n, delay)
                self.queue.add_after(key, delay)
            finally:
                self.queue.done(key)
                operator_metrics.QUEUE_DEPTH.set(len(self.queue))

    async def _collect_garbage(self) -> None:
        """Python's full (generation 2) collections, when little is in hand rather than when allocations say.

        A full collection scans every object of the process; with the indexes of a thousand objects each one
        stalled the event loop (every watch event, every worker's hand-off) for 0.15-0.33 s, several times
        in a burst — the heap grows by a quarter again and again as the burst's objects arrive. Young
        collections run as before; the cached objects are decoded JSON, without reference cycles."""
        gc.freeze()  # what start-up made (modules, settings) is never garbage
        gc.set_threshold(*gc.get_threshold()[:2], GC_FULL_NEVER)
        last = time.monotonic()
        while True:
            await asyncio.sleep(GC_CHECK_SECONDS)
            now = time.monotonic()
            if full_collection_due(self.queue.outstanding() <= BUSY_QUEUE, now - last):
                gc.collect()
                last = time.monotonic()

    def _snapshot(self, key: tuple):
        """On the event loop: the world this reconcile sees, and the function that acts on it."""
        kind, ns, name = key
        if kind == "TrainingJob":
            world = self.world.training(ns, name)
            return world and (world.tj, lambda: trainingjobs.reconcile(world, self.cfg))
        if kind == "Model":
            world = self.world.registry(ns, name)
            if world is None:
                return None
            world.downloads = self.downloads.finished() if self.downloads else {}
            return world.model, lambda: models.reconcile(world, self.cfg)
        world = self.world.serving(ns, name)
        if world is None:
            return None
        signals = self._signals((ns, name), world)
        now = time.time()
        return world.dep, lambda: deployments.reconcile(world, signals, self.cfg, now)

    def _signals(self, key: tuple[str, str], world) -> deployments.Signals:
        state = self.state(key)
        spec = world.dep.get("spec") or {}
        now = time.time()
        _, replicas = deployments.counts(world)
        desired = None
        if not (world.dep.get("status") or {}).get("servingVersion") and state.autoscaler.last_traffic is None:
            # A new Deployment starts with a replica, as Knative's initial scale: it shows it can serve,
            # then goes to zero (min: 0) after scaleToZeroAfter without traffic.
            state.autoscaler.poke(now)
        if (spec.get("autoscaling") or {}).get("metric", "concurrency") != "cpu":
            desired = state.autoscaler.desired(now, sum(replicas.values()), spec)
        serving = (world.dep.get("status") or {}).get("servingVersion")
        drift = state.drift[1:] if state.drift and state.drift[0] == serving else None
        if sampler.ready_pods(world.pods) and (key not in self.samplers or self.samplers[key].done()):
            self.samplers[key] = asyncio.create_task(sampler.run(self, key))
        operator_metrics.SAMPLERS.set(sum(1 for t in self.samplers.values() if not t.done()))
        return deployments.Signals(desired=desired, wake=now - state.woken_at < WAKE_SIGNAL_SECONDS,
                                   canary=state.canary_seen, drift=drift, conflicts=list(state.conflicts))

    def _runs_starting(self, ns: str, model: str) -> bool:
        """Whether a run of this Model is about to reserve a version: its TrainingJob is queued or being
        handled and has no Job yet for its spec generation."""
        for name in self.world.trainingjobs_of(ns, model):
            if not self.queue.busy(("TrainingJob", ns, name)):
                continue
            tj = self.world.trainingjob(ns, name) or {}
            status = tj.get("status") or {}
            if not status.get("jobName") or status.get("observedGeneration") != tj["metadata"].get("generation"):
                return True
        return False

    def _model_waits(self, key: tuple) -> float:
        """Seconds a Model's pass waits, or 0. A new Model's first pass waits a second (once): a run applied
        with it (the same kubectl apply, the same GitOps sync) follows, and its reservation settles the Model
        in the same write."""
        _, ns, name = key
        if self._runs_starting(ns, name):
            return MODEL_AFTER_RUNS
        model = self.world.model(ns, name)
        if model is not None and not model.get("status") and key not in self.new_models:
            self.new_models.add(key)
            return NEW_MODEL_WAIT
        return 0.0

    async def _handle(self, key: tuple) -> None:
        kind, ns, name = key
        if kind == "Model" and (wait := self._model_waits(key)):
            self.queue.add_after(key, wait)
            return
        snapshot = self._snapshot(key)
        if not snapshot:
            self._forget(key)
            return
        obj, act = snapshot
        if obj["metadata"].get("deletionTimestamp") and kind != "Model":
            return  # going away: its children go with it (ownerReferences); a Model may have artifacts to delete
        started = time.monotonic()
        result, written = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._act, kind, obj, act)
        operator_metrics.RECONCILE_SECONDS.labels(kind=kind).observe(time.monotonic() - started)
        changed = result.acted or written is not None
        operator_metrics.RECONCILES.labels(kind=kind, outcome="changed" if changed else "unchanged").inc()
        self._absorb(key, obj, result, written)
        if result.events:
            try:
                self.events.put_nowait(({**obj, "kind": kind}, result.events))
            except asyncio.QueueFull:
                log.warning("event queue full: dropped %d events of %s %s/%s", len(result.events), *key)

    def _act(self, kind: str, obj: dict, act) -> tuple[Result, dict | None]:
        """In a worker thread: reconcile, then write the status changes and post the events."""
        result = act()
        meta = obj["metadata"]
        written = None
        changes = status_changes(obj.get("status"), result.status)
        if changes:
            written = kube.patch_status(PLURALS[kind], meta["namespace"], meta["name"], changes)
        return result, written

    async def _post_events(self) -> None:
        """Events go out after the reconcile that made them, off its path (the status already says it all)."""
        while True:
            obj, events = await self.events.get()
            now = conditions.now()
            # Under a burst the API server's capacity goes to the writes users wait for (Jobs, status);
            # Events wait a little (at most EVENT_DEFER seconds) for the work in hand (queued and being handled)
            # to drain.
            deadline = time.monotonic() + EVENT_DEFER
            while self.queue.outstanding() > BUSY_QUEUE and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            for type_, reason, message in events:
                try:
                    await asyncio.get_running_loop().run_in_executor(
                        self.event_executor, kube.post_event, obj, type_, reason, message, now)
                except Exception as exc:  # noqa: BLE001 - an Event is a courtesy
                    meta = obj["metadata"]
                    log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"],
                                exc)

    def _absorb(self, key: tuple, obj: dict, result: Result, written: dict | None) -> None:
        """Back on the event loop: remember what we wrote, and when to look again."""
        kind, ns, name = key
        for w in [*result.written, *([written] if written else [])]:
            self.world.remember(w)
        for job_ns, job_name in result.jobs_created:
            self.world.expect_job(job_ns, job_name)
        if result.storage_checked:
            self.world.storage_checked.add(result.storage_checked)
        for uri, sha256 in result.downloaded:
            self.downloads.release(uri, sha256)
        for uri, sha256 in result.downloads:
            self.downloads.want(key, uri, sha256)
        if kind == "Deployment":
            state = self.state((ns, name))
            if result.reset_canary:
                state.reset_canary()
            if result.conflicts is not None:
                state.conflicts = list(result.conflicts)
        pending = self.new_generation.get(key)
        if pending and (result.acted or written) and pending[0] == obj["metadata"].get("generation"):
            operator_metrics.SPEC_TO_ACTION.labels(kind=kind).observe(time.monotonic() - pending[1])
            self.new_generation.pop(key, None)
        if result.requeue_after is not None:
            self.queue.add_after(key, result.requeue_after)

    def _forget(self, key: tuple) -> None:
        kind, ns, name = key
        self.queue.forget(key)
        self.new_generation.pop(key, None)
        self.failures.pop(key, None)
        self.new_models.discard(key)
        if kind == "Deployment":
            self.states.pop((ns, name), None)
            task = self.samplers.pop((ns, name), None)
            if task:
                task.cancel()
