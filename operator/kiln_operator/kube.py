"""The Kubernetes client and the ensure_* functions: get; create on 404; 409 means someone else did it."""

from __future__ import annotations

import copy
import functools
import logging

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kiln_contract import GROUP, VERSION

log = logging.getLogger("kiln.kube")


@functools.cache
def api() -> client.ApiClient:
    try:
        config.load_incluster_config()
    except config.ConfigException:
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
