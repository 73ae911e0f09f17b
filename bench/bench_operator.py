"""Operator benchmarks on the local cluster, each against a baseline measured in the same run.

- Deployment apply → Ready (seconds), and TrainingJob apply → Succeeded for context;
- scale-up reaction to a 10× load step: seconds until the autoscaler asks for more replicas and
  until they are ready, compared with the stable window a non-panicking autoscaler would need;
- cold start from zero: latency of the first request after scale-to-zero vs a warm request;
- cost on a bursty synthetic trace: replica-seconds of the autoscaled Deployment vs the same
  trace on a fixed max-replica Deployment (the baseline), with both p99s against the objective.

Writes bench/results/operator.json and prints a table. Bounded: about 6 minutes.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from kubernetes import client, config

from kiln_local import cluster as local
from kiln_local.gateway_client import Load, infer
from kiln_local.paths import KUBECONFIG

GROUP, VERSION = "kiln.dev", "v1alpha1"
RESULTS = Path(__file__).parent / "results"
ROW = [6.1, 2.8, 4.7, 1.2]
P99_OBJECTIVE_MS = 250.0


def create(custom, ns, plural, kind, name, spec):
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name}, "spec": spec})


def status(custom, ns, plural, name) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name).get("status") or {}


def wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.2)
    raise TimeoutError(what)


def ready_reason(st: dict) -> str | None:
    c = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), None)
    return c["reason"] if c and c["status"] == "True" else None


class ReplicaMeter(threading.Thread):
    """Integrates status.replicas over time (replica-seconds)."""

    def __init__(self, custom, ns, name):
        super().__init__(daemon=True)
        self.custom, self.ns, self.name = custom, ns, name
        self.replica_seconds = 0.0
        self.peak = 0
        self.stop = threading.Event()

    def run(self):
        last = time.monotonic()
        while not self.stop.is_set():
            time.sleep(0.5)
            now = time.monotonic()
            replicas = status(self.custom, self.ns, "deployments", self.name).get("replicas") or 0
            self.replica_seconds += replicas * (now - last)
            self.peak = max(self.peak, replicas)
            last = now


def p99_ms(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) >= 100 else max(latencies) * 1000


def run_trace(custom, ns, name, trace) -> dict:
    meter = ReplicaMeter(custom, ns, name)
    meter.start()
    latencies, failures = [], 0
    for seconds, workers in trace:
        if workers == 0:
            time.sleep(seconds)
            continue
        with Load(ns, name, "iris", ROW, workers=workers, pause=0.05, limit=seconds) as load:
            time.sleep(seconds)
        latencies += load.latencies
        failures += len(load.failures)
    meter.stop.set()
    meter.join()
    return {"replica_seconds": round(meter.replica_seconds, 1), "peak_replicas": meter.peak,
            "requests": len(latencies), "failures": failures, "p99_ms": round(p99_ms(latencies), 1)}


def main() -> int:
    local.up()
    config.load_kube_config(str(KUBECONFIG))
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    ns = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    local.copy_s3_secrets(core, ns)
    wait(lambda: any(sa.metadata.name == "default" and sa.secrets
                     for sa in core.list_namespaced_service_account(ns).items), 60, "service account")
    out: dict = {"baselines": {}}
    try:
        create(custom, ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
        t0 = time.monotonic()
        create(custom, ns, "trainingjobs", "TrainingJob", "iris", {
            "model": "iris", "dataset": {"uri": "builtin:iris"},
            "algorithm": {"name": "random_forest", "params": {"n_estimators": 100}}})
        wait(lambda: status(custom, ns, "trainingjobs", "iris").get("phase") == "Succeeded", 300, "training")
        out["trainingjob_apply_to_succeeded_s"] = round(time.monotonic() - t0, 2)
        wait(lambda: status(custom, ns, "models", "iris").get("aliases"), 60, "production alias")

        # apply → Ready
        # rps per replica: the ONNX model answers in well under a millisecond, so server-side
        # concurrency stays below one even under load; request rate is the signal that moves.
        autoscaling = {"metric": "rps", "target": 40, "stableWindow": 30, "panicWindow": 4,
                       "scaleToZeroAfter": 10}
        t0 = time.monotonic()
        create(custom, ns, "deployments", "Deployment", "svc", {
            "model": {"name": "iris"}, "replicas": {"min": 1, "max": 4}, "autoscaling": autoscaling})
        wait(lambda: ready_reason(status(custom, ns, "deployments", "svc")) == "Serving", 180, "Ready")
        out["deployment_apply_to_ready_s"] = round(time.monotonic() - t0, 2)

        # 10× load step
        with Load(ns, "svc", "iris", ROW, workers=1, pause=0.05, limit=120) as load:
            time.sleep(10)
            base = status(custom, ns, "deployments", "svc").get("replicas") or 1
            t0 = time.monotonic()
            load.set_workers(10)
            wait(lambda: (status(custom, ns, "deployments", "svc").get("desiredReplicas") or 0) > base, 60,
                 "scale-up decision")
            decided = time.monotonic() - t0
            wait(lambda: (status(custom, ns, "deployments", "svc").get("readyReplicas") or 0) > base, 120,
                 "scale-up ready")
            ready_after = time.monotonic() - t0
        out["scale_up_decision_s"] = round(decided, 2)
        out["scale_up_ready_s"] = round(ready_after, 2)
        out["baselines"]["stable_window_s"] = autoscaling["stableWindow"]
        out["scale_up_decision_vs_stable_window"] = round(decided / autoscaling["stableWindow"], 3)

        # cold start from zero vs a warm request
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "deployments", "svc",
                                              {"spec": {"replicas": {"min": 0, "max": 4}}})
        wait(lambda: ready_reason(status(custom, ns, "deployments", "svc")) == "ScaledToZero", 180, "zero")
        wait(lambda: not core.list_namespaced_pod(ns, label_selector="kiln.dev/deployment=svc").items, 120,
             "pods gone")
        t0 = time.perf_counter()
        code, _ = infer(ns, "svc", "iris", [ROW], timeout=180)
        cold = time.perf_counter() - t0
        warm = []
        for _ in range(20):
            t0 = time.perf_counter()
            infer(ns, "svc", "iris", [ROW])
            warm.append(time.perf_counter() - t0)
        out["cold_start_s"] = round(cold, 2) if code == 200 else None
        out["baselines"]["warm_request_ms"] = round(statistics.median(warm) * 1000, 2)
        out["cold_vs_warm"] = round(cold / statistics.median(warm), 1)

        # bursty trace: autoscaled (min 1) vs fixed max replicas
        # (seconds, clients): bursts separated by idle stretches, as interactive traffic looks
        trace = [(15, 0), (10, 8), (25, 0), (10, 2), (10, 10), (25, 0), (8, 6)]
        custom.patch_namespaced_custom_object(GROUP, VERSION, ns, "deployments", "svc", {"spec": {
            "replicas": {"min": 1, "max": 4}, "autoscaling": {**autoscaling, "stableWindow": 10}}})
        wait(lambda: ready_reason(status(custom, ns, "deployments", "svc")) == "Serving", 180, "serving again")
        create(custom, ns, "deployments", "Deployment", "fixed", {
            "model": {"name": "iris"}, "replicas": {"min": 4, "max": 4}})
        wait(lambda: (status(custom, ns, "deployments", "fixed").get("readyReplicas") or 0) == 4, 180, "fixed up")
        auto = run_trace(custom, ns, "svc", trace)
        fixed = run_trace(custom, ns, "fixed", trace)
        out["bursty_trace"] = {"trace": trace, "autoscaled": auto, "fixed_max_baseline": fixed,
                               "p99_objective_ms": P99_OBJECTIVE_MS,
                               "cost_ratio": round(auto["replica_seconds"] / fixed["replica_seconds"], 3),
                               "p99_held": auto["p99_ms"] <= P99_OBJECTIVE_MS}
    finally:
        core.delete_namespace(ns)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "operator.json").write_text(json.dumps(out, indent=2))
    b = out["bursty_trace"]
    print("\nKiln operator benchmark (local cluster)")
    print(f"  TrainingJob apply → Succeeded        {out['trainingjob_apply_to_succeeded_s']:8.2f} s")
    print(f"  Deployment apply → Ready             {out['deployment_apply_to_ready_s']:8.2f} s")
    print(f"  10× load step → scale-up decision    {out['scale_up_decision_s']:8.2f} s "
          f"({out['scale_up_decision_vs_stable_window']:.2f}× the {autoscaling['stableWindow']} s stable window)")
    print(f"  10× load step → new replica ready    {out['scale_up_ready_s']:8.2f} s")
    print(f"  cold start from zero (first request) {out['cold_start_s']:8.2f} s "
          f"(warm request {out['baselines']['warm_request_ms']} ms: {out['cold_vs_warm']}×)")
    print(f"  bursty trace replica-seconds         {b['autoscaled']['replica_seconds']:8.1f} autoscaled vs "
          f"{b['fixed_max_baseline']['replica_seconds']:.1f} fixed max → cost ratio {b['cost_ratio']:.2f}")
    print(f"  bursty trace p99                     {b['autoscaled']['p99_ms']:8.1f} ms autoscaled vs "
          f"{b['fixed_max_baseline']['p99_ms']:.1f} ms fixed (objective {P99_OBJECTIVE_MS:.0f} ms: "
          f"{'held' if b['p99_held'] else 'MISSED'}); failures {b['autoscaled']['failures']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
