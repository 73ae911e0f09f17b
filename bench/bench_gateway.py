"""Gateway benchmark: predictions through the gateway vs straight to the serving pod, in the same run.

    python bench/bench_gateway.py [--seconds 5] [--rounds 5] [--warmup 2] [--out FILE]

Setup, on the local cluster: examples/iris-trainingjob.yaml (Model + TrainingJob) in a fresh namespace, and the
Kiln Deployment of examples/iris-deployment.yaml held at exactly one replica (replicas min = max = 1) so that
both paths reach the same single serving pod. The gateway measured is a process of its own started here from
the working tree (`python -m kiln_operator.gateway`, as the chart runs it, fed by its watches), on a free port,
so that the cluster's own kiln-gateway is neither disturbed nor shared.

  direct   wrk → http://<pod IP>:8080/v2/models/iris/infer                 (the baseline)
  gateway  wrk → http://<gateway>/<namespace>/iris/v2/models/iris/infer   → the same pod

Load: Debian's wrk (one thread, closed loop, concurrency 8, a Lua script POSTing one iris row as Open Inference
Protocol V2 JSON, FP32, with `Authorization: Bearer <token>` of the local cluster's kiln-tester ServiceAccount on
both paths, so both carry the same bytes); every response must be 2xx or the run is void. The gateway checks
tokens as in production (KILN_GATEWAY_AUTH=kubernetes): the warm-up fills its cache, so what is measured is the
cached check every request pays, not the one-off TokenReview and SubjectAccessReview. Interleaved rounds
(direct, gateway, direct, gateway, ...) after a warm-up of each, medians over the rounds. With two or more CPUs
the serving pod (all its threads) is pinned to CPU 0, wrk and the gateway to CPU 1: the pod has one core to
itself on both paths, and what the gateway costs shows as what it takes from wrk's core and what it adds to the
latency.

Reported: throughput ratio gateway/direct and p99 added (gateway p99 − direct p99, ms), against the targets of
issue #10 (ratio ≥ 0.6, p99 added ≤ 3 ms). Writes bench/results/gateway.json and prints a table. Bounded: about
a minute and a half (training and the pod's start included), under two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from bench_server import LUA, Proc, combine, ensure_wrk, free_port, pinned, wrk_run
from kubernetes import client, config

from kiln_local import cluster as local
from kiln_local.paths import KUBECONFIG, REPO, STATE

RESULTS = Path(__file__).parent / "results" / "gateway.json"
GROUP, VERSION = "kiln.dev", "v1alpha1"
CONCURRENCY = 8
ROW = [6.1, 2.8, 4.7, 1.2]
TARGET_RATIO = 0.6
TARGET_P99_ADDED_MS = 3.0
TOKEN_ENV = "KILN_BENCH_TOKEN"
# The token goes to wrk through its environment, not as `-H` on its command line, which every local user can read
# in /proc/<pid>/cmdline.
AUTH_LUA = LUA + f'\nwrk.headers["Authorization"] = "Bearer " .. assert(os.getenv("{TOKEN_ENV}"))\n'


def wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.25)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def status(custom, ns: str, plural: str, name: str) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name).get("status") or {}


def apply_examples(custom, ns: str) -> None:
    docs = list(yaml.safe_load_all((REPO / "examples" / "iris-trainingjob.yaml").read_text()))
    dep = yaml.safe_load((REPO / "examples" / "iris-deployment.yaml").read_text())
    dep["spec"]["replicas"] = {"min": 1, "max": 1}  # one pod: both paths reach the same one
    for doc in [*docs, dep]:
        plural = {"Model": "models", "TrainingJob": "trainingjobs", "Deployment": "deployments"}[doc["kind"]]
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, doc)


def serving_pod(core, ns: str) -> client.V1Pod:
    def ready_pod():
        pods = core.list_namespaced_pod(ns, label_selector="kiln.dev/deployment=iris").items
        return next((p for p in pods if p.status.pod_ip and not p.metadata.deletion_timestamp and any(
            c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])), None)

    return wait(ready_pod, 120, "a ready serving pod")


def pin_pod(ns: str, pod: str, cpu: int) -> str:
    """Pin every thread of the pod's processes (the node simulator runs it as a process group) to cpu."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return "none"
    pid = int((STATE / "pods" / f"{ns}_{pod}" / "server.pid").read_text())
    group = subprocess.run(["ps", "-o", "pid=", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    for member in group or [str(pid)]:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), member], capture_output=True, check=False)
    return f"serving pod on CPU {cpu}, wrk and gateway on CPU 1"


