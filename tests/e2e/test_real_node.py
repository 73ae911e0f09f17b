"""Kiln in real containers: the three images built from their Dockerfiles, the chart installed with Helm's engine,
and the iris lifecycle run by a real kubelet (containerd, runc, CNI, kube-proxy) on this machine.

`make e2e-node` runs it. The real node (kiln_local.realnode) is a separate instance beside the simulator cluster:
state in .kiln-node/, its own ports, the API server, SeaweedFS and the pods on the bridge kiln0 (198.18.0.0/15,
never routed off the machine). The node is started and removed in subprocesses, so this module reads nothing of
kiln_local's module-level settings; everything here goes through the kubeconfig, kubectl and HTTP, as an admin.

Never skipped: a machine lacking a prerequisite (root, the Debian packages, the compiled binaries) fails the test
with what is missing and how to get it (`make e2e-node` installs and builds all of it).
KILN_NODE_KEEP=1 leaves the node running afterwards (`make node-down` removes it).

What it runs is charts/kiln/README.md's "Production install", in its order and with its values (the images tagged
as in production, so no repository is set; the S3 endpoint is the node's SeaweedFS), then:
  train (a Job in the trainer image, artifacts to SeaweedFS) -> version 1 registered and promoted -> a Kiln
  Deployment Ready -> predictions through its Service's ClusterIP (kube-proxy) and through the gateway's Service
  -> a second version, the production alias pinned to it, the Deployment rolled to it -> scale to zero and a
  request through the gateway that wakes it.
Checked from outside, as an admin would: `kubectl logs` of the trainer pod, `kubectl exec` into the server and the
operator (user, read-only root filesystem, capabilities, service-account token), and a pod of ours altered to run
as root, refused by the kubelet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("KILN_NODE_STATE_DIR", REPO / ".kiln-node")).resolve()
KUBECONFIG = STATE / "kubeconfig"
KUBECTL = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln")) / "bin" / "kubectl"
SYSTEM_NS, NS = "kiln-system", "team-a"
BUCKET = "kiln-models"
NODE_ENV = {**os.environ, "KILN_STATE_DIR": str(STATE)}
# Seconds of no traffic before scale to zero: shorter than a cold start on a busy machine, on purpose. The
# gateway repeats its wake while it holds a request, so the woken Deployment is not scaled back to zero before
# its pod is ready (found here with 5 s: the held request then hung until its client gave up).
IDLE = 5

pytestmark = pytest.mark.e2e


def log(msg: str) -> None:
    print(f"[e2e-node] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def realnode(command: str, timeout: float) -> None:
    proc = subprocess.run([sys.executable, "-m", "kiln_local.realnode", command], env=NODE_ENV, cwd=REPO,
                          timeout=timeout, text=True, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise AssertionError(f"kiln_local.realnode {command} exited {proc.returncode}; logs in {STATE / 'logs'}")


def kubectl(*args: str, stdin: str | None = None, check: bool = True, timeout: float = 300) -> str:
    proc = subprocess.run([str(KUBECTL), f"--kubeconfig={KUBECONFIG}", *args], input=stdin, text=True,
                          capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                             f"{proc.stderr[-2000:]}")
    return proc.stdout


def get(*args: str) -> dict:
    out = kubectl(*args, "-o", "json", check=False)
    try:
        return json.loads(out) if out.strip() else {}
    except ValueError:
        return {}


def wait(what: str, timeout: float, check, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (AssertionError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{diagnose()}")


def diagnose() -> str:
    out = kubectl("get", "pods", "-A", "-o", "wide", check=False)
    events = kubectl("get", "events", "-A", "--sort-by=.lastTimestamp", check=False).splitlines()[-25:]
    return out + "\n".join(events)


def s3_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (STATE / "s3.env").read_text().splitlines() if "=" in line)
    return dict(pairs)


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


def pods(ns: str, selector: str) -> list[dict]:
    listed = get("-n", ns, "get", "pods", "-l", selector)
    if "items" not in listed:  # a failed kubectl is no answer, never "no pods"
        raise AssertionError(f"kubectl get pods -l {selector} failed")
    return [p for p in listed["items"] if not p["metadata"].get("deletionTimestamp")]


def ready(pod: dict) -> bool:
    return condition(pod, "Ready").get("status") == "True"


def post(url: str, rows: list[list[float]], token: str | None = None, timeout: float = 120) -> tuple[int, dict]:
    body = json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": rows}]}).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    req = urllib.request.Request(url, body, headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")[:500]}


def labels_of(answer: dict) -> list[int]:
    return [int(x) for x in next(o for o in answer["outputs"] if o["name"] == "label")["data"]]


def token(namespace: str, service_account: str) -> str:
    from kubernetes import client, config

    with config.new_client_from_config(str(KUBECONFIG)) as api:
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(service_account, namespace, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"expirationSeconds": 3600}})
    return answer.status.token


def cluster_ip(ns: str, name: str) -> str:
    return get("-n", ns, "get", "service", name)["spec"]["clusterIP"]


@pytest.fixture(scope="module")
def node():
    """The real node, up for this module and removed afterwards (processes, mounts, network, iptables)."""
    sys.path.insert(0, str(REPO / "tests" / "cluster"))
    proc = subprocess.run([sys.executable, "-m", "kiln_local.realnode", "prerequisites"], env=NODE_ENV, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.fail("the real node cannot run on this machine (`make e2e-node` installs and builds what it needs):\n"
                    + proc.stdout + proc.stderr, pytrace=False)
    t0 = time.monotonic()
    try:
        realnode("up", timeout=3600)
        log(f"real node up (images included) in {time.monotonic() - t0:.0f}s")
        yield
    finally:
        if not os.environ.get("KILN_NODE_KEEP"):
            realnode("down", timeout=600)


def install_chart(s3: dict[str, str]) -> None:
    """charts/kiln/README.md "Production install", steps 2 to 4 (step 1, the images, is the node's), with Helm's
    engine in place of the helm binary: the CRDs, then the release's objects in Helm's install order."""
    sys.path.insert(0, str(REPO / "tests"))
    from chart_scripts import load

    chart = load("render")
    endpoint, region = s3["KILN_S3_ENDPOINT"], s3["AWS_REGION"]
    keys = [f"--from-literal=AWS_ACCESS_KEY_ID={s3['AWS_ACCESS_KEY_ID']}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={s3['AWS_SECRET_ACCESS_KEY']}"]
    # 2. the operator's namespace, restricted, and its S3 credentials
    kubectl("create", "namespace", SYSTEM_NS)
    kubectl("label", "namespace", SYSTEM_NS, "pod-security.kubernetes.io/enforce=restricted")
    kubectl("-n", SYSTEM_NS, "create", "secret", "generic", "kiln-s3", *keys)
    # 3. the chart (the images' default repositories and tag are the production ones: kiln/<name>:<appVersion>)
    values = {"s3": {"endpoint": endpoint, "region": region, "bucket": BUCKET, "existingSecret": "kiln-s3",
                     "createBucket": True}}
    rendered = chart.render(values, namespace=SYSTEM_NS)
    manifest = served_by_this_cluster(chart.manifest(rendered))
    kubectl("apply", "-f", "-", stdin="\n---\n".join(c["data"] for c in chart.crds()))
    kubectl("wait", "--for=condition=Established", "--timeout=120s", "crd/trainingjobs.kiln.dev",
            "crd/models.kiln.dev", "crd/deployments.kiln.dev")
    kubectl("apply", "-f", "-", stdin=manifest)
    for deployment in ("deployment/kiln-operator", "deployment/kiln-gateway"):  # one at a time: kubectl's rule
        kubectl("-n", SYSTEM_NS, "rollout", "status", deployment, "--timeout=900s", timeout=960)
    # 4. the team namespace: restricted, and the Secret its training and serving pods load
    kubectl("create", "namespace", NS)
    kubectl("label", "namespace", NS, "pod-security.kubernetes.io/enforce=restricted")
    kubectl("-n", NS, "create", "secret", "generic", "kiln-s3", *keys, f"--from-literal=AWS_REGION={region}",
            f"--from-literal=KILN_S3_ENDPOINT={endpoint}")


def served_by_this_cluster(manifest: str) -> str:
    """What `helm install` renders against Kubernetes 1.20 (the chart picks by .Capabilities): PodDisruptionBudget
    as policy/v1beta1, no ValidatingAdmissionPolicy."""
    served = kubectl("api-versions").split()
    if "policy/v1" not in served:
        manifest = manifest.replace("apiVersion: policy/v1\nkind: PodDisruptionBudget",
                                    "apiVersion: policy/v1beta1\nkind: PodDisruptionBudget")
    return "---\n".join(doc for doc in manifest.split("---\n")
                        if "kind: ValidatingAdmissionPolicy" not in doc)


def train(name: str, params: dict, follow_logs: bool = True) -> str:
    """A TrainingJob of model iris to Succeeded; the trainer pod's `kubectl logs` (taken while the pod exists)."""
    kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {"model": "iris", "dataset": {"uri": "builtin:iris"},
                 "algorithm": {"name": "random_forest", "params": params}, "export": {"formats": ["onnx", "joblib"]},
                 "resources": {"cpu": "500m", "memory": "1Gi"}, "timeout": 1200}}))
    logs = ""

    def finished():
        nonlocal logs
        for pod in get("-n", NS, "get", "pods", "-l", "app.kubernetes.io/name=kiln-trainer").get("items", []):
            if pod["metadata"]["labels"].get("kiln.dev/trainingjob", name) == name and \
                    pod["status"].get("phase") in ("Succeeded", "Failed"):
                logs = kubectl("-n", NS, "logs", pod["metadata"]["name"], check=False) or logs
        st = get("-n", NS, "get", "trainingjobs.kiln.dev", name).get("status") or {}
        return st.get("phase") in ("Succeeded", "Failed") and st

    st = wait(f"TrainingJob {name} to finish", 1500, finished, interval=3)
    assert st["phase"] == "Succeeded", st
    return logs


