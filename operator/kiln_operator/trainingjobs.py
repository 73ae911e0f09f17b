"""TrainingJob reconciliation: one run at a time, each with a version reserved before its Job exists.

Observe (world.TrainingWorld, from the indexes) → decide (due_run, job_outcome.outcome: pure)
→ act (reserve a version, create the Job, commit or fail the version). The status patch is
written by the controller, and only where it changes.
"""

from __future__ import annotations

import datetime as dt

from croniter import croniter

from kiln_contract import checksums, storage
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
    tenancy,
    trainingjob_builder,
)
from kiln_operator.reconcile import Result, invalid_spec
from kiln_operator.settings import Settings
from kiln_operator.world import TrainingWorld

ACTIVE = ("Pending", "Running")
RUNS_KEPT = 10


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
    tenancy.check_scheduling(spec, cfg.allowed_toleration_keys, cfg.allowed_node_selector_keys)
    uri = str((spec.get("dataset") or {}).get("uri", ""))
    if uri.startswith("s3:"):
        tenancy.within(uri, tenancy.readable(ns, cfg.storage, cfg.storage_prefixes, cfg.read_prefixes),
                       "spec.dataset.uri")
    try:
        models.storage_of(model, cfg)
    except tenancy.NotAllowed as exc:
        raise tenancy.NotAllowed(f"Model {model['metadata']['name']} {exc.field}", exc.message) from exc


def _not_allowed_reason(exc: tenancy.NotAllowed) -> str:
    return "SchedulingNotAllowed" if exc.field.startswith(("spec.tolerations", "spec.nodeSelector")) \
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
    job = trainingjob_builder.build_job(tj, version=version, run=run, output=prefix, image=image,
                                        s3_secret=cfg.s3_secret)
    job_name = job["metadata"]["name"]
    if kube.create_job(job):
        operator_metrics.JOBS_STARTED.inc()
    out.jobs_created.append((ns, job_name))
    out.status = {
        "phase": "Pending", "run": run, "jobName": job_name, "modelVersion": version, "artifactURI": prefix,
        "attempts": 1, "startTime": conditions.now(), "completionTime": None, "metrics": None,
        "mainMetric": None, "bestParams": None, "sha256": None, "gatesPassed": None,
        "observedGeneration": generation,
        "conditions": _condition(status, "Unknown", "JobCreated", f"Job {job_name} trains version {version}",
                                 generation),
    }
    if tick:
        out.status["lastScheduleTime"] = tick
        runs = [r for r in status.get("runs") or [] if r.get("run") != run]
        out.status["runs"] = (runs + [{"run": run, "job": job_name, "version": version, "phase": "Pending",
                                       "scheduledAt": tick}])[-RUNS_KEPT:]
    out.events.append(("Normal", "JobCreated", f"Job {job_name} trains version {version} of Model {spec['model']}"))
    return out


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
        patch["phase"] = out_job.phase
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
