"""A GitOps controller's view of Kiln, on the local cluster (issue #15).

examples/gitops/models is built with kustomize and applied with server-side apply under Argo CD's field manager
(`argocd-controller`), as Argo CD with ServerSideApply=true does (Flux's kustomize-controller does the same under its
own). After the operator has trained, registered and served:

- `kubectl diff --server-side` with that field manager shows nothing for every object: the operator writes status
  and its own metadata only, and leaves the applier owning every field it applied;
- a field removed from Git is removed from the cluster by the next sync (it is still owned by the applier);
- syncing the same directory again starts no training run;
- removing a manifest and pruning it as Argo CD does (delete, foreground propagation) removes the object and its
  children, and leaves the model's S3 artifacts, unless the Model asked for deleteArtifacts; the Model synced
  again rebuilds its versions from those artifacts (the restore of docs/platform-guide.md).
"""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest
import yaml
from kube_helpers import GROUP, VERSION, get, wait_until
from kubernetes import client

from kiln_contract import storage

pytestmark = pytest.mark.integration

MODELS_DIR = "examples/gitops/models"
MANAGER = "argocd-controller"
SELECTOR = "app.kubernetes.io/part-of=team-models"
PLURALS = {"Model": "models", "TrainingJob": "trainingjobs", "Deployment": "deployments"}


def kubectl(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    from kiln_local import controlplane
    from kiln_local.paths import KUBECONFIG, REPO

    cmd = [controlplane.binary("kubectl") or "kubectl", f"--kubeconfig={KUBECONFIG}", *args]
    result = subprocess.run(cmd, input=input, capture_output=True, text=True, cwd=REPO, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}")
    return result


def desired(without: tuple[str, ...] = (), edit=None) -> list[dict]:
    """The directory as a GitOps controller renders it (kustomize build), less the kinds removed from Git."""
    objs = [d for d in yaml.safe_load_all(kubectl("kustomize", MODELS_DIR).stdout) if d]
    objs = [o for o in objs if o["kind"] not in without]
    if edit:
        for obj in objs:
            edit(obj)
    return objs


def sync(ns: str, objs: list[dict]) -> None:
    kubectl("apply", "--server-side", f"--field-manager={MANAGER}", "-n", ns, "-f", "-",
            input=yaml.safe_dump_all(objs))


def diff(ns: str, obj: dict) -> str:
    """What `kubectl diff --server-side` shows for one object (empty: in sync)."""
    result = kubectl("diff", "--server-side", f"--field-manager={MANAGER}", "-n", ns, "-f", "-",
                     input=yaml.safe_dump(obj), check=False)
    assert result.returncode in (0, 1), result.stderr  # 1: differences; anything else: kubectl failed
    return result.stdout


def prune(ns: str, objs: list[dict]) -> list[str]:
    """Argo CD's prune: every live object it tracks (the label) that Git no longer has is deleted, foreground."""
    keep = {(o["kind"], o["metadata"]["name"]) for o in objs}
    deleted = []
    for kind, plural in PLURALS.items():
        live = client.CustomObjectsApi().list_namespaced_custom_object(GROUP, VERSION, ns, plural,
                                                                       label_selector=SELECTOR)["items"]
        for obj in live:
            if (kind, obj["metadata"]["name"]) not in keep:
                kubectl("delete", f"{plural}.{GROUP}/{obj['metadata']['name']}", "-n", ns, "--cascade=foreground",
                        "--wait=true", "--timeout=90s")
                deleted.append(f"{kind}/{obj['metadata']['name']}")
    return deleted


def condition(obj: dict, kind: str = "Ready") -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def reconciled(custom, ns: str, name: str = "iris") -> dict:
    """Wait until the run succeeded, its version is registered and the Deployment serves it."""
    def trained():
        tj = get(custom, ns, "trainingjobs", name)
        return (tj.get("status") or {}).get("phase") == "Succeeded" and tj

    tj = wait_until(trained, 240, "the training run to succeed", interval=0.5)

    def registered():
        versions = (get(custom, ns, "models", name).get("status") or {}).get("versions") or []
        return versions and versions[0]["state"] == "Registered" and versions[0]

    version = wait_until(registered, 60, "version 1 registered", interval=0.5)

    def serving():
        c = condition(get(custom, ns, "deployments", name))
        return c and c["status"] == "True" and c["reason"] == "Serving"

    wait_until(serving, 180, "the Deployment to serve", interval=0.5)
    return {"tj": tj, "version": version}


def artifacts(uri: str) -> int:
    loc = storage.parse_s3(uri)
    return storage.s3_client().list_objects_v2(Bucket=loc.bucket, Prefix=loc.key.rstrip("/") + "/").get(
        "KeyCount", 0)


@pytest.fixture(scope="module")
def synced(core, custom, s3_env):
    """A team namespace with its S3 Secrets, the directory synced into it and reconciled."""
    from kiln_local.cluster import copy_s3_secrets

    ns = f"t-gitops-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    wait_until(lambda: any(sa.metadata.name == "default" and sa.secrets
                           for sa in core.list_namespaced_service_account(ns).items), 30, "the default SA")
    copy_s3_secrets(core, ns)
    sync(ns, desired())
    state = reconciled(custom, ns)
    time.sleep(2)  # let the operator's last status writes of this reconcile land
    yield {"ns": ns, **state}
    core.delete_namespace(ns)