def test_the_chart_runs_the_iris_lifecycle_in_real_containers(node):
    t0 = time.monotonic()
    s3 = s3_env()
    log("install: charts/kiln/README.md steps 2-4")
    install_chart(s3)
    log(f"chart installed, operator and gateway rolled out ({time.monotonic() - t0:.0f}s)")
    operator = pods(SYSTEM_NS, "app.kubernetes.io/component=operator")[0]
    bucket_job = wait("the create-bucket Job", 300, lambda: (get("-n", SYSTEM_NS, "get", "jobs").get("items") or [])
                      and all((j.get("status") or {}).get("succeeded") for j in get("-n", SYSTEM_NS, "get", "jobs")
                              ["items"] if "bucket" in j["metadata"]["name"]))
    assert bucket_job

    # the Model and its first training run: examples/iris-trainingjob.yaml's Model, a smaller forest
    kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "Model", "metadata": {"name": "iris"},
        "spec": {"promotion": {"policy": "auto", "metric": "accuracy"}}}))
    logs = train("iris", {"n_estimators": 20, "max_depth": 4})
    log(f"trained v1 ({time.monotonic() - t0:.0f}s)")
    assert logs.strip(), "kubectl logs of the trainer pod is empty"
    assert "dataset builtin:iris" in logs and "committed" in logs, logs[-2000:]
    model = wait("version 1 to become production", 120, lambda: (m := get("-n", NS, "get", "models.kiln.dev",
                                                                            "iris")).get("status", {}).get(
        "aliases", {}).get("production") == 1 and m)
    v1 = model["status"]["versions"][0]
    assert v1["state"] == "Registered" and v1["uri"].startswith(f"s3://{BUCKET}/models/{NS}/iris/v1"), v1
    stored = s3_keys(s3, v1["uri"])
    assert any(k.endswith(".onnx") for k in stored) and any(k.endswith(".joblib") for k in stored), stored

    # serve it: examples/iris-deployment.yaml
    kubectl("-n", NS, "apply", "-f", str(REPO / "examples" / "iris-deployment.yaml"))
    serving = wait("the Deployment to serve version 1", 900, lambda: (d := get(
        "-n", NS, "get", "deployments.kiln.dev", "iris")) and condition(d, "Ready").get("reason") == "Serving"
        and d["status"].get("servingVersion") == 1 and d, interval=3)
    assert serving
    log(f"serving v1 ({time.monotonic() - t0:.0f}s)")
    rows = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
    # through the Service's ClusterIP: kube-proxy's rules, from the host
    status, answer = post(f"http://{cluster_ip(NS, 'iris')}/v2/models/iris/infer", rows)
    assert status == 200, answer
    assert labels_of(answer) == [0, 2]
    # through the gateway's Service, with a client's token (the chart's predictor ClusterRole)
    kubectl("-n", NS, "create", "serviceaccount", "iris-client")
    kubectl("-n", NS, "create", "rolebinding", "iris-client", "--clusterrole=kiln-predictor",
            f"--serviceaccount={NS}:iris-client")
    client_token = token(NS, "iris-client")
    gateway = f"http://{cluster_ip(SYSTEM_NS, 'kiln-gateway')}:8081"
    status, answer = wait("a prediction through the gateway", 120, lambda: (r := post(
        f"{gateway}/{NS}/iris/v2/models/iris/infer", rows, client_token))[0] == 200 and r)
    assert labels_of(answer) == [0, 2]
    assert post(f"{gateway}/{NS}/iris/v2/models/iris/infer", rows)[0] == 401  # no token, no prediction

    check_pods_as_an_admin(operator)
    check_root_is_refused()

    # a second version; the production alias pinned to it; the Deployment rolls to it
    train("iris-2", {"n_estimators": 30, "max_depth": 3}, follow_logs=False)
    wait("version 2 registered", 120, lambda: any(v["version"] == 2 and v["state"] == "Registered" for v in
                                                  get("-n", NS, "get", "models.kiln.dev", "iris")["status"][
                                                      "versions"]))
    kubectl("-n", NS, "patch", "models.kiln.dev", "iris", "--type=merge", "-p",
            json.dumps({"spec": {"aliases": {"production": 2}}}))
    wait("the Deployment to roll to version 2", 900, lambda: (d := get(
        "-n", NS, "get", "deployments.kiln.dev", "iris")) and d["status"].get("servingVersion") == 2
        and not d["status"].get("rollingTo") and condition(d, "Ready").get("reason") == "Serving", interval=3)
    wait("only version 2's pods left", 300, lambda: {p["metadata"]["labels"].get("kiln.dev/version")
                                                     for p in pods(NS, "app.kubernetes.io/name=kiln-server")} == {"2"})
    status, answer = post(f"{gateway}/{NS}/iris/v2/models/iris/infer", rows, client_token)
    assert status == 200 and labels_of(answer) == [0, 2], answer
    log(f"rolled out v2 ({time.monotonic() - t0:.0f}s)")

    # scale to zero after IDLE seconds; a request through the gateway wakes it and is answered.
    kubectl("-n", NS, "patch", "deployments.kiln.dev", "iris", "--type=merge", "-p", json.dumps(
        {"spec": {"replicas": {"min": 0, "max": 2}, "autoscaling": {"scaleToZeroAfter": IDLE}}}))
    wait("scale to zero", 600, lambda: condition(get("-n", NS, "get", "deployments.kiln.dev", "iris"), "Ready").get(
        "reason") == "ScaledToZero" and not pods(NS, "app.kubernetes.io/name=kiln-server"), interval=2)
    log(f"scaled to zero ({time.monotonic() - t0:.0f}s)")
    time.sleep(2)  # the gateways' watches see it too
    t_wake = time.monotonic()
    status, answer = post(f"{gateway}/{NS}/iris/v2/models/iris/infer", rows, client_token, timeout=600)
    assert status == 200 and labels_of(answer) == [0, 2], answer
    log(f"woken: first answer {time.monotonic() - t_wake:.1f}s after the request ({time.monotonic() - t0:.0f}s)")


