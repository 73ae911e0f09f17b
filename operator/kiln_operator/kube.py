"""The Kubernetes client: one ApiClient whose every request is counted, and the few calls the operator makes.

Reads come from kopf indexes (indexes.py); what is here writes or, after a 409, re-reads once.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from pathlib import Path

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kiln_contract import GROUP, VERSION
from kiln_operator import operator_metrics, settings

FIELD_MANAGER = "kiln"
_RESOURCE = re.compile(r"/(?:api/v1|apis/[^/]+/[^/]+)(?:/namespaces/[^/]+)?/([a-z]+)(?:/[^/?]+)?(?:/([a-z]+))?")


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


def resource_of(url: str) -> str:
    """'jobs', 'models/status', … from a request URL (the label of kiln_operator_api_requests_total)."""
    match = _RESOURCE.search(url.split("?", 1)[0])
    if not match:
        return "other"
    return f"{match.group(1)}/{match.group(2)}" if match.group(2) else match.group(1)


def _counted(request):
    @functools.wraps(request)
    def wrapper(method, url, *args, **kwargs):
        operator_metrics.API_REQUESTS.labels(verb=method.upper(), resource=resource_of(url)).inc()
        return request(method, url, *args, **kwargs)

    return wrapper


@functools.cache
def api() -> client.ApiClient:
    sa = service_account_dir()
    if sa:
        from kubernetes.config.incluster_config import InClusterConfigLoader

        InClusterConfigLoader(token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt")).load_and_set()
    else:
        config.load_kube_config()
    configuration = client.Configuration.get_default_copy()
    # A keep-alive connection per worker thread: a pool smaller than the workers makes new TLS handshakes.
    configuration.connection_pool_maxsize = settings.workers() + 8
    api_client = client.ApiClient(configuration)
    api_client.user_agent = "kiln-operator"  # the manager name in managedFields, and in the API server's logs
    api_client.rest_client.request = _counted(api_client.rest_client.request)
    return api_client


def _custom_path(namespace: str, plural: str, name: str, sub: str = "") -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}/{name}" + (f"/{sub}" if sub else "")


def get_custom(plural: str, namespace: str, name: str) -> dict | None:
    try:
        return _call("GET", _custom_path(namespace, plural, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


class Conflict(RuntimeError):
    pass


def status_put_body(obj: dict, name: str, namespace: str, status: dict) -> dict:
    """The body of a PUT to /status: the object as cached (managedFields left out) with the new status.

    API servers before 1.22 derive field ownership of a status update from the whole body: a body
    with only metadata.name and status reads as "spec and labels removed", and the applier (a GitOps
    controller's server-side apply) loses its managedFields entry — `kubectl diff --server-side`
    shows drift and a field later removed from Git is never pruned. The spec and metadata sent are
    the ones at resourceVersion, so they change nothing (and /status ignores spec changes anyway).
    """
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    metadata.update({"name": name, "namespace": namespace, "resourceVersion": obj["metadata"]["resourceVersion"]})
    body = {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": obj.get("kind"),
            "metadata": metadata, "status": status}
    if "spec" in obj:
        body["spec"] = obj["spec"]
    return body


def update_status(plural: str, namespace: str, name: str, change, current: dict | None = None, attempts: int = 20):
    """Read-modify-write of a custom object's status with optimistic concurrency.

    change(status, obj) returns (new_status, result). The first attempt starts from `current`
    (the cached object) when given, so an unchanged status costs no request at all; the write
    carries its resourceVersion, so a stale cache or a concurrent writer gets 409 and we re-read.
    Returns (result, the object as written, or None when nothing changed); LookupError when gone.
    """
    obj = current
    for _ in range(attempts):
        if obj is None:
            obj = get_custom(plural, namespace, name)
            if obj is None:
                raise LookupError(f"{plural}/{name} not found in {namespace}")
        status = copy.deepcopy(obj.get("status") or {})
        new_status, result = change(status, obj)
        if new_status == (obj.get("status") or {}):
            return result, None
        body = status_put_body(obj, name, namespace, new_status)
        try:
            written = _call("PUT", _custom_path(namespace, plural, name, "status"), body)
            return result, written
        except ApiException as exc:
            if exc.status != 409:
                raise
            obj = None
    raise Conflict(f"{plural}/{name}: status kept changing under us")


def patch_status(plural: str, namespace: str, name: str, patch: dict) -> dict:
    """Merge-patch a custom object's status; returns the object as written."""
    return _call("PATCH", _custom_path(namespace, plural, name, "status"), {"status": patch},
                 content_type="application/merge-patch+json")


def set_finalizers(plural: str, namespace: str, name: str, finalizers: list[str], resource_version: str) -> dict:
    """Replace metadata.finalizers, only if the object is still at resource_version (409 otherwise)."""
    return _call("PATCH", _custom_path(namespace, plural, name),
                 {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}},
                 content_type="application/merge-patch+json")


