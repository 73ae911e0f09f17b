"""The Helm chart installed into the local cluster, and the iris lifecycle run through the chart's operator and gateway.

Rendered by Helm's engine (helm-python-sdk), applied with kubectl into kiln-system. The node simulator runs the
operator and gateway pods as processes with their pods' own ServiceAccount tokens, so the chart's RBAC is enforced
for real: a missing verb shows up as a 403 in a log and a stuck lifecycle. The working-tree operator is
stopped first (two operators must never handle the same objects) and restarted at the end, whatever happens; the
working-tree gateway keeps running (gateways only read).
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from chart_scripts import load as load_chart_script
from kube_helpers import create, get, wait_until
from kubernetes import client

pytestmark = pytest.mark.integration
pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[dev]')")

REPO = Path(__file__).resolve().parents[2]
NS = "kiln-system"
SA = f"system:serviceaccount:{NS}:kiln-operator"
GATEWAY_SA = f"system:serviceaccount:{NS}:kiln-gateway"


chart = load_chart_script("render")
pss = load_chart_script("pod_security")


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    from kiln_local import cluster as local
    from kiln_local import controlplane
    from kiln_local.paths import KUBECONFIG

    if stdin is None:
        return local.kubectl(*args, check=check)
    return subprocess.run([controlplane.binary("kubectl") or "kubectl", f"--kubeconfig={KUBECONFIG}", *args],
                          input=stdin, text=True, capture_output=True, check=check)


def component_pods(core, component: str) -> list[client.V1Pod]:
    pods = core.list_namespaced_pod(NS, label_selector=f"app.kubernetes.io/component={component}").items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def operator_pod(core) -> client.V1Pod | None:
    return next(iter(component_pods(core, "operator")), None)


def ready(pod: client.V1Pod) -> bool:
    return bool(pod.status.pod_ip and any(c.type == "Ready" and c.status == "True"
                                          for c in pod.status.conditions or []))


def pod_pid(pod_name: str, container: str = "operator") -> int | None:
    from kiln_local.paths import STATE

    try:
        return int((STATE / "pods" / f"{NS}_{pod_name}" / f"{container}.pid").read_text())
    except (OSError, ValueError):
        return None


def chart_pids(core) -> list[int]:
    """The processes of the chart's operator and gateway pods (the node simulator runs each as one)."""
    pids = [pod_pid(p.metadata.name) for p in component_pods(core, "operator")]
    pids += [pod_pid(p.metadata.name, "gateway") for p in component_pods(core, "gateway")]
    return [pid for pid in pids if pid]


def served_by_this_cluster(manifest: str) -> str:
    """What `helm install` renders against this cluster: Kubernetes 1.20 serves PodDisruptionBudget only as
    policy/v1beta1, which the chart picks by .Capabilities; an offline render cannot know it and says policy/v1.
    Nor does 1.20 have ValidatingAdmissionPolicy, which the chart renders only for 1.30 and later."""
    served = kubectl("api-versions").stdout.split()
    if "policy/v1" not in served:
        manifest = manifest.replace("apiVersion: policy/v1\nkind: PodDisruptionBudget",
                                    "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget")
    if "admissionregistration.k8s.io/v1" not in served or not _has_admission_policies():
        manifest = "---\n".join(doc for doc in manifest.split("---\n")
                                 if "kind: ValidatingAdmissionPolicy" not in doc)
    return manifest


def _has_admission_policies() -> bool:
    return "validatingadmissionpolicies" in kubectl("api-resources", "--api-group=admissionregistration.k8s.io",
                                                    "-o", "name").stdout


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def infer(ip: str, ns: str, dep: str, model: str, rows: list[list[float]]) -> tuple[int, dict]:
    """Through one of the chart's gateway pods, which listen on their pod IPs."""
    from kiln_local.gateway_client import infer as via_gateway

    return via_gateway(ns, dep, model, rows, timeout=60, gateway=(ip, 8081))


