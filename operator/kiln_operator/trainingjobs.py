"""TrainingJob reconciliation: one run at a time, each with a version reserved before its Job exists.

Observe (world.TrainingWorld, from the indexes) → decide (due_run, job_outcome.outcome: pure)
→ act (reserve a version, create the Job, commit or fail the version). The status patch is
written by the controller, and only where it changes.
"""

from __future__ import annotations

import datetime as dt
import json

from croniter import croniter

from kiln_contract import checksums, search_plan, storage
from kiln_contract import spec as specs
from kiln_operator import (
    artifacts,
    conditions,
    images,
    job_outcome,
    kube,
    labels,
    models,
    operator_metrics,
    registry,
    search_shards,
    tenancy,
    trainingjob_builder,
)
from kiln_operator.reconcile import Result, invalid_spec
from kiln_operator.settings import Settings
from kiln_operator.world import TrainingWorld

ACTIVE = ("Pending", "Running")
RUNS_KEPT = 10


def following(tj: dict | None) -> bool:
    """Whether this TrainingJob's current run has its Job already, and a pass would only follow it (a Job or pod
    event); a pass that may start a run — a new or edited spec, a cron tick, a finished run — is not."""
    if not tj:
        return False
    status = tj.get("status") or {}
    return bool(status.get("jobName")) and status.get("phase") in ACTIVE and \
        status.get("observedGeneration") == tj["metadata"].get("generation")


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _condition(status: dict, value, reason: str, message: str, generation: int) -> list[dict]:
    return conditions.set_condition(status.get("conditions"), "Succeeded", value, reason, message, generation)


def _ticks(tj: dict, spec: dict, status: dict) -> croniter:
    last = _parse(status.get("lastScheduleTime") or tj["metadata"]["creationTimestamp"])
    return croniter(spec["schedule"], last)


def due_run(tj: dict, spec: dict, status: dict, now: dt.datetime) -> tuple[str, str | None] | None:
    """(run id, schedule tick) of the run that should start now, or None."""
    if spec.get("suspend"):
        return None
    if not spec.get("schedule"):
        run = f"g{tj['metadata']['generation']}"
        retrain = (tj["metadata"].get("annotations") or {}).get(labels.RETRAIN)
        if retrain:
            run += f"-r{checksums.sha256_bytes(retrain.encode())[:8]}"
        return None if status.get("run") == run else (run, None)
    itr = _ticks(tj, spec, status)
    tick = itr.get_next(dt.datetime)
    if tick > now:
        return None
    while (following := itr.get_next(dt.datetime)) <= now:  # missed ticks collapse into the latest one
        tick = following
    stamp = tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"s{tick.strftime('%Y%m%d%H%M%S')}", stamp


def seconds_to_next_tick(tj: dict, spec: dict, status: dict, now: dt.datetime) -> float | None:
    """When a scheduled TrainingJob should be looked at again (its next cron tick), or None."""
    if not spec.get("schedule") or spec.get("suspend"):
        return None
    tick = _ticks(tj, spec, status).get_next(dt.datetime)
    return max(0.0, (tick - now).total_seconds())


def reconcile(world: TrainingWorld, cfg: Settings, now: dt.datetime | None = None) -> Result:
    now = now or dt.datetime.now(dt.UTC)
    tj = world.tj
    status = dict(tj.get("status") or {})
    generation = tj["metadata"]["generation"]
    try:
        spec = specs.validate("TrainingJob", tj["spec"])
    except specs.SpecError as exc:
        return Result(status=invalid_spec("TrainingJob", tj, exc))
    if status.get("phase") in ACTIVE and status.get("jobName"):
        if spec.get("suspend"):
            return cancel(world, spec, status)
        if (status.get("search") or {}).get("stage") == "shards":
            return follow_search(world, spec, status, cfg)
        return follow(world, spec, status)
    due = due_run(tj, spec, status, now)
    if due is None:
        patch: dict = {"observedGeneration": generation}
        if spec.get("suspend") and status.get("phase") not in ("Succeeded", "Failed"):
            patch["phase"] = "Pending"
            patch["conditions"] = _condition(status, "Unknown", "Suspended", "spec.suspend is true", generation)
        elif spec.get("schedule") and not status.get("phase"):
            patch["phase"] = "Pending"
            patch["conditions"] = _condition(status, "Unknown", "Scheduled",
                                             f"waiting for the next tick of {spec['schedule']!r}", generation)
        return Result(status=patch, requeue_after=seconds_to_next_tick(tj, spec, status, now))
    return start(world, spec, status, cfg, *due)


