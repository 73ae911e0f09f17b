"""Search benchmark: a hyperparameter search across 4 pods vs the same search in one pod, on the local cluster.

    python bench/bench_search.py [--rows 50000] [--trials 48] [--quick]

Workload: random_forest, `method: random`, 48 candidates drawn (seed 7) from a 72-point grid
(n_estimators 10/20/30 × max_depth 4/8/12/None × min_samples_leaf 1/5/20 × max_features sqrt/0.5),
3-fold stratified CV, on a generated table of 50,000 rows × 20 numeric features (scikit-learn's
make_classification, 2 classes, random_state 0), stored as Parquet in SeaweedFS and read by every
pod from s3://. Each run is a TrainingJob in a fresh namespace, applied alone; its wall time runs
from the apply to status.phase Succeeded (as a user waits for it).

  one pod, cpu 1     spec.search without parallelism; the trainer's search uses 1 worker
  one pod, cpu 4     the same with resources.cpu 4: GridSearchCV/RandomizedSearchCV with n_jobs=4
  4 pods, cpu 1      spec.search.parallelism 4 (4 shard Jobs at once, cpu 1 each), then the training Job

The baseline is "one pod, cpu 1" (the same per-pod resources as each shard pod); the ratio reported
is its wall time over that of the 4 pods. Every run must pick the same best params and reach the
same test metrics, or the benchmark fails. The machine's real core count (os.cpu_count()) and the
simulated node's claimed capacity are recorded next to the figures: on this project's machine the
node claims 16 CPUs and has 2, so 4 pods can be at most about 2× faster than one, less the extra
pod starts (each pod loads and splits the table again). Output: a table; JSON in
bench/results/search.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
import uuid
from pathlib import Path

from kubernetes import client, config

from kiln_contract import storage
from kiln_local import cluster as local
from kiln_local.paths import KUBECONFIG

GROUP, VERSION = "kiln.dev", "v1alpha1"
RESULTS = Path(__file__).parent / "results" / "search.json"
SPACE = {"n_estimators": [10, 20, 30], "max_depth": [4, 8, 12, None], "min_samples_leaf": [1, 5, 20],
         "max_features": ["sqrt", 0.5]}


def table_bytes(rows: int) -> bytes:
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=rows, n_features=20, n_informative=10, n_redundant=4, random_state=0)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(X.shape[1])])
    frame["label"] = y
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def wait(check, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(0.25)
    raise TimeoutError(what)


def status(custom, ns, name) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", name).get("status") or {}


def card(prefix: str) -> dict:
    loc = storage.parse_s3(storage.card_uri(prefix))
    return json.loads(storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())


def run_one(core, custom, batch, label: str, source: tuple[str, str], search: dict, cpu: str) -> dict:
    ns = f"bench-search-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    bucket, key = source
    # a namespace's specs read datasets under datasets/<namespace>/ (the local cluster's KILN_READ_PREFIXES)
    own = f"datasets/{ns}/{key.rsplit('/', 1)[-1]}"
    storage.s3_client().copy_object(Bucket=bucket, Key=own, CopySource={"Bucket": bucket, "Key": key})
    dataset = f"s3://{bucket}/{own}"
    try:
        local.copy_s3_secrets(core, ns)
        wait(lambda: any(sa.metadata.name == "default" and sa.secrets
                         for sa in core.list_namespaced_service_account(ns).items), 60, "service account")
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "models", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "Model", "metadata": {"name": "synth"}, "spec": {}})
        spec = {"model": "synth", "dataset": {"uri": dataset, "target": "label"},
                "algorithm": {"name": "random_forest", "params": {"random_state": 0}},
                "split": {"seed": 7}, "export": {"formats": ["joblib"]},
                "resources": {"cpu": cpu}, "timeout": 3600, "search": search}
        t0 = time.monotonic()
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs", {
            "apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": "s"}, "spec": spec})
        st = wait(lambda: (s := status(custom, ns, "s")).get("phase") in ("Succeeded", "Failed") and s, 3600,
                  f"{label} to finish")
        wall = time.monotonic() - t0
        if st["phase"] != "Succeeded":
            raise RuntimeError(f"{label} failed: {st.get('conditions')}")
        jobs = batch.list_namespaced_job(ns).items
        shards = [j for j in jobs if "-s" in j.metadata.name.rsplit("-v", 1)[-1]]
        final = next(j for j in jobs if j not in shards)
        c = card(st["artifactURI"])
        out = {"label": label, "wall_s": round(wall, 2), "cpu": cpu, "pods": len(jobs),
               "final_job_s": (final.status.completion_time - final.status.start_time).total_seconds(),
               "fit_phase_s": c["timings"].get("fit"), "bestParams": c["search"]["bestParams"],
               "bestScore": c["search"]["bestScore"], "metrics": c["metrics"], "candidates": c["search"]["candidates"]}
        if shards:
            first = min(j.status.start_time for j in shards)
            last = max(j.status.completion_time for j in shards)
            out["shards_s"] = (last - first).total_seconds()
        return out
    finally:
        core.delete_namespace(ns)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--quick", action="store_true", help="5,000 rows, 12 candidates (a smoke run)")
    p.add_argument("--skip-cpu4", action="store_true", help="leave out the one-pod cpu 4 run")
    args = p.parse_args()
    if args.quick:
        args.rows, args.trials = 5_000, 12
    local.up()
    os.environ.update(local.environ())
    config.load_kube_config(str(KUBECONFIG))
    core, custom, batch = client.CoreV1Api(), client.CustomObjectsApi(), client.BatchV1Api()
    bucket = os.environ.get("KILN_BUCKET", "kiln")
    key = f"datasets/bench-search/synth-{args.rows}.parquet"
    storage.s3_client().put_object(Bucket=bucket, Key=key, Body=table_bytes(args.rows))
    search = {"method": "random", "space": SPACE, "trials": args.trials, "cvFolds": 3}
    plans = [("one pod, cpu 1", {}, "1"), ("4 pods, cpu 1", {"parallelism": 4}, "1")]
    if not args.skip_cpu4:
        plans.append(("one pod, cpu 4", {}, "4"))
    runs = []
    load_before = os.getloadavg()
    for label, extra, cpu in plans:
        print(f"running: {label} …", flush=True)
        runs.append(run_one(core, custom, batch, label, (bucket, key), {**search, **extra}, cpu))
        print(f"  {runs[-1]['wall_s']:.1f} s", flush=True)
    base = runs[0]
    for r in runs[1:]:
        if (r["bestParams"], r["metrics"]) != (base["bestParams"], base["metrics"]):
            print(f"MISMATCH: {r['label']} chose {r['bestParams']} {r['metrics']}, "
                  f"one pod {base['bestParams']} {base['metrics']}")
            return 1
    four = next(r for r in runs if r["label"].startswith("4 pods"))
    node = core.read_node("kiln-node").status.capacity.get("cpu")
    result = {"rows": args.rows, "candidates": base["candidates"], "cvFolds": 3, "machine_cpus": os.cpu_count(),
              "node_claims_cpus": node, "loadavg_before": load_before, "loadavg_after": os.getloadavg(), "runs": runs,
              "ratio_one_pod_cpu1_over_4_pods": round(base["wall_s"] / four["wall_s"], 3)}
    cpu4 = next((r for r in runs if r["label"] == "one pod, cpu 4"), None)
    if cpu4:
        result["ratio_one_pod_cpu4_over_4_pods"] = round(cpu4["wall_s"] / four["wall_s"], 3)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nSearch across pods — {base['candidates']} random_forest candidates × 3 folds, {args.rows:,} rows; "
          f"machine {os.cpu_count()} CPUs, node claims {node}")
    print(f"{'run':<18}{'wall s':>9}{'shards s':>10}{'final Job s':>13}{'fit phase s':>13}")
    for r in runs:
        print(f"{r['label']:<18}{r['wall_s']:>9.1f}{r.get('shards_s', 0):>10.0f}{r['final_job_s']:>13.0f}"
              f"{r['fit_phase_s'] or 0:>13.1f}")
    print(f"one pod (cpu 1) / 4 pods: {result['ratio_one_pod_cpu1_over_4_pods']}×"
          + (f"; one pod (cpu 4) / 4 pods: {result['ratio_one_pod_cpu4_over_4_pods']}×" if cpu4 else ""))
    print(f"same best params and test metrics in every run: {base['bestParams']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
