"""Serving in real containers (the real node: docs/real-node.md), beside the simulator's figures.

- server pod created → Ready: a Kiln Deployment's serving pod deleted, its replacement watched from its ADDED
  event to its Ready condition (containerd creates the sandbox and the container from the server image, the server
  downloads the ONNX model from SeaweedFS and loads it, the kubelet's readiness probe passes);
- scale-from-zero first answer: the Deployment at zero replicas, one request through the gateway's Service
  (ClusterIP) until its answer; against a warm request through the same path.

Brings the real node up when it is not (and removes it afterwards), installs the chart and trains iris when they
are missing, exactly as tests/e2e/test_real_node.py does (it reuses that module's steps). Needs root; the first run
builds everything (`make e2e-node` cold). Writes bench/results/real_node.json. About 5 minutes warm.
"""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ROUNDS = 3
ROWS = [[5.1, 3.5, 1.4, 0.2]]

spec = importlib.util.spec_from_file_location("kiln_e2e_real_node", REPO / "tests" / "e2e" / "test_real_node.py")
e2e = importlib.util.module_from_spec(spec)
spec.loader.exec_module(e2e)
NS = e2e.NS


def node_running() -> bool:
    proc = subprocess.run([sys.executable, "-m", "kiln_local.realnode", "status"], env=e2e.NODE_ENV, cwd=REPO,
                          capture_output=True, text=True)
    return proc.returncode == 0


def ensure_lifecycle() -> str:
    """The chart installed and iris v1 trained; a Deployment bench-iris (min 1) serving. Returns the client token."""
    if not e2e.get("get", "namespace", e2e.SYSTEM_NS):
        e2e.install_chart(e2e.s3_env())
    if not e2e.get("-n", NS, "get", "models.kiln.dev", "iris"):
        e2e.kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "kiln.dev/v1alpha1", "kind": "Model", "metadata": {"name": "iris"},
            "spec": {"promotion": {"policy": "auto", "metric": "accuracy"}}}))
        e2e.train("iris", {"n_estimators": 20, "max_depth": 4})
    if not e2e.get("-n", NS, "get", "serviceaccount", "iris-client"):
        e2e.kubectl("-n", NS, "create", "serviceaccount", "iris-client")
        e2e.kubectl("-n", NS, "create", "rolebinding", "iris-client", "--clusterrole=kiln-predictor",
                    f"--serviceaccount={NS}:iris-client")
    e2e.kubectl("-n", NS, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "kiln.dev/v1alpha1", "kind": "Deployment", "metadata": {"name": "bench-iris"},
        "spec": {"model": {"name": "iris"}, "runtime": "onnx", "replicas": {"min": 1, "max": 1},
                 "resources": {"cpu": "250m", "memory": "512Mi"}}}))
    e2e.wait("bench-iris to serve", 900, lambda: e2e.condition(
        e2e.get("-n", NS, "get", "deployments.kiln.dev", "bench-iris"), "Ready").get("reason") == "Serving")
    return e2e.token(NS, "iris-client")


def server_pods() -> list[dict]:
    return [p for p in e2e.pods(NS, "app.kubernetes.io/name=kiln-server")
            if p["metadata"]["labels"].get("kiln.dev/deployment", "bench-iris") == "bench-iris"
            and p["metadata"]["name"].startswith("bench-iris")]