def _check_tenancy(spec: dict, model: dict, cfg: Settings) -> None:
    """What the run would touch, against what its namespace may use: scheduling keys, the dataset, the storage."""
    ns = model["metadata"]["namespace"]
    tenancy.check_scheduling(spec, cfg.allowed_toleration_keys, cfg.allowed_node_selector_keys,
                             cfg.allowed_scheduler_names)
    uri = str((spec.get("dataset") or {}).get("uri", ""))
    if uri.startswith("s3:"):
        tenancy.within(uri, tenancy.readable(ns, cfg.storage, cfg.storage_prefixes, cfg.read_prefixes),
                       "spec.dataset.uri")
    try:
        models.storage_of(model, cfg)
    except tenancy.NotAllowed as exc:
        raise tenancy.NotAllowed(f"Model {model['metadata']['name']} {exc.field}", exc.message) from exc


def _not_allowed_reason(exc: tenancy.NotAllowed) -> str:
    return "SchedulingNotAllowed" if exc.field.startswith(("spec.tolerations", "spec.nodeSelector",
                                                           "spec.schedulerName")) \
        else "StorageNotAllowed"


def start(world: TrainingWorld, spec: dict, status: dict, cfg: Settings, run: str, tick: str | None) -> Result:
    tj, model = world.tj, world.model
    meta = tj["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta["generation"]
    if model is None:
        return Result(status={"phase": "Pending", "observedGeneration": generation,
                              "conditions": _condition(status, "Unknown", "ModelMissing",
                                                       f'spec.model: Model "{spec["model"]}" does not exist in '
                                                       f"namespace {ns}; the run starts when it is created",
                                                       generation)})
    try:
        image = images.choose(spec.get("image"), cfg.trainer_image, cfg.allowed_images, "spec.image")
        _check_tenancy(spec, model, cfg)
    except (images.ImageNotAllowed, tenancy.NotAllowed) as exc:
        reason = "ImageNotAllowed" if isinstance(exc, images.ImageNotAllowed) else _not_allowed_reason(exc)
        return Result(status={"phase": "Failed", "run": run, "observedGeneration": generation,
                              "conditions": _condition(status, False, reason, str(exc), generation)},
                      events=[("Warning", reason, str(exc))])

    out = Result(acted=True)
    if not world.storage_checked:
        models.adopt_storage(model, cfg, world.model_users, out)
        model = out.written[-1] if out.written else model
    # A reservation this TrainingJob made before a crash is adopted, never doubled.
    owner = f"{meta['uid']}/"
    pending = next((v for v in (model.get("status") or {}).get("versions", [])
                    if v["state"] == "Pending" and str(v.get("run", "")).startswith(owner)), None)
    if pending is not None:
        run = pending["run"][len(owner):]
    store = models.storage_of(model, cfg)
    version = models.reserve(model, store, owner + run, name, world.model_users, out.written)
    prefix = storage.version_prefix(store, spec["model"], version)
    plan = search_plan.plan(spec.get("search"))
    search = None
    if plan is None:
        job = trainingjob_builder.build_job(tj, version=version, run=run, output=prefix, image=image,
                                            s3_secret=cfg.s3_secret)
        job_name = job["metadata"]["name"]
        if kube.create_job(job):
            operator_metrics.JOBS_STARTED.inc()
        out.jobs_created.append((ns, job_name))
        message = f"Job {job_name} trains version {version}"
    else:  # a search across pods: the shards first, the training Job once they are done (search_shards)
        job_name = trainingjob_builder.job_name(name, version)
        # the run's spec is kept with its search: a spec edited mid-run applies to the next run, as for one Job.
        # As a JSON string: a merge patch of status would drop the nulls in it (max_depth: [2, null]).
        search = {**search_shards.initial(plan), "spec": json.dumps(tj["spec"], sort_keys=True)}
        decision = search_shards.decide(search, {}, {}, set())
        search = decision.search
        _create_shards(tj, decision.create, plan.shards, version, run, prefix, image, cfg, out)
        message = (f"search of {plan.candidates} candidates in {plan.shards} shards ({plan.parallelism} at once) "
                   f"for version {version}; Job {job_name} trains the best")
    out.status = {
        "phase": "Pending", "run": run, "jobName": job_name, "modelVersion": version, "artifactURI": prefix,
        "attempts": 1, "startTime": conditions.now(), "completionTime": None, "metrics": None,
        "mainMetric": None, "bestParams": None, "sha256": None, "gatesPassed": None, "search": search,
        "observedGeneration": generation,
        "conditions": _condition(status, "Unknown", "JobCreated" if plan is None else "SearchStarted", message,
                                 generation),
    }
    if tick:
        out.status["lastScheduleTime"] = tick
        runs = [r for r in status.get("runs") or [] if r.get("run") != run]
        out.status["runs"] = (runs + [{"run": run, "job": job_name, "version": version, "phase": "Pending",
                                       "scheduledAt": tick}])[-RUNS_KEPT:]
    out.events.append(("Normal", "JobCreated" if plan is None else "SearchStarted",
                       f"{message} of Model {spec['model']}"))
    return out


def _create_shards(tj: dict, shards: list[int], total: int, version: int, run: str, prefix: str, image: str,
                   cfg: Settings, out: Result) -> None:
    results = f"{prefix}/{search_plan.RESULTS_DIR}"
    for k in shards:
        job = trainingjob_builder.build_job(tj, version=version, run=run, output=prefix, image=image,
                                            s3_secret=cfg.s3_secret, search_results=results, shard=(k, total))
        if kube.create_job(job):
            operator_metrics.JOBS_STARTED.inc()
        out.jobs_created.append((tj["metadata"]["namespace"], job["metadata"]["name"]))
        out.acted = True


def follow_search(world: TrainingWorld, spec: dict, status: dict, cfg: Settings) -> Result:
    """The shards of a search across pods: create them as parallelism allows, show progress, then start
    the training Job with the results; a shard that failed for good fails the run."""
    meta = world.tj["metadata"]
    generation, version, prefix = meta["generation"], status["modelVersion"], status["artifactURI"]
    search = status["search"]
    tj = {**world.tj, "spec": json.loads(search["spec"]) if search.get("spec") else world.tj["spec"]}  # as started
    decision = search_shards.decide(search, world.shard_jobs, world.shard_pods, world.shard_expected)
    patch: dict = {"observedGeneration": generation, "search": decision.search,
                   "attempts": max(decision.attempts, status.get("attempts") or 0)}
    if decision.failed is not None:
        _delete_shards(world, version, search)
        shard_job = search_shards.shard_job_name(meta["name"], version, decision.failed_shard)
        failed = decision.failed
        failed.message = f"search shard {decision.failed_shard} (Job {shard_job}): {failed.message}"
        return _failed(world, spec, status, patch, failed, version, shard_job)
    out = Result(events=[])
    image = images.choose(tj["spec"].get("image"), cfg.trainer_image, cfg.allowed_images, "spec.image")
    _create_shards(tj, decision.create, search["shards"], version, status["run"], prefix, image, cfg, out)
    patch["phase"] = decision.phase
    if decision.finished:
        job = trainingjob_builder.build_job(tj, version=version, run=status["run"], output=prefix, image=image,
                                            s3_secret=cfg.s3_secret,
                                            search_results=f"{prefix}/{search_plan.RESULTS_DIR}")
        if kube.create_job(job):
            operator_metrics.JOBS_STARTED.inc()
        out.jobs_created.append((meta["namespace"], status["jobName"]))
        out.acted = True
        best = decision.search.get("bestParams")
        message = (f"search done ({decision.search['progress']}); Job {status['jobName']} fits the best candidate"
                   + (f" {best}" if best else ""))
        patch["phase"] = "Running"
        patch["conditions"] = _condition(status, "Unknown", "SearchDone", message[:1000], generation)
        out.events.append(("Normal", "SearchDone", message[:1000]))
    elif decision.phase == "Running" and status.get("phase") != "Running":
        patch["conditions"] = _condition(status, "Unknown", "Searching",
                                         f"search shards running: {decision.search['progress']}", generation)
        out.events.append(("Normal", "Running", f"search shards of version {version} are running"))
    out.status = _with_run(status, patch)
    return out


def _delete_shards(world: TrainingWorld, version: int, search: dict) -> None:
    name, ns = world.tj["metadata"]["name"], world.tj["metadata"]["namespace"]
    for k in range(int(search.get("shards") or 0)):
        if world.shard_jobs.get(k) is not None or k in world.shard_expected:
            kube.delete_job(ns, search_shards.shard_job_name(name, version, k))


def cancel(world: TrainingWorld, spec: dict, status: dict) -> Result:
    """spec.suspend during a run: its Jobs (and so their pods) go, its version is Failed, nothing is registered."""
    tj = world.tj
    meta = tj["metadata"]
    generation, version, job_name = meta["generation"], status["modelVersion"], status["jobName"]
    if status.get("search"):
        _delete_shards(world, version, status["search"])
    if world.job is not None or world.job_expected or not status.get("search"):
        kube.delete_job(meta["namespace"], job_name)
    out = Result(acted=True)
    message = f"spec.suspend is true: the run of version {version} was cancelled; its pods are deleted"
    if world.model is not None:
        models.fail_version(world.model, version, "Cancelled: spec.suspend", world.model_users, out.written)
    patch = {"phase": "Failed", "completionTime": conditions.now(), "observedGeneration": generation,
             "conditions": _condition(status, False, "Cancelled", message, generation)}
    out.events.append(("Warning", "Cancelled", message))
    out.status = _with_run(status, patch)
    return out


def cancel_deleted(model: dict | None, tj_uid: str, users: list[dict]) -> list[dict]:
    """A TrainingJob was deleted: its Jobs go with it (ownerReferences); the version its run reserved
    becomes Failed (reason Cancelled), so nothing is ever registered for it. Returns what was written."""
    written: list[dict] = []
    if model is None:
        return written
    for v in (model.get("status") or {}).get("versions") or []:
        if v.get("state") == "Pending" and str(v.get("run", "")).startswith(f"{tj_uid}/"):
            models.fail_version(written[-1] if written else model, v["version"], "Cancelled: TrainingJob deleted",
                                users, written)
    return written


def follow(world: TrainingWorld, spec: dict, status: dict) -> Result:
    generation = world.tj["metadata"]["generation"]
    job_name, version, prefix = status["jobName"], status["modelVersion"], status["artifactURI"]
    job = world.job
    if job is None and world.job_expected:
        return Result()  # we created it a moment ago; its watch event is on its way
    out_job = job_outcome.outcome(job, world.pods if job else [])
    if job is None:
        found = artifacts.read_card(prefix)
        out_job = job_outcome.Outcome("Succeeded") if found else job_outcome.Outcome(
            "Failed", "JobDeleted", f"Job {job_name} disappeared before the run finished")
    patch: dict = {"attempts": out_job.attempts or status.get("attempts", 0), "observedGeneration": generation}
    if out_job.phase in ACTIVE:
        events = []
        if out_job.phase == "Running" and status.get("phase") != "Running":
            events.append(("Normal", "Running", f"training pod of {job_name} is running"))
            patch["conditions"] = _condition(status, "Unknown", "Running", f"Job {job_name} is running", generation)
        # a search across pods is Running from its first shard on, also while the training Job's pod starts
        patch["phase"] = "Running" if status.get("search") and status.get("phase") == "Running" else out_job.phase
        return Result(status=_with_run(status, patch), events=events)
    if out_job.phase == "Succeeded":
        stored = artifacts.read_card(prefix)
        if stored is not None:
            return _succeeded(world, spec, status, patch, stored, out_job, version, prefix)
        out_job = job_outcome.Outcome("Failed", "NoModelCard",
                                      f"the trainer exited 0 but {prefix}/modelcard.json is missing")
    return _failed(world, spec, status, patch, out_job, version, job_name)


def _succeeded(world, spec, status, patch, stored, out_job, version, prefix) -> Result:
    generation = world.tj["metadata"]["generation"]
    card = stored.card
    out = Result(acted=True)
    entry = models.commit_version(world.model, version, stored, prefix, world.model_users, out.written)
    model = out.written[-1] if out.written else world.model
    metric_name = main_metric_name(model, card)
    value = card["metrics"].get(metric_name)
    patch.update({
        "phase": "Succeeded", "completionTime": out_job.completion_time or conditions.now(),
        "metrics": card["metrics"], "bestParams": card.get("params") or {},
        "mainMetric": f"{metric_name}={value:.4g}" if isinstance(value, int | float) else None,
        "sha256": entry.get("sha256"), "gatesPassed": entry["state"] == "Registered",
        "conditions": _condition(status, True, entry["state"], f"version {version} {entry['state'].lower()}",
                                 generation),
    })
    out.events.append(("Normal", entry["state"], f"Model {spec['model']} version {version} {entry['state']}"))
    withheld = entry.get("withheld") or {}
    if withheld:  # a requested format the trainer could not produce: said on the run, not only in the card
        message = "; ".join(f"{fmt}: {why}" for fmt, why in sorted(withheld.items()))
        patch["conditions"] = conditions.set_condition(patch["conditions"], "ArtifactsComplete", False,
                                                       "FormatWithheld", f"version {version} lacks {message}",
                                                       generation)
        out.events.append(("Warning", "FormatWithheld", f"version {version} lacks {message}"))
    if entry["state"] == "Rejected":
        failed = [g["metric"] for g in entry.get("gates", []) if not g.get("passed")]
        out.events.append(("Warning", "GateFailed", f"version {version} failed gates: {', '.join(failed)}"))
    if entry.get("promoted"):
        out.events.append(("Normal", "Promoted", f"version {version} is now production"))
    out.status = _with_run(status, patch)
    return out


def _failed(world, spec, status, patch, out_job, version, job_name) -> Result:
    generation = world.tj["metadata"]["generation"]
    out = Result(acted=True)
    reason, message = out_job.reason or "Failed", out_job.message or "the run failed"
    if world.model is not None:
        models.fail_version(world.model, version, reason, world.model_users, out.written)
    if out_job.reason == "ImageNotRunnable":
        kube.delete_job(world.tj["metadata"]["namespace"], job_name)  # it would wait forever
    patch.update({"phase": "Failed", "completionTime": conditions.now(),
                  "conditions": _condition(status, False, reason, message[:2000], generation)})
    out.events.append(("Warning", reason, message[:1000]))
    out.status = _with_run(status, patch)
    return out


def _with_run(status: dict, patch: dict) -> dict:
    """Mirror the current run's phase into status.runs for scheduled TrainingJobs."""
    if status.get("runs") and "phase" in patch:
        runs = [dict(r) for r in status["runs"]]
        for r in runs:
            if r.get("run") == status.get("run"):
                r["phase"] = patch["phase"]
        patch["runs"] = runs
    return patch


def main_metric_name(model: dict | None, card: dict) -> str:
    metric, _, _ = registry.promotion_metric((model or {}).get("spec") or {}, card.get("task"))
    return metric