@contextlib.contextmanager
def installed(core, extra: dict | None = None):
    """Install the chart (the working-tree operator stopped first); yield (operator pod, values) once the operator
    and both gateway pods are Ready; uninstall and restart the working-tree operator, whatever happened."""
    from kiln_local import cluster as local
    from kiln_local import procs, s3

    env = s3.read_env()
    bucket = f"kiln-chart-{uuid.uuid4().hex[:8]}"  # a fresh bucket: the chart's create-bucket Job makes it
    values = chart.merge({"s3": {"endpoint": env["KILN_S3_ENDPOINT"], "region": env["AWS_REGION"], "bucket": bucket,
                                 "accessKeyId": env["AWS_ACCESS_KEY_ID"],
                                 "secretAccessKey": env["AWS_SECRET_ACCESS_KEY"], "createBucket": True},
                          "operator": {"watchTimeout": 60}}, extra or {})
    rendered = chart.render(values, namespace=NS)
    manifest = served_by_this_cluster(chart.manifest(rendered))
    crds = "\n---\n".join(c["data"] for c in chart.crds())
    # an earlier run's namespace may still be terminating
    wait_until(lambda: "Terminating" not in kubectl("get", "namespace", NS, "-o", "jsonpath={.status.phase}",
                                                    check=False).stdout, 90, f"namespace {NS} to finish terminating")
    created_ns = kubectl("get", "namespace", NS, check=False).returncode != 0
    pids: list[int] = []
    procs.stop("kiln-operator", grace=20)
    try:
        kubectl("apply", "-f", "-", stdin=crds)  # what helm install does first; identical to crds/
        if created_ns:
            kubectl("create", "namespace", NS)
        # Helm's install order: the Secret and ServiceAccount before the pods that use them
        kubectl("apply", "-f", "-", stdin=manifest)
        pod = wait_until(lambda: (p := operator_pod(core)) and ready(p) and p, 90,
                         "the chart's operator pod to be Ready", interval=0.5)
        wait_until(lambda: len([p for p in component_pods(core, "gateway") if ready(p)]) == 2, 90,
                   "the chart's two gateway pods to be Ready", interval=0.5)
        pids = chart_pids(core)
        yield pod, values
    finally:
        pids = chart_pids(core) or pids
        # the operator and the gateway go first (and their processes end) while their RBAC still exists, then
        # the rest in Helm's uninstall order
        kubectl("-n", NS, "delete", "deployment", "kiln-operator", "kiln-gateway", "--ignore-not-found",
                "--cascade=foreground", "--wait=true", "--timeout=60s", check=False)
        try:
            wait_until(lambda: not component_pods(core, "operator") and not component_pods(core, "gateway")
                       and not any(alive(pid) for pid in pids), 60,
                       "the chart's operator and gateway pods and processes to be gone")
            kubectl("delete", "--ignore-not-found", "--wait=true", "--timeout=60s", "-f", "-",
                    stdin=served_by_this_cluster(chart.manifest(rendered, uninstall=True)), check=False)
        finally:
            if created_ns:
                kubectl("delete", "namespace", NS, "--wait=false", check=False)
            local.start_operator(s3.read_env())
            _drop_bucket(bucket)


def _drop_bucket(bucket: str) -> None:
    from kiln_contract import storage

    s3 = storage.s3_client()
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        s3.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - best effort: a leftover test bucket harms nothing
        pass


def refusals(pod, container: str = "operator") -> list[str]:
    """API calls refused to the pod so far, e.g. 'cannot update resource "models/status" in API group ...'."""
    from kiln_local.paths import STATE

    log = STATE / "pods" / f"{NS}_{pod.metadata.name}" / f"{container}.log"
    text = log.read_text(errors="replace").replace('\\"', '"').replace('\\', "")
    return sorted(set(re.findall(r'cannot \w+ resource "[^"]+" in API group "[^"]*"', text))) or [
        line[:400] for line in text.splitlines() if "Forbidden" in line]


def can_i(verb: str, resource: str, ns: str, account: str = SA) -> bool:
    out = kubectl("auth", "can-i", verb, resource, f"--as={account}", "-n", ns, check=False).stdout.strip()
    assert out in ("yes", "no"), out
    return out == "yes"