@pytest.mark.parametrize("kind", ["TrainingJob", "Deployment", "Model"])
def test_no_drift_after_the_operator_reconciled(synced, kind):
    """The operator must write only status and its own metadata, and leave the applier's field ownership alone.

    On Kubernetes before 1.22 (the local cluster runs 1.20) the API server computes field ownership of a PUT to
    /status from the whole body: a body with only name and status read as "spec and labels removed" and took
    the applier's managedFields entry away (then `kubectl diff --server-side` showed drift and a field removed
    from Git stayed). kube.status_put_body sends the cached object's metadata and spec along.
    """
    obj = next(o for o in desired() if o["kind"] == kind)
    shown = diff(synced["ns"], obj)
    assert shown == "", f"{kind} drifts after the operator's reconcile:\n{shown}"


@pytest.mark.parametrize("kind", ["TrainingJob", "Deployment", "Model"])
def test_the_applier_still_owns_what_it_applied(synced, custom, kind):
    live = get(custom, synced["ns"], PLURALS[kind], "iris")
    managers = {(m["manager"], m["operation"]): m.get("fieldsV1", {}) for m in live["metadata"]["managedFields"]}
    assert (MANAGER, "Apply") in managers, (
        f"{kind}: the operator's status write took the applier's fields away; managers now: {sorted(managers)} "
        "(see test_no_drift_after_the_operator_reconciled)")
    owned = managers[(MANAGER, "Apply")]
    assert "f:spec" in owned and "f:labels" in owned.get("f:metadata", {})
    for (manager, _), fields in managers.items():
        if manager != MANAGER:
            assert "f:spec" not in fields, f"{kind}: {manager} writes spec fields: {fields['f:spec']}"


def test_a_field_removed_from_git_is_removed_by_the_next_sync(synced, custom):
    ns = synced["ns"]

    def without_retention(obj):
        if obj["kind"] == "Model":
            obj["spec"].pop("retention")

    sync(ns, desired(edit=without_retention))
    try:
        spec = get(custom, ns, "models", "iris")["spec"]
        # A server-side apply that drops an object leaves it null on CRDs (kubernetes/kubernetes#103011);
        # the CRD marks optional objects nullable so the sync succeeds, and Kiln reads null as unset.
        assert spec.get("retention") is None, (
            f"spec.retention is still {spec.get('retention')} after Git dropped it: nobody owns it any more "
            "(see test_no_drift_after_the_operator_reconciled)")
        model = next(o for o in desired(edit=without_retention) if o["kind"] == "Model")
        assert diff(ns, model) == ""
    finally:
        sync(ns, desired())  # back to what Git holds, for the tests after this one


