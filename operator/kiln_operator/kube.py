"""The Kubernetes client and the ensure_* functions: get; create on 404; 409 means someone else did it."""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kiln_contract import GROUP, VERSION


def service_account_dir() -> Path | None:
    """The mounted service-account directory when running in a pod, else None (use kubeconfig).

    KILN_SERVICEACCOUNT_DIR overrides the standard path (the local node simulator uses it).
    """
    sa = Path(os.environ.get("KILN_SERVICEACCOUNT_DIR", "/var/run/secrets/kubernetes.io/serviceaccount"))
    if os.environ.get("KUBERNETES_SERVICE_HOST") and (sa / "token").exists():
        return sa
    return None


def server_url() -> str:
    return f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ.get('KUBERNETES_SERVICE_PORT', '443')}"


@functools.cache
def api() -> client.ApiClient:
    sa = service_account_dir()
    if sa:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        InClusterConfigLoader(token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt")).load_and_set()
    else:
        config.load_kube_config()
    return client.ApiClient()


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(api())


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api())


def to_dict(obj) -> dict:
    return api().sanitize_for_serialization(obj)


def get_custom(plural: str, namespace: str, name: str) -> dict | None:
    try:
        return custom().get_namespaced_custom_object(GROUP, VERSION, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def list_custom(plural: str, namespace: str) -> list[dict]:
    return custom().list_namespaced_custom_object(GROUP, VERSION, namespace, plural)["items"]


class Conflict(RuntimeError):
    pass


def update_status(plural: str, namespace: str, name: str, change, attempts: int = 20):
    """Read-modify-write of a custom object's status with optimistic concurrency.

    change(status, obj) returns (new_status, result); the write carries the object's
    resourceVersion, so a concurrent writer makes it fail with 409 and we re-read.
    Returns result, or raises LookupError when the object is gone.
    """
    for _ in range(attempts):
        obj = get_custom(plural, namespace, name)
        if obj is None:
            raise LookupError(f"{plural}/{name} not found in {namespace}")
        status = copy.deepcopy(obj.get("status") or {})
        new_status, result = change(status, obj)
        if new_status == (obj.get("status") or {}):
            return result
        body = {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                "metadata": {"name": name, "namespace": namespace,
                             "resourceVersion": obj["metadata"]["resourceVersion"]},
                "status": new_status}
        try:
            custom().replace_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name, body)
            return result
        except ApiException as exc:
            if exc.status != 409:
                raise
    raise Conflict(f"{plural}/{name}: status kept changing under us")


def ensure_job(manifest: dict) -> dict:
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]
    try:
        return to_dict(batch().read_namespaced_job(name, ns))
    except ApiException as exc:
        if exc.status != 404:
            raise
    try:
        return to_dict(batch().create_namespaced_job(ns, manifest))
    except ApiException as exc:
        if exc.status != 409:  # someone (an earlier us) created it meanwhile
            raise
        return to_dict(batch().read_namespaced_job(name, ns))


def read_job(namespace: str, name: str) -> dict | None:
    try:
        return to_dict(batch().read_namespaced_job(name, namespace))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def job_pods(namespace: str, job_name: str) -> list[dict]:
    pods = core().list_namespaced_pod(namespace, label_selector=f"job-name={job_name}")
    return [to_dict(p) for p in pods.items]


def delete_job(namespace: str, name: str) -> None:
    try:
        batch().delete_namespaced_job(name, namespace, propagation_policy="Background")
    except ApiException as exc:
        if exc.status != 404:
            raise


@functools.cache
def dynamic():
    from kubernetes.dynamic import DynamicClient

    return DynamicClient(api())


@functools.cache
def preferred(group: str, candidates: tuple[str, ...]) -> str:
    """The first of candidates the cluster serves (discovery), e.g. autoscaling/v2 before v2beta2."""
    served = set()
    for g in client.ApisApi(api()).get_api_versions().groups:
        if g.name == group:
            served = {v.group_version for v in g.versions}
    for candidate in candidates:
        if candidate in served:
            return candidate
    raise LookupError(f"the cluster serves none of {candidates}")


def _differs(want, have) -> bool:
    if isinstance(want, dict):
        return not isinstance(have, dict) or any(_differs(v, have.get(k)) for k, v in want.items())
    if isinstance(want, list):
        return not isinstance(have, list) or len(want) != len(have) or any(
            _differs(w, h) for w, h in zip(want, have, strict=True))
    return want != have


def ensure(manifest: dict, ignore: tuple[str, ...] = ()) -> dict:
    """Get; create on 404; 409 means someone else created it; diff, then merge-patch.

    ignore lists top-level spec fields owned by someone else (e.g. replicas under an HPA).
    """
    from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

    res = dynamic().resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
    meta = manifest["metadata"]
    try:
        have = res.get(name=meta["name"], namespace=meta.get("namespace")).to_dict()
    except NotFoundError:
        try:
            return res.create(body=manifest, namespace=meta.get("namespace")).to_dict()
        except ConflictError:
            have = res.get(name=meta["name"], namespace=meta.get("namespace")).to_dict()
    want = copy.deepcopy(manifest)
    for key in ignore:
        want.get("spec", {}).pop(key, None)
    subset = {k: want[k] for k in ("spec",) if k in want}
    subset["metadata"] = {"labels": meta.get("labels", {}), "annotations": meta.get("annotations", {})}
    if _differs(subset, have):
        return res.patch(body=subset, name=meta["name"], namespace=meta.get("namespace"),
                         content_type="application/merge-patch+json").to_dict()
    return have


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    from kubernetes.dynamic.exceptions import NotFoundError

    res = dynamic().resources.get(api_version=api_version, kind=kind)
    try:
        res.delete(name=name, namespace=namespace, body={"propagationPolicy": "Background"})
        return True
    except NotFoundError:
        return False


def list_objects(api_version: str, kind: str, namespace: str, selector: str) -> list[dict]:
    res = dynamic().resources.get(api_version=api_version, kind=kind)
    return [item.to_dict() for item in res.get(namespace=namespace, label_selector=selector).items]
