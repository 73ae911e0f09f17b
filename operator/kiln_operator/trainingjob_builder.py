"""TrainingJob spec → batch/v1 Job manifest. Pure: no client, unit-tested without a cluster."""

from __future__ import annotations

import json

from kiln_contract import search_plan
from kiln_operator import labels, search_shards, security

SHARD_LABEL = "kiln.dev/search-shard"


def job_name(training_job: str, version: int) -> str:
    return labels.dns_name(training_job, f"v{version}")


def build_job(tj: dict, *, version: int, run: str, output: str, image: str, s3_secret: str,
              search_results: str | None = None, shard: tuple[int, int] | None = None) -> dict:
    """The Job that trains one run of tj and writes its artifacts under output.

    With search_results (a search across pods, see search_shards): the pods read and write the
    per-candidate results there; with shard (index, shards) the Job evaluates that shard only."""
    meta, spec = tj["metadata"], tj["spec"]
    name = job_name(meta["name"], version) if shard is None else search_shards.shard_job_name(
        meta["name"], version, shard[0])
    lbl = {**labels.MANAGED_BY, "app.kubernetes.io/name": "kiln-trainer", labels.TRAININGJOB: meta["name"],
           labels.MODEL: spec["model"], labels.VERSION: str(version)}
    if shard is not None:
        lbl[SHARD_LABEL] = str(shard[0])
    resources = spec.get("resources") or {}
    requests, limits = {}, {}
    for key in ("cpu", "memory"):
        if resources.get(key):
            requests[key] = limits[key] = str(resources[key])
    gpus = int(resources.get("gpu") or 0)
    tolerations = list(spec.get("tolerations") or [])
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
        if not any(t.get("key") == "nvidia.com/gpu" for t in tolerations):
            tolerations.append({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
    container = {
        "name": "trainer",
        "image": image,
        "args": ["--output", output],
        "env": [
            {"name": "KILN_SPEC", "value": json.dumps(spec, sort_keys=True, separators=(",", ":"))},
            {"name": "KILN_MODEL", "value": spec["model"]},
            {"name": "KILN_MODEL_VERSION", "value": str(version)},
            {"name": "KILN_TRAININGJOB", "value": meta["name"]},
            {"name": "KILN_RUN", "value": run},
            {"name": "KILN_TERMINATION_LOG", "value": "/dev/termination-log"},
            *([{"name": search_plan.RESULTS_ENV, "value": search_results}] if search_results else []),
            *([{"name": search_plan.SHARD_ENV, "value": f"{shard[0]}/{shard[1]}"}] if shard else []),
        ],
        # Credentials come from a Secret, never from the custom resource.
        "envFrom": [{"secretRef": {"name": s3_secret}}],
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "securityContext": security.CONTAINER_SECURITY_CONTEXT,
        "volumeMounts": [security.TMP_MOUNT],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": security.POD_SECURITY_CONTEXT,
        "containers": [container],
        "volumes": [security.TMP_VOLUME],
    }
    if spec.get("nodeSelector"):
        pod_spec["nodeSelector"] = dict(spec["nodeSelector"])
    if spec.get("schedulerName"):
        pod_spec["schedulerName"] = spec["schedulerName"]
    if tolerations:
        pod_spec["tolerations"] = tolerations
    job_spec = {
        "backoffLimit": int(spec.get("retries", 1)),
        "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
    }
    if spec.get("timeout"):
        job_spec["activeDeadlineSeconds"] = int(spec["timeout"])
    if spec.get("ttlSecondsAfterFinished") is not None:
        job_spec["ttlSecondsAfterFinished"] = int(spec["ttlSecondsAfterFinished"])
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": meta["namespace"], "labels": {**lbl, labels.RUN: _label(run)},
                     "annotations": {"kiln.dev/run": run},
                     "ownerReferences": [labels.owner_reference("TrainingJob", meta)]},
        "spec": job_spec,
    }


def _label(value: str) -> str:
    return value[-63:].strip("-._") or "run"