def test_syncing_the_same_directory_again_starts_no_training_run(synced, custom):
    ns = synced["ns"]
    before = {kind: get(custom, ns, plural, "iris") for kind, plural in PLURALS.items()}
    for _ in range(2):
        sync(ns, desired())
    time.sleep(5)  # long enough for the operator to have acted on a change (it reacts within a second)
    jobs = client.BatchV1Api().list_namespaced_job(ns).items
    assert [j.metadata.name for j in jobs] == ["iris-v1"]
    tj = get(custom, ns, "trainingjobs", "iris")
    assert tj["metadata"]["generation"] == before["TrainingJob"]["metadata"]["generation"]
    assert tj["status"]["phase"] == "Succeeded" and tj["status"].get("version") == synced["tj"]["status"].get(
        "version")
    model = get(custom, ns, "models", "iris")
    assert [v["version"] for v in model["status"]["versions"]] == [1]
    assert model["status"].get("latestVersion") == before["Model"]["status"].get("latestVersion")


def test_pruning_removes_objects_and_children_but_keeps_the_artifacts(synced, custom, s3_env):
    ns = synced["ns"]
    apps = client.AppsV1Api()
    core = client.CoreV1Api()
    assert [d.metadata.name for d in apps.list_namespaced_deployment(ns).items] == ["iris-v1"]
    assert "iris" in [s.metadata.name for s in core.list_namespaced_service(ns).items]

    # Git drops deployment.yaml: the Kiln Deployment goes, and with it its apps/v1 Deployment, Service and pods.
    git = desired(without=("Deployment",))
    sync(ns, git)
    assert prune(ns, git) == ["Deployment/iris"]
    wait_until(lambda: not apps.list_namespaced_deployment(ns).items, 60, "the serving Deployment to go")
    wait_until(lambda: "iris" not in [s.metadata.name for s in core.list_namespaced_service(ns).items], 60,
               "the Service to go")
    wait_until(lambda: not core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/name=kiln-server").items,
               60, "the serving pods to go")
    # the Model and the TrainingJob still in Git are untouched
    assert get(custom, ns, "models", "iris")["status"]["versions"][0]["state"] == "Registered"

    # Git drops the rest: the TrainingJob's Job goes with it; the Model goes, its version stays in S3.
    uri = synced["version"]["uri"]
    assert artifacts(uri) >= 3  # model card, ONNX, joblib (and the report)
    assert sorted(prune(ns, [])) == ["Model/iris", "TrainingJob/iris"]
    wait_until(lambda: not client.BatchV1Api().list_namespaced_job(ns).items, 60, "the training Job to go")
    for plural in PLURALS.values():
        assert client.CustomObjectsApi().list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"] == []
    assert artifacts(uri) >= 3, f"pruning the Model deleted its artifacts under {uri}"

    # Restore (docs/platform-guide.md, "Backup and restore"): the Model synced again from Git rebuilds its
    # registry from the artifacts in S3; no training run is needed for it.
    sync(ns, desired(without=("Deployment", "TrainingJob")))

    def rebuilt():
        versions = (get(custom, ns, "models", "iris").get("status") or {}).get("versions") or []
        return versions and versions[0].get("source") == "storage" and versions

    versions = wait_until(rebuilt, 60, "the Model to rebuild its versions from S3", interval=0.5)
    assert [(v["version"], v["state"], v["uri"]) for v in versions] == [(1, "Registered", uri)]
    assert get(custom, ns, "models", "iris")["status"]["aliases"] == {"production": 1}
    assert not client.BatchV1Api().list_namespaced_job(ns).items


def test_pruning_a_model_with_delete_artifacts_deletes_them(core, custom, s3_env):
    from kiln_local.cluster import copy_s3_secrets

    ns = f"t-gitops-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        wait_until(lambda: any(sa.metadata.name == "default" and sa.secrets
                               for sa in core.list_namespaced_service_account(ns).items), 30, "the default SA")
        copy_s3_secrets(core, ns)

        def delete_artifacts(obj):
            if obj["kind"] == "Model":
                obj["spec"]["deleteArtifacts"] = True

        git = desired(without=("Deployment",), edit=delete_artifacts)
        sync(ns, git)

        def registered():
            versions = (get(custom, ns, "models", "iris").get("status") or {}).get("versions") or []
            return versions and versions[0]["state"] == "Registered" and versions[0]

        uri = wait_until(registered, 240, "version 1 registered", interval=0.5)["uri"]
        assert artifacts(uri) >= 3
        assert sorted(prune(ns, [])) == ["Model/iris", "TrainingJob/iris"]
        wait_until(lambda: artifacts(uri) == 0, 60, f"the artifacts under {uri} to be deleted")
    finally:
        core.delete_namespace(ns)