def annotate(plural: str, namespace: str, name: str, annotations: dict) -> None:
    _call("PATCH", _custom_path(namespace, plural, name), {"metadata": {"annotations": annotations}},
          content_type="application/merge-patch+json")


def post_event(obj: dict, type_: str, reason: str, message: str, now: str) -> None:
    """A core/v1 Event about a Kiln object (what `kubectl describe` shows)."""
    meta = obj["metadata"]
    _call("POST", f"/api/v1/namespaces/{meta['namespace']}/events", {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": obj.get("apiVersion", f"{GROUP}/{VERSION}"), "kind": obj.get("kind"),
                           "name": meta["name"], "namespace": meta["namespace"], "uid": meta.get("uid")},
        "type": type_, "reason": reason, "message": message[:1024], "source": {"component": "kiln-operator"},
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    })


def create_job(manifest: dict) -> bool:
    """Create a Job; False when one of that name already exists (an earlier us made it)."""
    return create(manifest) is not None


def delete_job(namespace: str, name: str) -> None:
    delete("batch/v1", "Job", namespace, name)


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


_PLURALS = {"Service": "services", "ConfigMap": "configmaps", "Deployment": "deployments",
            "HorizontalPodAutoscaler": "horizontalpodautoscalers",
            "PodDisruptionBudget": "poddisruptionbudgets", "Job": "jobs"}


def object_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def _call(method: str, path: str, body=None, query=None, content_type: str = "application/json"):
    """One request with the client's auth; the decoded JSON body, or ApiException for any status >= 400."""
    client_ = api()
    request = client_.param_serialize(method, path, query_params=query or [], body=body,
                                      header_params={"Content-Type": content_type, "Accept": "application/json"},
                                      auth_settings=["BearerToken"])
    response = client_.call_api(*request)
    response.read()
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=response.data.decode(errors="replace"),
                                         data=None)
    return json.loads(response.data) if response.data else {}


def namespace_terminating(exc: BaseException) -> bool:
    """Whether the API server refused a write because the object's namespace is being deleted (403 with the
    cause NamespaceTerminating): the namespace's objects go with it, nothing to retry."""
    if not isinstance(exc, ApiException) or exc.status != 403:
        return False
    try:
        details = (json.loads(exc.body or "{}").get("details") or {})
    except (ValueError, AttributeError):
        return False
    return any((c or {}).get("reason") == "NamespaceTerminating" for c in details.get("causes") or [])


def create(manifest: dict) -> dict | None:
    """POST; None when an object of that name exists (ours or not: the caller decides)."""
    meta = manifest["metadata"]
    try:
        return _call("POST", object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"]), manifest)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return None


def read(api_version: str, kind: str, namespace: str, name: str) -> dict | None:
    try:
        return _call("GET", object_path(api_version, kind, namespace, name))
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def server_side_apply(manifest: dict) -> dict:
    """Server-side apply under Kiln's field manager; fields other managers own (an HPA's replicas) stay theirs."""
    meta = manifest["metadata"]
    return _call("PATCH", object_path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"]),
                 manifest, query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
                 content_type="application/apply-patch+yaml")


def delete(api_version: str, kind: str, namespace: str, name: str) -> bool:
    try:
        _call("DELETE", object_path(api_version, kind, namespace, name), {"propagationPolicy": "Background"})
        return True
    except ApiException as exc:
        if exc.status != 404:
            raise
        return False
