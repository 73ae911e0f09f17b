"""Kiln end to end on kind: build and load the three images, `helm install` the chart with the bundled SeaweedFS,
then the iris lifecycle (train -> Model version -> Deployment Ready -> a prediction through the gateway), with
both namespaces enforcing Pod Security "restricted" through the API server's own PodSecurity admission.

Runs where `docker info` succeeds and kind, helm and kubectl are on PATH; skipped otherwise, saying which is
missing. The SeaweedFS image is pulled from the default registry, so the machine needs to reach it.
KILN_E2E_KEEP=1 keeps the cluster afterwards (kind delete cluster --name kiln-e2e to remove it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "kiln-e2e"
TAG = "e2e"
SYSTEM_NS, NS = "kiln-system", "kiln-e2e"
IMAGES = {"operator": "operator/Dockerfile", "trainer": "trainer-image/Dockerfile", "server": "server-image/Dockerfile"}


def _why_not() -> str | None:
    """Why this machine cannot run the kind test (every missing piece), or None when it can."""
    missing = []
    if shutil.which("docker") is None:
        missing.append("docker is not on PATH")
    else:
        try:
            info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
            if info.returncode != 0:
                first = (info.stderr or info.stdout).strip().splitlines()[:1]
                missing.append("`docker info` failed, no Docker engine answers"
                               + (f" ({first[0].strip()})" if first else ""))
        except (OSError, subprocess.TimeoutExpired) as exc:
            missing.append(f"`docker info` did not answer: {exc}")
    missing += [f"{tool} is not on PATH" for tool in ("kind", "helm", "kubectl") if shutil.which(tool) is None]
    return "; ".join(missing) or None


REASON = _why_not()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(REASON is not None, reason=f"kind e2e skipped: {REASON}")]


def run(*args: str, timeout: float = 600, check: bool = True, stdin: str | None = None) -> str:
    print("$", " ".join(args), flush=True)
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=stdin, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def kubectl(*args: str, **kw) -> str:
    return run("kubectl", f"--context=kind-{CLUSTER}", *args, **kw)


def wait_json(what: str, timeout: float, check, *args: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        out = kubectl(*args, "-o", "json", check=False)
        try:
            last = json.loads(out) if out.strip() else None
        except ValueError:
            last = None
        if last is not None and (result := check(last)):
            return result
        time.sleep(2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {json.dumps(last)[:2000]}")


def condition(obj: dict, kind: str) -> dict:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), {})


@pytest.fixture(scope="module")
def kind_cluster():
    if CLUSTER not in run("kind", "get", "clusters").split():
        run("kind", "create", "cluster", "--name", CLUSTER, "--wait", "180s", timeout=600)
    try:
        for name, dockerfile in IMAGES.items():
            run("docker", "build", "-f", dockerfile, "-t", f"kiln/{name}:{TAG}", ".", timeout=3600)
        run("kind", "load", "docker-image", "--name", CLUSTER, *(f"kiln/{n}:{TAG}" for n in IMAGES), timeout=1800)
        yield CLUSTER
    finally:
        if not os.environ.get("KILN_E2E_KEEP"):
            run("kind", "delete", "cluster", "--name", CLUSTER, check=False, timeout=300)


def test_helm_install_and_the_iris_lifecycle_on_kind(kind_cluster):
    key, secret = "kiln-e2e", uuid.uuid4().hex
    for ns in (SYSTEM_NS, NS):
        kubectl("create", "namespace", ns, check=False)
        # the API server's PodSecurity admission refuses any Kiln pod that breaks "restricted"
        kubectl("label", "--overwrite", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted",
                "pod-security.kubernetes.io/warn=restricted")
    run("helm", "lint", "charts/kiln", "--strict", "--set", "seaweedfs.enabled=true",
        "--set", f"s3.accessKeyId={key}", "--set", f"s3.secretAccessKey={secret}")
    run("helm", "upgrade", "--install", "kiln", "charts/kiln", "--namespace", SYSTEM_NS,
        "--set", f"image.tag={TAG}", "--set", "image.pullPolicy=Never",
        "--set", f"images.trainer.tag={TAG}", "--set", f"images.server.tag={TAG}",
        "--set", "seaweedfs.enabled=true", "--set", f"s3.accessKeyId={key}", "--set", f"s3.secretAccessKey={secret}",
        "--wait", "--wait-for-jobs", "--timeout", "10m", timeout=900)
    endpoint = f"http://kiln-seaweedfs.{SYSTEM_NS}.svc:8333"
    kubectl("-n", NS, "create", "secret", "generic", "kiln-s3", f"--from-literal=AWS_ACCESS_KEY_ID={key}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={secret}", "--from-literal=AWS_REGION=us-east-1",
            f"--from-literal=KILN_S3_ENDPOINT={endpoint}", check=False)

    kubectl("-n", NS, "apply", "-f", "-", stdin="""