def pod_created_to_ready() -> float:
    """Delete the serving pod; seconds from its replacement's ADDED event to its Ready condition, as watched."""
    from kubernetes import client, config, watch

    # every pod there now, the terminating ones of the last round included: only a pod made after this counts
    old = {p["metadata"]["name"] for p in e2e.get("-n", NS, "get", "pods").get("items", [])}
    serving = [p["metadata"]["name"] for p in server_pods()]
    api = client.CoreV1Api(config.new_client_from_config(str(e2e.KUBECONFIG)))
    times: dict[str, float] = {}
    done = threading.Event()

    def follow():
        w = watch.Watch()
        for event in w.stream(api.list_namespaced_pod, NS, label_selector="app.kubernetes.io/name=kiln-server",
                              timeout_seconds=600):
            pod = event["object"]
            name = pod.metadata.name
            if name in old or not name.startswith("bench-iris") or pod.metadata.deletion_timestamp:
                continue
            times.setdefault(name, time.monotonic())
            if any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []):
                times[name] = time.monotonic() - times[name]
                done.set()
                w.stop()
                return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    time.sleep(1)  # the watch is established
    for name in serving:
        e2e.kubectl("-n", NS, "delete", "pod", name, "--wait=false")
    if not done.wait(600):
        raise RuntimeError("no replacement pod became Ready in 600 s")
    return next(iter(times.values()))


def first_answer_from_zero(url: str, token: str) -> tuple[float, float]:
    """(seconds to the first answer from zero replicas, seconds of a warm request right after)."""
    e2e.kubectl("-n", NS, "patch", "deployments.kiln.dev", "bench-iris", "--type=merge", "-p", json.dumps(
        {"spec": {"replicas": {"min": 0, "max": 1}, "autoscaling": {"scaleToZeroAfter": e2e.IDLE}}}))
    e2e.wait("bench-iris at zero", 600, lambda: e2e.condition(e2e.get(
        "-n", NS, "get", "deployments.kiln.dev", "bench-iris"), "Ready").get("reason") == "ScaledToZero"
        and not server_pods(), interval=1)
    time.sleep(2)
    t0 = time.monotonic()
    status, answer = e2e.post(url, ROWS, token, timeout=600)
    cold = time.monotonic() - t0
    assert status == 200, answer
    t0 = time.monotonic()
    assert e2e.post(url, ROWS, token)[0] == 200
    warm = time.monotonic() - t0
    e2e.kubectl("-n", NS, "patch", "deployments.kiln.dev", "bench-iris", "--type=merge", "-p", json.dumps(
        {"spec": {"replicas": {"min": 1, "max": 1}}}))
    e2e.wait("bench-iris back at one replica", 600, lambda: any(e2e.ready(p) for p in server_pods()), interval=1)
    return cold, warm


def main() -> int:
    started = not node_running()
    if started:
        e2e.realnode("up", timeout=3600)
    try:
        token = ensure_lifecycle()
        url = f"http://{e2e.cluster_ip(e2e.SYSTEM_NS, 'kiln-gateway')}:8081/{NS}/bench-iris/v2/models/iris/infer"
        e2e.wait("a warm answer", 120, lambda: e2e.post(url, ROWS, token)[0] == 200)
        ready = [pod_created_to_ready() for _ in range(ROUNDS)]
        wakes = [first_answer_from_zero(url, token) for _ in range(ROUNDS)]
        result = {
            "rounds": ROUNDS,
            "pod_created_to_ready_s": ready, "pod_created_to_ready_median_s": statistics.median(ready),
            "first_answer_from_zero_s": [c for c, _ in wakes],
            "first_answer_from_zero_median_s": statistics.median(c for c, _ in wakes),
            "warm_request_median_s": statistics.median(w for _, w in wakes),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "real_node.json").write_text(json.dumps(result, indent=1))
        print(f"real node, {ROUNDS} rounds (medians): server pod created → Ready "
              f"{result['pod_created_to_ready_median_s']:.1f} s {[round(x, 1) for x in ready]}; "
              f"scale-from-zero first answer {result['first_answer_from_zero_median_s']:.1f} s "
              f"{[round(c, 1) for c, _ in wakes]} (warm request {result['warm_request_median_s'] * 1000:.0f} ms)")
        e2e.kubectl("-n", NS, "delete", "deployments.kiln.dev", "bench-iris", "--wait=false", check=False)
    finally:
        if started:
            e2e.realnode("down", timeout=600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
