"""TrainingJob reconciliation: one run at a time, each with a version reserved before its Job exists."""

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
    registry,
    trainingjob_builder,
)
from kiln_operator.settings import Settings

ACTIVE = ("Pending", "Running")
RUNS_KEPT = 10
Events = list[tuple[str, str, str]]


def _parse(ts: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def _condition(status: dict, value, reason: str, message: str, generation: int) -> list[dict]:
    return conditions.set_condition(status.get("conditions"), "Succeeded", value, reason, message, generation)


def due_run(tj: dict, spec: dict, status: dict, now: dt.datetime) -> tuple[str, str | None] | None:
    """(run id, schedule tick) of the run that should start now, or None."""
    if spec.get("suspend"):
        return None
    schedule = spec.get("schedule")
    if not schedule:
        run = f"g{tj['metadata']['generation']}"
        retrain = (tj["metadata"].get("annotations") or {}).get(labels.RETRAIN)
        if retrain:
            run += f"-r{checksums.sha256_bytes(retrain.encode())[:8]}"
        return None if status.get("run") == run else (run, None)
    last = _parse(status.get("lastScheduleTime") or tj["metadata"]["creationTimestamp"])
    itr = croniter(schedule, last)
    tick = itr.get_next(dt.datetime)
    if tick > now:
        return None
    while (following := itr.get_next(dt.datetime)) <= now:  # missed ticks collapse into the latest one
        tick = following
    stamp = tick.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"s{tick.strftime('%Y%m%d%H%M%S')}", stamp


def reconcile(tj: dict, cfg: Settings, now: dt.datetime | None = None) -> tuple[dict, Events]:
    """One pass: returns (status patch, events)."""
    now = now or dt.datetime.now(dt.UTC)
    meta, status = tj["metadata"], dict(tj.get("status") or {})
    generation = meta["generation"]
    try:
        spec = specs.validate("TrainingJob", tj["spec"])
    except specs.SpecError as exc:
        return {"phase": "Failed", "observedGeneration": generation,
                "conditions": _condition(status, False, "InvalidSpec", str(exc), generation)}, []
    if status.get("phase") in ACTIVE and status.get("jobName"):
        return follow(tj, spec, status, cfg)
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
        return patch, []
    return start(tj, spec, status, cfg, *due)


def start(tj: dict, spec: dict, status: dict, cfg: Settings, run: str, tick: str | None) -> tuple[dict, Events]:
    meta = tj["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta["generation"]
    model = kube.get_custom("models", ns, spec["model"])
    if model is None:
        return {"phase": "Pending", "observedGeneration": generation,
                "conditions": _condition(status, "Unknown", "ModelMissing",
                                         f'spec.model: Model "{spec["model"]}" does not exist in namespace {ns}; '
                                         "the run starts when it is created", generation)}, []
    try:
        image = images.choose(spec.get("image"), cfg.trainer_image, cfg.allowed_images, "spec.image")
    except images.ImageNotAllowed as exc:
        return {"phase": "Failed", "run": run, "observedGeneration": generation,
                "conditions": _condition(status, False, "ImageNotAllowed", str(exc), generation)}, \
            [("Warning", "ImageNotAllowed", str(exc))]

    # A reservation this TrainingJob made before a crash is adopted, never doubled.
    owner = f"{meta['uid']}/"
    pending = next((v for v in (model.get("status") or {}).get("versions", [])
                    if v["state"] == "Pending" and str(v.get("run", "")).startswith(owner)), None)
    if pending is not None:
        run = pending["run"][len(owner):]
    version = kube.update_status("models", ns, spec["model"],
                                 lambda st, obj: registry.reserve(st, owner + run, name, conditions.now()))
    prefix = storage.version_prefix(models.storage_of(model, cfg), spec["model"], version)
    job = trainingjob_builder.build_job(tj, version=version, run=run, output=prefix, image=image,
                                        s3_secret=cfg.s3_secret)
    kube.ensure_job(job)
    job_name = job["metadata"]["name"]
    patch = {
        "phase": "Pending", "run": run, "jobName": job_name, "modelVersion": version, "artifactURI": prefix,
        "attempts": 0, "startTime": conditions.now(), "completionTime": None, "metrics": None,
        "mainMetric": None, "bestParams": None, "sha256": None, "gatesPassed": None,
        "observedGeneration": generation,
        "conditions": _condition(status, "Unknown", "JobCreated", f"Job {job_name} trains version {version}",
                                 generation),
    }
    if tick:
        patch["lastScheduleTime"] = tick
        runs = [r for r in status.get("runs") or [] if r.get("run") != run]
        patch["runs"] = (runs + [{"run": run, "job": job_name, "version": version, "phase": "Pending",
                                  "scheduledAt": tick}])[-RUNS_KEPT:]
    return patch, [("Normal", "JobCreated", f"Job {job_name} trains version {version} of Model {spec['model']}")]


def follow(tj: dict, spec: dict, status: dict, cfg: Settings) -> tuple[dict, Events]:
    meta = tj["metadata"]
    ns, generation = meta["namespace"], meta["generation"]
    job_name, version, prefix = status["jobName"], status["modelVersion"], status["artifactURI"]
    job = kube.read_job(ns, job_name)
    out = job_outcome.outcome(job, kube.job_pods(ns, job_name) if job else [])
    if job is None:
        found = artifacts.read_card(prefix)
        out = job_outcome.Outcome("Succeeded") if found else job_outcome.Outcome(
            "Failed", "JobDeleted", f"Job {job_name} disappeared before the run finished")
    patch: dict = {"attempts": out.attempts or status.get("attempts", 0), "observedGeneration": generation}
    events: Events = []
    if out.phase in ACTIVE:
        if out.phase == "Running" and status.get("phase") != "Running":
            events.append(("Normal", "Running", f"training pod of {job_name} is running"))
            patch["conditions"] = _condition(status, "Unknown", "Running", f"Job {job_name} is running", generation)
        patch["phase"] = out.phase
        return _with_run(status, patch), events

    if out.phase == "Succeeded":
        card = artifacts.read_card(prefix)
        if card is None:
            out = job_outcome.Outcome("Failed", "NoModelCard",
                                      f"the trainer exited 0 but {prefix}/modelcard.json is missing")
        else:
            entry = models.commit_version(ns, spec["model"], version, card, prefix)
            metric_name = _main_metric_name(ns, spec["model"], card)
            value = card["metrics"].get(metric_name)
            patch.update({
                "phase": "Succeeded", "completionTime": out.completion_time or conditions.now(),
                "metrics": card["metrics"], "bestParams": card.get("params") or {},
                "mainMetric": f"{metric_name}={value:.4g}" if isinstance(value, int | float) else None,
                "sha256": entry.get("sha256"), "gatesPassed": entry["state"] == "Registered",
                "conditions": _condition(status, True, entry["state"],
                                         f"version {version} {entry['state'].lower()}", generation),
            })
            events.append(("Normal", entry["state"], f"Model {spec['model']} version {version} {entry['state']}"))
            if entry["state"] == "Rejected":
                failed = [g["metric"] for g in entry.get("gates", []) if not g.get("passed")]
                events.append(("Warning", "GateFailed", f"version {version} failed gates: {', '.join(failed)}"))
            if entry.get("promoted"):
                events.append(("Normal", "Promoted", f"version {version} is now production"))
            return _with_run(status, patch), events

    reason, message = out.reason or "Failed", out.message or "the run failed"
    kube.update_status("models", ns, spec["model"],
                       lambda st, obj: (models.settle(obj, registry.fail(st, version, reason)), None))
    if out.reason == "ImageNotRunnable":
        kube.delete_job(ns, job_name)  # it would wait forever
    patch.update({"phase": "Failed", "completionTime": conditions.now(),
                  "conditions": _condition(status, False, reason, message[:2000], generation)})
    events.append(("Warning", reason, message[:1000]))
    return _with_run(status, patch), events


def _with_run(status: dict, patch: dict) -> dict:
    """Mirror the current run's phase into status.runs for scheduled TrainingJobs."""
    if status.get("runs") and "phase" in patch:
        runs = [dict(r) for r in status["runs"]]
        for r in runs:
            if r.get("run") == status.get("run"):
                r["phase"] = patch["phase"]
        patch["runs"] = runs
    return patch


def _main_metric_name(namespace: str, model: str, card: dict) -> str:
    obj = kube.get_custom("models", namespace, model) or {}
    wanted = ((obj.get("spec") or {}).get("promotion") or {}).get("metric")
    if wanted and wanted in card["metrics"]:
        return wanted
    return "accuracy" if card.get("task") == "classification" else "r2"
