"""The observed world: kopf indexes of the Kiln kinds and of their children, filled by watches.

Each index keeps only what the decisions read (children are trimmed), keyed so a reconcile finds
what it needs with dictionary lookups: a steady pass asks the API server nothing.
"""

from __future__ import annotations

import kopf

from kiln_contract import spec as specs
from kiln_operator import deployment_builder, resources

MANAGED = {"app.kubernetes.io/managed-by": "kiln"}
SERVING = {**MANAGED, deployment_builder.DEPLOYMENT: kopf.PRESENT}


def _meta(body) -> dict:
    m = body.get("metadata") or {}
    return {k: m[k] for k in ("name", "namespace", "uid", "labels", "annotations", "ownerReferences",
                                             "creationTimestamp", "deletionTimestamp", "resourceVersion") if k in m}


def _plain(body) -> dict:
    """The watched object as plain dicts. Each watch event decodes a new object and nothing mutates it,
    so its parts are shared, not deep-copied (a copy per event costs CPU when hundreds arrive at once)."""
    return {k: body[k] for k in body}


def controller_uid(obj: dict) -> str | None:
    """The uid of the object's controlling owner (ownerReferences with controller: true)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref.get("uid")
    return None


def _kiln(kind: str, body) -> dict:
    """A Kiln object as the decisions read it: a null its schema allows in the spec means unset."""
    obj = _plain(body)
    if isinstance(obj.get("spec"), dict):
        obj["spec"] = specs.spec_without_nulls(kind, obj["spec"])
    return obj


@kopf.index(resources.TRAININGJOBS)
async def kiln_trainingjobs(namespace, name, body, **_):
    return {(namespace, name): _kiln("TrainingJob", body)}


@kopf.index(resources.MODELS)
async def kiln_models(namespace, name, body, **_):
    return {(namespace, name): _kiln("Model", body)}


@kopf.index(resources.DEPLOYMENTS)
async def kiln_deployments(namespace, name, body, **_):
    return {(namespace, name): _kiln("Deployment", body)}


@kopf.index(resources.TRAININGJOBS)
async def trainingjobs_by_model(namespace, name, spec, **_):
    return {(namespace, spec.get("model")): name}


@kopf.index(resources.DEPLOYMENTS)
async def deployments_by_model(namespace, name, spec, **_):
    return {(namespace, (spec.get("model") or {}).get("name")): name}


@kopf.index("batch", "v1", "jobs", labels=MANAGED)
async def kiln_jobs(namespace, name, body, **_):
    deadline = (body.get("spec") or {}).get("activeDeadlineSeconds")
    return {(namespace, name): {"metadata": _meta(body), "spec": {"activeDeadlineSeconds": deadline},
                                "status": dict(body.get("status") or {})}}


def _pod(body) -> dict:
    st = body.get("status") or {}
    return {"metadata": _meta(body),
            "status": {k: st[k] for k in ("phase", "podIP", "conditions", "containerStatuses")
                       if k in st}}


@kopf.index("", "v1", "pods", labels=MANAGED)
async def kiln_pods(namespace, body, labels: dict, **_):
    """Trainer pods by (ns, "job", job-name); serving pods by (ns, "deployment", kiln deployment)."""
    if labels.get("job-name"):
        return {(namespace, "job", labels["job-name"]): _pod(body)}
    if labels.get(deployment_builder.DEPLOYMENT):
        return {(namespace, "deployment", labels[deployment_builder.DEPLOYMENT]): _pod(body)}
    return None


def _child(body) -> dict:
    return {"metadata": _meta(body), "spec": {"replicas": (body.get("spec") or {}).get("replicas")},
            "status": {k: (body.get("status") or {}).get(k) for k in ("replicas", "readyReplicas")}}


@kopf.index("apps", "v1", "deployments", labels=SERVING)
async def kiln_servers(namespace, body, labels: dict, **_):
    return {(namespace, labels[deployment_builder.DEPLOYMENT]): _child(body)}


@kopf.index("", "v1", "services", labels=SERVING)
async def kiln_services(namespace, body, labels: dict, **_):
    return {(namespace, labels[deployment_builder.DEPLOYMENT]): _child(body)}


@kopf.index("", "v1", "configmaps", labels=SERVING)
async def kiln_configmaps(namespace, body, labels: dict, **_):
    """The payload-logging ConfigMaps, with their data: an edit by hand is put back (apply._data_drifted)."""
    return {(namespace, labels[deployment_builder.DEPLOYMENT]): {"metadata": _meta(body),
                                                                 "data": dict(body.get("data") or {})}}


@kopf.index("autoscaling", "horizontalpodautoscalers", labels=SERVING)
async def kiln_hpas(namespace, body, labels: dict, **_):
    return {(namespace, labels[deployment_builder.DEPLOYMENT]): _child(body)}


@kopf.index("policy", "poddisruptionbudgets", labels=SERVING)
async def kiln_pdbs(namespace, body, labels: dict, **_):
    return {(namespace, labels[deployment_builder.DEPLOYMENT]): _child(body)}


INDEX_NAMES = ("kiln_trainingjobs", "kiln_models", "kiln_deployments", "trainingjobs_by_model",
               "deployments_by_model", "kiln_jobs", "kiln_pods", "kiln_servers", "kiln_services", "kiln_configmaps",
               "kiln_hpas", "kiln_pdbs")