apiVersion: kiln.dev/v1alpha1
kind: Model
metadata: {name: iris}
spec:
  promotion: {policy: auto, metric: accuracy}
---
apiVersion: kiln.dev/v1alpha1
kind: TrainingJob
metadata: {name: iris}
spec:
  model: iris
  dataset: {uri: "builtin:iris"}
  algorithm: {name: random_forest, params: {n_estimators: 20, max_depth: 4}}
  export: {formats: [onnx]}
  resources: {cpu: 500m, memory: 1Gi}
""")
    tj = wait_json("the TrainingJob to finish", 900,
                   lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed") and o,
                   "-n", NS, "get", "trainingjobs.kiln.dev", "iris")
    assert tj["status"]["phase"] == "Succeeded", tj["status"]
    model = wait_json("version 1 to become production", 60,
                      lambda o: (o.get("status") or {}).get("aliases", {}).get("production") == 1 and o,
                      "-n", NS, "get", "models.kiln.dev", "iris")
    assert model["status"]["versions"][0]["state"] == "Registered"

    kubectl("-n", NS, "apply", "-f", "-", stdin="""
apiVersion: kiln.dev/v1alpha1
kind: Deployment
metadata: {name: iris}
spec:
  model: {name: iris}
  replicas: {min: 1, max: 2}
""")
    wait_json("the Deployment to serve", 600,
              lambda o: condition(o, "Ready").get("reason") == "Serving" and o,
              "-n", NS, "get", "deployments.kiln.dev", "iris")

    # a client pod (the operator image has Python) posts through the gateway's Service
    url = f"http://kiln-gateway.{SYSTEM_NS}.svc:8081/{NS}/iris/v2/models/iris/infer"
    script = (
        "import json, urllib.request; body = json.dumps({'inputs': [{'name': 'input', 'shape': [1, 4], "
        "'datatype': 'FP32', 'data': [[5.1, 3.5, 1.4, 0.2]]}]}).encode(); "
        f"req = urllib.request.Request({url!r}, body, {{'Content-Type': 'application/json'}}); "
        "print(urllib.request.urlopen(req, timeout=120).read().decode())"
    )
    overrides = {"spec": {"automountServiceAccountToken": False, "securityContext": {
        "runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "predict", "image": f"kiln/operator:{TAG}", "imagePullPolicy": "Never",
                        "command": ["python", "-c", script], "securityContext": {
                            "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}]}}
    kubectl("-n", NS, "run", "predict", f"--image=kiln/operator:{TAG}", "--restart=Never",
            f"--overrides={json.dumps(overrides)}")
    wait_json("the prediction pod to finish", 180,
              lambda o: (o.get("status") or {}).get("phase") in ("Succeeded", "Failed") and o,
              "-n", NS, "get", "pod", "predict")
    answer = json.loads(kubectl("-n", NS, "logs", "predict").strip().splitlines()[-1])
    label = next(o for o in answer["outputs"] if o["name"] == "label")["data"][0]
    assert int(label) == 0

    run("helm", "uninstall", "kiln", "--namespace", SYSTEM_NS, "--wait", timeout=300)