def check_install(core, pod, values) -> None:
    """The pod as admitted (restricted, own ServiceAccount, liveness on the pod IP); the create-bucket Job."""
    from kiln_contract import storage

    spec = core.api_client.sanitize_for_serialization(pod.spec)
    assert pss.check(spec, pod.metadata.annotations) == []
    assert spec["serviceAccountName"] == "kiln-operator"
    with urllib.request.urlopen(f"http://{pod.status.pod_ip}:8080/healthz", timeout=5) as resp:
        assert resp.status == 200

    def bucket_made():
        job = client.BatchV1Api().read_namespaced_job("kiln-create-bucket", NS)
        assert not job.status.failed, "create-bucket Job failed: see .kiln/pods/kiln-system_kiln-create-bucket-*"
        return job.status.succeeded

    try:
        wait_until(bucket_made, 60, "the create-bucket Job")
    except AssertionError:
        pods = core.list_namespaced_pod(NS, label_selector="job-name=kiln-create-bucket").items
        raise AssertionError([p.status.container_statuses for p in pods]) from None
    storage.s3_client().head_bucket(Bucket=values["s3"]["bucket"])


def lifecycle(custom, core, pod, ns: str, bucket: str, serve: bool = True) -> None:
    """TrainingJob -> Model version -> Deployment Ready -> a prediction through each of the chart's gateway pods.
    Every wait fails at once, naming the call, when the operator or a gateway was refused anything (missing RBAC)."""
    gateways = component_pods(core, "gateway")

    def no_refusal(check):
        def wrapped():
            assert refusals(pod) == [], refusals(pod)[:3]
            for gw in gateways:
                assert refusals(gw, "gateway") == [], refusals(gw, "gateway")[:3]
            return check()
        return wrapped

    create(custom, ns, "models", "Model", "iris", {"promotion": {"policy": "auto", "metric": "accuracy"}})
    create(custom, ns, "trainingjobs", "TrainingJob", "iris", {
        "model": "iris", "dataset": {"uri": "builtin:iris"},
        "algorithm": {"name": "random_forest", "params": {"n_estimators": 10, "max_depth": 3}},
        "export": {"formats": ["onnx"]}})

    def trained():
        st = get(custom, ns, "trainingjobs", "iris").get("status") or {}
        return st.get("phase") in ("Succeeded", "Failed") and st

    st = wait_until(no_refusal(trained), 120, "the TrainingJob to finish", interval=0.5)
    assert st["phase"] == "Succeeded", st
    model = wait_until(no_refusal(lambda: (m := get(custom, ns, "models", "iris")).get("status", {}).get(
        "aliases", {}).get("production") and m), 30, "version 1 promoted")
    v1 = model["status"]["versions"][0]
    assert v1["state"] == "Registered" and v1["uri"].startswith(f"s3://{bucket}/models/{ns}/iris/v1")
    if not serve:
        return

    create(custom, ns, "deployments", "Deployment", "iris", {"model": {"name": "iris"},
                                                             "replicas": {"min": 1, "max": 1}})

    def serving():
        st = get(custom, ns, "deployments", "iris").get("status") or {}
        return any(c["type"] == "Ready" and c["status"] == "True" and c["reason"] == "Serving"
                   for c in st.get("conditions", [])) and st

    wait_until(no_refusal(serving), 90, "the Deployment to be Ready", interval=0.5)
    for gw in gateways:  # both replicas route, each from its own watches
        status, answer = infer(gw.status.pod_ip, ns, "iris", "iris", [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]])
        assert status == 200, answer
        labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
        assert [int(x) for x in labels] == [0, 2]
    no_refusal(lambda: True)()