def s3_keys(s3: dict[str, str], uri: str) -> list[str]:
    import boto3
    from botocore.config import Config

    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=s3["KILN_S3_ENDPOINT"], region_name=s3["AWS_REGION"],
                          aws_access_key_id=s3["AWS_ACCESS_KEY_ID"], aws_secret_access_key=s3["AWS_SECRET_ACCESS_KEY"],
                          config=Config(s3={"addressing_style": "path"}))
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]


def exec_(ns: str, pod: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(KUBECTL), f"--kubeconfig={KUBECONFIG}", "-n", ns, "exec", pod, "--", *argv],
                          capture_output=True, text=True, timeout=120)


def check_pods_as_an_admin(operator: dict) -> None:
    """The server and the operator as the kernel sees them: a non-zero UID, a read-only root filesystem, no
    capabilities; a service-account token only in the operator, which calls the API server."""
    server = pods(NS, "app.kubernetes.io/name=kiln-server")[0]
    for pod, ns, needs_token in ((server, NS, False), (operator, SYSTEM_NS, True)):
        name = pod["metadata"]["name"]
        status = exec_(ns, name, "cat", "/proc/1/status")
        assert status.returncode == 0, status.stderr
        fields = dict(line.split(":", 1) for line in status.stdout.splitlines() if ":" in line)
        uids = fields["Uid"].split()
        assert all(int(u) != 0 for u in uids), f"{name}: Uid {uids}"
        for cap in ("CapEff", "CapPrm", "CapBnd"):
            assert int(fields[cap].strip(), 16) == 0, f"{name}: {cap} {fields[cap].strip()}"
        assert fields["NoNewPrivs"].strip() == "1", f"{name}: NoNewPrivs {fields['NoNewPrivs']}"
        write = exec_(ns, name, "touch", "/app/written")
        assert write.returncode != 0 and "Read-only file system" in write.stderr, (name, write.stderr)
        token_file = exec_(ns, name, "cat", "/var/run/secrets/kubernetes.io/serviceaccount/token")
        assert (token_file.returncode == 0) is needs_token, (name, token_file.stderr)
    # every algorithm the server can serve loads in its image (XGBoost's pickles need xgboost itself)
    libs = exec_(NS, server["metadata"]["name"], "python", "-c", "import xgboost, sklearn, onnxruntime")
    assert libs.returncode == 0, libs.stderr[-2000:]
    log("server and operator: non-root, read-only root filesystem, no capabilities, token only where needed")