def post(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {os.environ[TOKEN_ENV]}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def start_gateway(work: Path) -> tuple[Proc, str]:
    port, admin = free_port(), free_port()
    proc = Proc("gateway", pinned([sys.executable, "-m", "kiln_operator.gateway"], 1), work / "gateway.log", env={
        "KUBECONFIG": str(KUBECONFIG), "KILN_GATEWAY_LISTEN": f"127.0.0.1:{port}",
        "KILN_GATEWAY_ADMIN_LISTEN": f"127.0.0.1:{admin}", "KILN_GATEWAY_DRAIN_SECONDS": "0",
        "KILN_GATEWAY_AUTH": "kubernetes", "KILN_LOG_FORMAT": "plain"}, cwd=REPO)

    def ready():
        if proc.proc.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{proc.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    wait(ready, 30, "the gateway's readiness")
    return proc, f"127.0.0.1:{port}"


def measure(wrk: str, lua: Path, body: Path, urls: dict[str, str], seconds: float, rounds: int,
            warmup: float) -> dict[str, dict]:
    for url in urls.values():
        wrk_run(wrk, lua, body, url, CONCURRENCY, warmup)
    runs: dict[str, list] = {name: [] for name in urls}
    for _ in range(rounds):  # interleaved: outside load hits a round of both, not one path
        for name, url in urls.items():
            runs[name].append(wrk_run(wrk, lua, body, url, CONCURRENCY, seconds))
    return {name: combine(got) for name, got in runs.items()}


def verdict(results: dict) -> dict:
    direct, gateway = results["paths"]["direct"], results["paths"]["gateway"]
    ratio = gateway["rps"] / direct["rps"]
    added = gateway["p99_ms"] - direct["p99_ms"]
    paired = statistics.median(g["rps"] / d["rps"] for g, d in zip(gateway["rounds"], direct["rounds"], strict=True))
    return {"throughput_ratio": round(ratio, 3), "throughput_ratio_paired_median": round(paired, 3),
            "p99_added_ms": round(added, 2), "p50_added_ms": round(gateway["p50_ms"] - direct["p50_ms"], 2),
            "targets": {"throughput_ratio": TARGET_RATIO, "p99_added_ms": TARGET_P99_ADDED_MS},
            "met": ratio >= TARGET_RATIO and added <= TARGET_P99_ADDED_MS}


def table(results: dict) -> str:
    lines = [f"{'path':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}"]
    for name in ("direct", "gateway"):
        r = results["paths"][name]
        lines.append(f"{name:<8} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['errors']:7d}")
    v = results["verdict"]
    lines += ["", f"throughput gateway/direct {v['throughput_ratio']:.3f} (target >= {TARGET_RATIO}); "
                  f"p99 added {v['p99_added_ms']:+.2f} ms (target <= {TARGET_P99_ADDED_MS} ms); "
                  f"{'met' if v['met'] else 'NOT met'}"]
    return "\n".join(lines)


def run(seconds: float, rounds: int, warmup: float) -> dict:
    wrk = ensure_wrk()
    local.up()
    os.environ[TOKEN_ENV] = local.tester_token()  # wrk_run hands wrk this process's environment
    config.load_kube_config(str(KUBECONFIG))
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    ns = f"bench-gw-{uuid.uuid4().hex[:6]}"
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-gateway-"))
    gateway = None
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    try:
        local.copy_s3_secrets(core, ns)  # training's and serving's, as the tests' namespaces get them
        wait(lambda: any(sa.metadata.name == "default" and sa.secrets
                         for sa in core.list_namespaced_service_account(ns).items), 60, "the service account")
        t0 = time.monotonic()
        apply_examples(custom, ns)
        wait(lambda: any(c["type"] == "Ready" and c["status"] == "True" and c["reason"] == "Serving"
                         for c in status(custom, ns, "deployments", "iris").get("conditions", [])), 240,
             "iris to be served")
        setup_s = time.monotonic() - t0
        pod = serving_pod(core, ns)
        pinning = pin_pod(ns, pod.metadata.name, 0)
        gateway, address = start_gateway(work)
        urls = {"direct": f"http://{pod.status.pod_ip}:8080/v2/models/iris/infer",
                "gateway": f"http://{address}/{ns}/iris/v2/models/iris/infer"}
        body = work / "row.json"
        body.write_bytes(json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [ROW]}]}).encode())
        lua = work / "post.lua"
        lua.write_text(AUTH_LUA)
        answers = {name: post(url, body.read_bytes()) for name, url in urls.items()}
        if answers["direct"] != answers["gateway"]:
            raise RuntimeError(f"the paths answer differently: {answers}")
        print(f"measuring direct and gateway: {rounds} interleaved rounds of {seconds:g} s at concurrency "
              f"{CONCURRENCY} after {warmup:g} s warm-up ({pinning})", flush=True)
        paths = measure(wrk, lua, body, urls, seconds, rounds, warmup)
    finally:
        if gateway is not None:
            gateway.stop()
        core.delete_namespace(ns)
        shutil.rmtree(work, ignore_errors=True)
    results = {"paths": paths, "setup": {
        "model": "examples/iris-trainingjob.yaml (RandomForest, 100 trees, max_depth 5), ONNX runtime",
        "deployment": "examples/iris-deployment.yaml with replicas min = max = 1: one serving pod",
        "payload": "Open Inference Protocol V2 JSON, FP32, one row [1, 4]",
        "load": f"wrk -t1 -c{CONCURRENCY}, closed loop, {rounds} interleaved rounds of {seconds:g} s (medians) "
                f"after {warmup:g} s warm-up of each path",
        "baseline": "direct: straight to the serving pod's IP, port 8080",
        "gateway": "python -m kiln_operator.gateway from the working tree (one process, uvloop), "
                   "KILN_GATEWAY_AUTH=kubernetes (the caller's check cached after the warm-up)",
        "pinning": pinning, "cpus": os.cpu_count(), "machine": platform.machine(),
        "python": platform.python_version(), "train_and_serve_s": round(setup_s, 1)}}
    results["verdict"] = verdict(results)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per measured round and path (5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians (5)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per path (2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (bench/results/gateway.json)")
    args = parser.parse_args(argv)
    results = run(args.seconds, args.rounds, args.warmup)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print("\nKiln gateway benchmark (local cluster, iris, concurrency 8)")
    print(table(results))
    print(f"results: {args.out}")
    return 0 if all(r["errors"] == 0 for r in results["paths"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