def test_chart_install_runs_the_iris_lifecycle_under_its_own_rbac(cluster, core, custom, kiln_ns, s3_env):
    t0 = time.monotonic()
    with installed(core) as (pod, values):
        check_install(core, pod, values)
        # least privilege, as the API server sees it
        for verb, resource, allowed in [
                ("patch", "trainingjobs.kiln.dev/status", True), ("create", "jobs.batch", True),
                ("list", "pods", True), ("get", "secrets", False), ("create", "pods", False),
                ("delete", "trainingjobs.kiln.dev", False), ("update", "deployments.apps", False),
                ("list", "namespaces", False), ("create", "clusterrolebindings", False)]:
            assert can_i(verb, resource, kiln_ns) is allowed, f"{verb} {resource}"
        # the gateway reads pods and Kiln Deployments, and nothing else
        for verb, resource, allowed in [
                ("watch", "pods", True), ("list", "deployments.kiln.dev", True), ("get", "pods", True),
                ("create", "pods", False), ("patch", "deployments.kiln.dev", False),
                ("patch", "deployments.kiln.dev/status", False), ("list", "deployments.apps", False),
                ("get", "secrets", False), ("list", "services", False), ("create", "events", False),
                ("list", "trainingjobs.kiln.dev", False)]:
            assert can_i(verb, resource, kiln_ns, GATEWAY_SA) is allowed, f"gateway: {verb} {resource}"
        lifecycle(custom, core, pod, kiln_ns, values["s3"]["bucket"])
    assert time.monotonic() - t0 < 180


def test_watch_namespaces_grants_and_serves_only_those(cluster, core, custom, kiln_ns, s3_env):
    t0 = time.monotonic()
    with installed(core, {"operator": {"watchNamespaces": [kiln_ns]}}) as (pod, values):
        assert f"--namespace={kiln_ns}" in pod.spec.containers[0].args
        check_install(core, pod, values)
        assert can_i("patch", "trainingjobs.kiln.dev/status", kiln_ns)
        assert can_i("create", "jobs.batch", kiln_ns)
        assert not can_i("create", "jobs.batch", "default") and not can_i("list", "pods", "default")
        assert can_i("list", "namespaces", kiln_ns)  # kopf matches the watched names against them
        assert can_i("watch", "pods", kiln_ns, GATEWAY_SA) and not can_i("watch", "pods", "default", GATEWAY_SA)
        for gw in component_pods(core, "gateway"):
            assert [e.value for e in gw.spec.containers[0].env if e.name == "KILN_WATCH_NAMESPACES"] == [kiln_ns]
        lifecycle(custom, core, pod, kiln_ns, values["s3"]["bucket"], serve=False)
    assert time.monotonic() - t0 < 120


@pytest.fixture(autouse=True)
def _clean_uninstall(cluster):
    """After the uninstall: the working-tree operator runs again, and the chart's operator and gateways never hit
    a 403, not even while shutting down (they are stopped before their RBAC is deleted)."""
    from kiln_local import procs
    from kiln_local.paths import STATE

    started = time.time()
    yield
    assert procs.running("kiln-operator"), "the working-tree operator was not restarted"
    logs = [p for pattern in (f"{NS}_kiln-operator-*/operator.log", f"{NS}_kiln-gateway-*/gateway.log")
            for p in (STATE / "pods").glob(pattern) if p.stat().st_mtime >= started]
    for log in logs:
        refused = [line[:300] for line in log.read_text(errors="replace").splitlines() if "Forbidden" in line]
        assert refused == [], f"{log}: {refused[:3]}"


def test_every_chart_option_passes_the_api_servers_validation(cluster, namespace):
    """ci/full-values.yaml (every option on) through a server-side dry run: each object is valid as the API
    server sees it (the Prometheus Operator's kinds left out: their CRDs are not installed here)."""
    import yaml

    values = yaml.safe_load((REPO / "charts" / "kiln" / "ci" / "full-values.yaml").read_text())
    values["operator"]["watchNamespaces"] = [namespace]
    values["monitoring"]["podMonitor"]["namespaces"] = [namespace]
    values["monitoring"]["dashboard"]["namespace"] = ""
    rendered = chart.render(values, namespace=namespace, name=f"dry-{namespace}")
    objs = [o for o in yaml.safe_load_all(served_by_this_cluster(chart.manifest(rendered)))
            if o and not o["apiVersion"].startswith("monitoring.coreos.com/")]
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Job", "NetworkPolicy", "PersistentVolumeClaim", "RoleBinding", "ConfigMap",
            "PodDisruptionBudget"} <= kinds
    out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(objs), check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("(server dry run)") == len(objs)