def check_root_is_refused() -> None:
    """The server's pod template with the container's runAsUser set to 0: admitted by this API server (1.20 has
    no Pod Security admission), refused by the kubelet, which enforces the template's runAsNonRoot."""
    template = next(d for d in get("-n", NS, "get", "deployments.apps")["items"]
                    if d["metadata"]["labels"].get("app.kubernetes.io/name") == "kiln-server")["spec"]["template"]
    spec = template["spec"]
    spec["containers"][0].setdefault("securityContext", {})["runAsUser"] = 0
    name = f"as-root-{uuid.uuid4().hex[:6]}"
    kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"kiln-e2e": "as-root"}},
        "spec": spec}))
    try:
        waiting = wait("the kubelet to refuse the root pod", 180, lambda: next(
            (s["state"]["waiting"] for s in (get("-n", NS, "get", "pod", name).get("status") or {}).get(
                "containerStatuses", []) if (s.get("state") or {}).get("waiting", {}).get("reason")
             == "CreateContainerConfigError"), None))
        assert "non-root" in waiting.get("message", ""), waiting
        assert get("-n", NS, "get", "pod", name)["status"]["phase"] == "Pending"
    finally:
        kubectl("-n", NS, "delete", "pod", name, "--grace-period=0", "--wait=false", check=False)
    log(f"a root pod is refused by the kubelet: {waiting.get('message')}")
