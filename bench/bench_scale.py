"""Operator scale benchmark on the local cluster: one burst of many Kiln objects, then the cluster at rest.

In one fresh namespace, applies in one burst (a pool of concurrent clients) N Models, N TrainingJobs (each on
its own Model, its pods held Pending by a schedulerName no scheduler serves, so only the operator is measured) and
N Kiln Deployments (`replicas: {min: 0, max: 2}`, each following one of the Models). Measures:

- apply → Job latency: a Job watch started before the burst records when each Job was first seen; latency is
  that moment minus the moment the TrainingJob's create call returned (p50/p90/p99/max, and how many
  TrainingJobs got no Job within the bound);
- API requests per second at rest, from kube-apiserver's own `apiserver_request_total` counters over a
  window in which the bench makes no request but its two /metrics reads (left out of the figures), split by
  verb and resource, Kiln's resources apart from the rest, and per Kiln object;
- the operator process's RSS (at rest, peak) and CPU (seconds over the burst, % at rest), from /proc.

The baseline is whichever operator design runs: label each run (`--label`) and compare the JSON files.
Writes bench/results/scale-<label>.json and prints a table. Every wait is bounded.

    .venv/bin/python bench/bench_scale.py [--models 500] [--trainingjobs 500] [--deployments 100]
                                          [--window 60] [--label NAME] [--out PATH]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

from bench_operator import GROUP, RESULTS, VERSION, wait
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from prometheus_client.parser import text_string_to_metric_families

from kiln_local import cluster as local
from kiln_local import procs
from kiln_local.paths import KUBECONFIG, REPO

# Training pods are held Pending by a scheduler no one runs: no scheduler looks at them, so none retries them
# (500 FailedScheduling retries come in storms that outweigh everything else at rest). The nodeSelector no node
# has holds them for the timer-driven baseline (--compare), which predates spec.schedulerName. The local
# cluster's operator allows this scheduler name (kiln_local.cluster); a platform's allows what it runs.
HELD_BY = "kiln-bench-held"
UNSCHEDULABLE = {"kiln.dev/bench": "unschedulable"}
JOB_BOUND_S = 180.0      # TrainingJobs without a Job after this long (from the end of the burst) count as missing
SETTLE_BOUND_S = 180.0   # Deployments' status.observedGeneration catching up with their generation
SETTLE_S = 20.0          # quiet period before the at-rest window
CLEANUP_BOUND_S = 120.0
WORKERS = 16
CLK_TCK = os.sysconf("SC_CLK_TCK")

# (group, resource) pairs the operator reads or writes; everything else (leases, endpoints, nodes, ...) is
# the control plane's and the node simulator's own traffic. The operator posts core/v1 events (kopf.event);
# events.k8s.io events at rest are the scheduler's FailedScheduling on the held-Pending training pods.
KILN_RESOURCES = {
    ("kiln.dev", "trainingjobs"), ("kiln.dev", "models"), ("kiln.dev", "deployments"),
    ("batch", "jobs"), ("", "pods"), ("", "services"), ("autoscaling", "horizontalpodautoscalers"),
    ("policy", "poddisruptionbudgets"), ("", "events"), ("apps", "deployments"),
}


# ---------------------------------------------------------------- pure helpers (tests/unit/test_bench_scale.py)

def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    s = sorted(values)
    rank = (len(s) - 1) * q / 100.0
    lo = int(rank)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def latency_summary(created: dict[str, float], seen: dict[str, float]) -> dict:
    """apply → Job latencies in seconds: percentiles over the TrainingJobs that got a Job, and the missing."""
    lat = [seen[name] - t for name, t in created.items() if name in seen]
    out = {"count": len(lat), "missing": sum(1 for name in created if name not in seen)}
    for key, q in (("p50_s", 50), ("p90_s", 90), ("p99_s", 99), ("max_s", 100)):
        v = percentile(lat, q)
        out[key] = round(v, 3) if v is not None else None
    # A backlog shows as latency growing with creation order; a fixed cost as a flat line.
    ordered = [seen[name] - t for name, t in sorted(created.items(), key=lambda kv: kv[1]) if name in seen]
    tenth = max(1, len(ordered) // 10)
    out["p50_by_creation_decile_s"] = [round(percentile(ordered[i:i + tenth], 50), 3)
                                       for i in range(0, len(ordered), tenth)][:10]
    return out


Key = tuple[str, str, str, str]  # verb, group, resource, subresource


def parse_request_totals(text: str) -> dict[Key, float]:
    """Sums `apiserver_request_total` from the apiserver's Prometheus text by (verb, group, resource,
    subresource), over every other label (code, scope, version, component, dry_run)."""
    out: dict[Key, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            lb = sample.labels
            out[(lb.get("verb", ""), lb.get("group", ""), lb.get("resource", ""), lb.get("subresource", ""))] \
                += sample.value
    return dict(out)


def delta(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    """Per-key increase; a key that went down (apiserver restart) counts its new value."""
    out = {}
    for key, v in after.items():
        d = v - before.get(key, 0.0)
        if d < 0:
            d = v
        if d:
            out[key] = d
    return out


def is_own_metrics_read(key: Key) -> bool:
    verb, group, resource, sub = key
    return verb == "GET" and not group and not resource and sub == "/metrics"


def resource_name(group: str, resource: str, subresource: str) -> str:
    name = f"{resource}.{group}" if group else resource or f"nonresource {subresource}"
    return f"{name}/{subresource}" if resource and subresource else name


def split_requests(d: dict[Key, float], seconds: float, objects: int) -> dict:
    """Requests per second over a window, split by verb and resource, Kiln's resources apart from the rest.
    WATCH requests are counted by the apiserver when a watch ends (1.20); they are listed apart and left out
    of the non-WATCH figures. The bench's own /metrics reads are left out of everything."""
    own = sum(v for k, v in d.items() if is_own_metrics_read(k))
    rest = {k: v for k, v in d.items() if not is_own_metrics_read(k)}
    by_verb: dict[str, float] = defaultdict(float)
    by_resource: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    kiln = other = watches = 0.0
    for (verb, group, resource, sub), v in rest.items():
        by_verb[verb] += v
        by_resource[resource_name(group, resource, sub)][verb] += v
        if verb == "WATCH":
            watches += v
            continue
        if (group, resource) in KILN_RESOURCES:
            kiln += v
        else:
            other += v
    total = sum(rest.values())
    non_watch = total - watches

    def rate(x: float) -> float:
        return round(x / seconds, 3) if seconds > 0 else 0.0

    resources = sorted(by_resource.items(), key=lambda kv: -sum(kv[1].values()))
    return {
        "window_s": round(seconds, 2),
        "requests": total,
        "own_metrics_reads_excluded": own,
        "rps_total": rate(total),
        "rps_non_watch": rate(non_watch),
        "watch_requests": watches,
        "rps_kiln_resources": rate(kiln),
        "rps_other_resources": rate(other),
        "rps_per_kiln_object": round(non_watch / seconds / objects, 5) if seconds > 0 and objects else None,
        "rps_kiln_resources_per_kiln_object":
            round(kiln / seconds / objects, 5) if seconds > 0 and objects else None,
        "raw": [[*key, v] for key, v in sorted(rest.items(), key=lambda kv: -kv[1])],
        "by_verb": {verb: rate(v) for verb, v in sorted(by_verb.items(), key=lambda kv: -kv[1])},
        "by_resource": {name: {"rps": rate(sum(verbs.values())), "kiln": _is_kiln_name(name),
                               **{verb: rate(v) for verb, v in sorted(verbs.items(), key=lambda kv: -kv[1])}}
                        for name, verbs in resources},
    }


def _is_kiln_name(name: str) -> bool:
    base = name.split("/")[0]
    resource, _, group = base.partition(".")
    return (group, resource) in KILN_RESOURCES


def proc_stats(pid: int) -> dict:
    """RSS and peak RSS (MB) and CPU seconds (user + system) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0]) / 1024.0  # kB → MB
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3); utime and stime are fields 14 and 15
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return {"rss_mb": mem.get("VmRSS", 0.0), "hwm_mb": mem.get("VmHWM", 0.0), "cpu_s": cpu}


# ---------------------------------------------------------------- cluster side

class Clients(threading.local):
    """One ApiClient per thread: each has its own connection pool."""

    def __init__(self):
        api = client.ApiClient()
        self.custom = client.CustomObjectsApi(api)


def _retry(call, attempts: int = 5):
    for i in range(attempts):
        try:
            return call()
        except ApiException as exc:
            if exc.status in (429, 500, 503, 504) and i < attempts - 1:
                time.sleep(0.2 * 2 ** i)
                continue
            raise


def manifests(n_models: int, n_tj: int, n_dep: int) -> list[list[tuple[str, dict]]]:
    """The burst as tasks; a task's objects are created in order (a Model before its TrainingJob)."""
    def body(kind, name, spec):
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name,
                "labels": {"kiln.dev/bench": "scale"}}, "spec": spec}

    tasks: list[list[tuple[str, dict]]] = []
    deps = [("deployments", body("Deployment", f"d{i:04d}", {
        "model": {"name": f"m{i % max(n_models, 1):04d}"}, "replicas": {"min": 0, "max": 2}}))
        for i in range(n_dep)]
    every = max(1, n_models // max(n_dep, 1))
    for i in range(max(n_models, n_tj)):
        task = []
        if i < n_models:
            task.append(("models", body("Model", f"m{i:04d}", {"promotion": {"policy": "auto"}})))
        if i < n_tj:
            task.append(("trainingjobs", body("TrainingJob", f"t{i:04d}", {
                "model": f"m{i % max(n_models, 1):04d}",
                "dataset": {"uri": "builtin:iris"},
                "algorithm": {"name": "logistic_regression"},
                "schedulerName": HELD_BY,
                "nodeSelector": UNSCHEDULABLE,
                "retries": 0})))
        tasks.append(task)
        if deps and i % every == every - 1:
            tasks.append([deps.pop(0)])
    tasks += [[d] for d in deps]
    return tasks


class JobWatch(threading.Thread):
    """Records when each TrainingJob's Job is first seen (ADDED), from a watch that re-opens until stopped.

    The watch runs in a process of its own and reads the stream raw, stamping each event as its line arrives:
    the Python client's typed watch spends milliseconds deserialising every Job event (each Job is ADDED and
    then MODIFIED a few times) under the GIL it shares with the burst's 16 client threads, so under the burst
    its "first seen" ran late by that bench-side queue, not by anything of the operator's."""

    def __init__(self, ns: str, resource_version: str):
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.errors = 0
        self.stop = threading.Event()
        ctx = multiprocessing.get_context("fork")
        self._recv, send = ctx.Pipe(duplex=False)
        self._stop_child = ctx.Event()
        self._child = ctx.Process(target=_watch_jobs, args=(ns, resource_version, send, self._stop_child),
                                  daemon=True)
        self._child.start()
        send.close()

    def run(self):
        while True:
            try:
                tj, t = self._recv.recv()
            except EOFError:  # the child has ended
                return
            if tj is None:
                self.errors += 1
            elif tj not in self.seen:
                self.seen[tj] = t

    def join(self, timeout: float | None = None):
        if self.stop.is_set():
            self._stop_child.set()
        self._child.join(timeout)
        if self._child.is_alive():
            self._child.kill()
        super().join(timeout)


def _watch_jobs(ns: str, rv: str, send, stop) -> None:
    """The watch process: (TrainingJob name, monotonic time its Job's line arrived) per new Job, (None, 0) per
    error; re-opens (and re-lists on 410) until stop is set."""
    api = client.ApiClient()  # connections of its own, none inherited
    batch = client.BatchV1Api(api)
    selector = "app.kubernetes.io/managed-by=kiln"
    seen: set[str] = set()

    def note(tj: str | None, t: float) -> None:
        if tj and tj not in seen:
            seen.add(tj)
            send.send((tj, t))

    while not stop.is_set():
        try:
            resp = batch.list_namespaced_job(ns, label_selector=selector, resource_version=rv, watch=True,
                                             timeout_seconds=5, allow_watch_bookmarks=False,
                                             _preload_content=False, _request_timeout=15)
            buf = b""
            try:
                for chunk in resp.stream(None, decode_content=False):
                    now = time.monotonic()
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for line in lines:
                        if not line.strip():
                            continue
                        ev = json.loads(line)
                        obj = ev.get("object") or {}
                        if ev.get("type") == "ERROR":
                            if obj.get("code") == 410:  # expired resourceVersion: relist
                                lst = batch.list_namespaced_job(ns, label_selector=selector)
                                t = time.monotonic()
                                for job in lst.items:
                                    note((job.metadata.labels or {}).get("kiln.dev/trainingjob"), t)
                                rv = lst.metadata.resource_version
                            raise RuntimeError(f"watch error: {obj.get('message')}")
                        meta = obj.get("metadata") or {}
                        rv = meta.get("resourceVersion", rv)
                        if ev.get("type") == "ADDED":
                            note((meta.get("labels") or {}).get("kiln.dev/trainingjob"), now)
                    if stop.is_set():
                        break
            finally:
                resp.release_conn()
        except Exception:  # noqa: BLE001 - a dropped connection or an error event: re-open
            send.send((None, 0.0))
            time.sleep(0.5)
    send.close()


class RssSampler(threading.Thread):
    """Samples the operator's RSS from /proc (no API traffic) for the peak over the run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_mb, self.stop = pid, 0.0, threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                self.peak_mb = max(self.peak_mb, proc_stats(self.pid)["rss_mb"])
            except OSError:
                return


def read_metrics(api: client.ApiClient) -> str:
    """kube-apiserver's own Prometheus text (GET /metrics with the admin credentials)."""
    resp = api.call_api("GET", api.configuration.host + "/metrics", header_params={"Accept": "text/plain"},
                        _request_timeout=60)
    if resp.status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {resp.status}")
    return resp.read().decode()


class OperatorRestarted(RuntimeError):
    pass


def operator_stats(pid: int) -> dict:
    """proc_stats of the operator the run started with; a restart in the middle makes the figures void."""
    try:
        return proc_stats(pid)
    except OSError:
        raise OperatorRestarted(f"the operator process {pid} went away during the run (now "
                                f"{procs.running('kiln-operator') or 'none'}): its figures are void") from None


def operator_pid() -> int:
    pid = procs.running("kiln-operator")
    if not pid:
        raise SystemExit("kiln-operator is not running (make cluster-up)")
    return pid


def process_started(pid: int) -> str:
    try:
        return subprocess.run(["ps", "-o", "lstart=", "-p", str(pid)], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _git(where: str, *args: str) -> str:
    try:
        return subprocess.run(["git", "-C", where, *args], capture_output=True, text=True,
                              timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def operator_code(pid: int) -> dict:
    """Where the running operator loaded its code from: its cwd, PYTHONPATH, and that tree's git state."""
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        env = dict(kv.split("=", 1) for kv in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in kv)
    except OSError:
        cwd, env = str(REPO), {}
    return {"cwd": cwd, "pythonpath": env.get("PYTHONPATH", ""), "git_head": _git(cwd, "rev-parse", "--short", "HEAD"),
            "operator_dir_dirty": bool(_git(cwd, "status", "--porcelain", "--", "operator/"))}


def connect() -> None:
    kubeconfig = os.environ.get("KUBECONFIG") or str(KUBECONFIG)
    if not procs.running("kube-apiserver") or not procs.running("kiln-operator"):
        local.up()
    config.load_kube_config(kubeconfig)
    host = urlparse(client.Configuration.get_default_copy().host).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"{kubeconfig} points at {host}, not the local cluster on loopback")


def setup_namespace(core: client.CoreV1Api, ns: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=ns, labels={"kiln.dev/bench": "scale"})))
    try:
        local.copy_s3_secrets(core, ns)
    except ApiException:
        pass
    wait(lambda: any(sa.metadata.name == "default" and sa.secrets
                     for sa in core.list_namespaced_service_account(ns).items), 60, "service account")


def cleanup(core: client.CoreV1Api, ns: str) -> float | None:
    """Deletes the namespace and waits, bounded; returns the seconds it took or None when it outlasted the bound."""
    t0 = time.monotonic()
    try:
        core.delete_namespace(ns, body=client.V1DeleteOptions(propagation_policy="Background"))
    except ApiException as exc:
        if exc.status == 404:
            return 0.0
        raise
    deadline = t0 + CLEANUP_BOUND_S
    while time.monotonic() < deadline:
        try:
            core.read_namespace(ns)
        except ApiException as exc:
            if exc.status == 404:
                return round(time.monotonic() - t0, 1)
        time.sleep(2)
    return None


def settled(custom: client.CustomObjectsApi, ns: str, n_dep: int) -> int:
    """How many Kiln Deployments have status.observedGeneration == metadata.generation."""
    items = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "deployments",
                                                 label_selector="kiln.dev/bench=scale")["items"]
    return sum(1 for d in items
               if (d.get("status") or {}).get("observedGeneration") == d["metadata"].get("generation"))


def pods_created(core: client.CoreV1Api, ns: str) -> int:
    """Training pods the Job controller has made so far (it creates them at its own rate limit)."""
    return len(core.list_namespaced_pod(ns, label_selector="app.kubernetes.io/managed-by=kiln").items)


OPERATOR_METRICS = os.environ.get("KILN_OPERATOR_METRICS", "http://127.0.0.1:18091/metrics")


def operator_requests() -> dict[str, float] | None:
    """The operator's own count of its API requests by verb (kiln_operator_api_requests_total), or None
    when the running operator does not export it (the timers baseline)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(OPERATOR_METRICS, timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kiln_operator_api_requests_total":
                verb = sample.labels.get("verb", "")
                out[verb] = out.get(verb, 0.0) + sample.value
    return out


def run(args) -> dict:
    connect()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    pid = operator_pid()
    objects = args.models + args.trainingjobs + args.deployments
    out: dict = {
        "label": args.label, "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": {"models": args.models, "trainingjobs": args.trainingjobs, "deployments": args.deployments,
                   "kiln_objects": objects, "window_s": args.window, "settle_s": SETTLE_S, "workers": WORKERS,
                   "job_bound_s": JOB_BOUND_S},
        "operator": {"pid": pid, "started": process_started(pid), **operator_code(pid)},
    }
    ns = f"bench-scale-{uuid.uuid4().hex[:6]}"
    setup_namespace(core, ns)
    out["namespace"] = ns
    sampler = RssSampler(pid)
    jobs: JobWatch | None = None
    try:
        rv = client.BatchV1Api().list_namespaced_job(ns).metadata.resource_version
        jobs = JobWatch(ns, rv)  # forks: before any other thread of ours runs
        jobs.start()
        sampler.start()
        time.sleep(1.0)  # the watch is open before the first create

        created: dict[str, float] = {}
        errors: list[str] = []
        lock = threading.Lock()
        clients = Clients()

        def apply(task):
            for plural, body in task:
                try:
                    _retry(lambda p=plural, b=body: clients.custom.create_namespaced_custom_object(
                        GROUP, VERSION, ns, p, b))
                except ApiException as exc:
                    with lock:
                        errors.append(f"{plural}/{body['metadata']['name']}: {exc.status} {exc.reason}")
                    return
                if plural == "trainingjobs":
                    t = time.monotonic()
                    with lock:
                        created[body["metadata"]["name"]] = t

        tasks = manifests(args.models, args.trainingjobs, args.deployments)
        before = operator_stats(pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(WORKERS) as pool:
            list(pool.map(apply, tasks))
        burst_s = time.monotonic() - t0
        out["burst"] = {"apply_s": round(burst_s, 2), "objects_per_s": round(objects / burst_s, 1),
                        "create_errors": len(errors), "create_error_samples": errors[:5]}
        print(f"[scale] applied {objects} objects in {burst_s:.1f}s ({len(errors)} errors); waiting for Jobs",
              flush=True)

        # every TrainingJob's Job, bounded
        deadline = time.monotonic() + JOB_BOUND_S
        while time.monotonic() < deadline and len(set(created) & set(jobs.seen)) < len(created):
            time.sleep(1.0)
        jobs_done = time.monotonic()
        out["apply_to_job"] = latency_summary(created, dict(jobs.seen))
        out["apply_to_job"]["all_seen_after_burst_start_s"] = round(jobs_done - t0, 2)
        print(f"[scale] Jobs: {out['apply_to_job']['count']}/{len(created)} seen; waiting for Deployments",
              flush=True)

        # Deployments settled, bounded
        n_settled = 0
        deadline = time.monotonic() + SETTLE_BOUND_S
        while time.monotonic() < deadline:
            n_settled = settled(custom, ns, args.deployments)
            if n_settled >= args.deployments:
                break
            time.sleep(2.0)
        settled_s = time.monotonic() - t0
        # every training pod made (the Job controller works through its queue at its own rate), bounded
        n_pods = 0
        while time.monotonic() < deadline:
            n_pods = pods_created(core, ns)
            if n_pods >= args.trainingjobs:
                break
            time.sleep(2.0)
        busy_s = time.monotonic() - t0
        after = operator_stats(pid)
        # apart: the Job controller's pod creation (its own rate limit) used to be reported as the Deployments'
        out["deployments_settled"] = {"settled": n_settled, "of": args.deployments,
                                      "after_burst_start_s": round(settled_s, 2)}
        out["training_pods_created"] = {"created": n_pods, "of": args.trainingjobs,
                                        "after_burst_start_s": round(busy_s, 2)}
        out["operator"]["cpu_s_burst"] = round(after["cpu_s"] - before["cpu_s"], 2)
        out["operator"]["burst_phase_s"] = round(busy_s, 2)
        out["operator"]["cpu_pct_burst"] = round(100 * (after["cpu_s"] - before["cpu_s"]) / busy_s, 1)

        # quiet: stop our own watch before the settle period, so nothing of ours is open during the window
        jobs.stop.set()
        jobs.join(timeout=20)
        out["apply_to_job"]["watch_errors"] = jobs.errors
        print(f"[scale] {n_settled}/{args.deployments} Deployments settled; {SETTLE_S:.0f}s settle, then a "
              f"{args.window:.0f}s window at rest", flush=True)
        time.sleep(SETTLE_S)

        api = client.ApiClient()
        s0 = operator_stats(pid)
        o0 = operator_requests()
        m0 = read_metrics(api)
        w0 = time.monotonic()
        time.sleep(args.window)
        s1 = operator_stats(pid)
        w1 = time.monotonic()
        m1 = read_metrics(api)
        o1 = operator_requests()
        seconds = w1 - w0
        out["at_rest"] = split_requests(delta(parse_request_totals(m0), parse_request_totals(m1)), seconds, objects)
        if o0 is not None and o1 is not None:
            own = {verb: round((o1.get(verb, 0.0) - o0.get(verb, 0.0)) / seconds, 4) for verb in o1}
            out["at_rest"]["operator_own_rps"] = round(sum(own.values()), 4)
            out["at_rest"]["operator_own_rps_per_kiln_object"] = round(sum(own.values()) / objects, 5)
            out["at_rest"]["operator_own_by_verb"] = own
        out["operator"].update({
            "rss_mb_rest": round(s1["rss_mb"], 1),
            "peak_rss_mb_sampled": round(max(sampler.peak_mb, s1["rss_mb"]), 1),
            "vmhwm_mb": round(s1["hwm_mb"], 1),  # peak over the process's life, not only this run
            "cpu_pct_rest": round(100 * (s1["cpu_s"] - s0["cpu_s"]) / seconds, 1),
        })
        reasons: dict[str, int] = defaultdict(int)
        for event in core.list_namespaced_event(ns).items:
            if event.involved_object.api_version and event.involved_object.api_version.startswith("kiln.dev/"):
                reasons[f"{event.involved_object.kind}/{event.reason}"] += event.count or 1
        out["kiln_events"] = dict(sorted(reasons.items()))
    finally:
        sampler.stop.set()
        if jobs is not None:
            jobs.stop.set()
            jobs.join(timeout=10)
        print(f"[scale] deleting namespace {ns} (bounded {CLEANUP_BOUND_S:.0f}s)", flush=True)
        out["cleanup_s"] = cleanup(core, ns)
    return out


def table(out: dict) -> str:
    c, a, r, o = out["config"], out["apply_to_job"], out["at_rest"], out["operator"]

    def s(v):
        return f"{v:.2f} s" if v is not None else "—"

    lines = [
        f"\nKiln operator at scale ({out['label']}): {c['models']} Models, {c['trainingjobs']} TrainingJobs, "
        f"{c['deployments']} Deployments = {c['kiln_objects']} objects; operator pid {o['pid']} "
        f"started {o['started']}",
        f"  burst applied in                   {out['burst']['apply_s']:8.2f} s "
        f"({out['burst']['objects_per_s']} objects/s, {out['burst']['create_errors']} errors)",
        f"  apply → Job p50 / p90 / p99 / max  {s(a['p50_s'])} / {s(a['p90_s'])} / {s(a['p99_s'])} / "
        f"{s(a['max_s'])}; missing after {c['job_bound_s']:.0f} s: {a['missing']}",
        f"  Deployments settled                {out['deployments_settled']['settled']}/"
        f"{out['deployments_settled']['of']} after {out['deployments_settled']['after_burst_start_s']} s",
        f"  training pods created              {out['training_pods_created']['created']}/"
        f"{out['training_pods_created']['of']} after {out['training_pods_created']['after_burst_start_s']} s "
        "(the Job controller's rate)",
        f"  at rest, API requests/s            {r['rps_non_watch']:8.2f} non-WATCH "
        f"({r['rps_kiln_resources']:.2f} on Kiln's resources, {r['rps_other_resources']:.2f} other; "
        f"{r['watch_requests']:.0f} WATCH ended) over {r['window_s']:.0f} s",
        f"  per Kiln object                    {r['rps_per_kiln_object']:8.4f} req/s "
        f"({r['rps_kiln_resources_per_kiln_object']:.4f} on Kiln's resources)",
        "  by verb                            " + ", ".join(f"{k} {v}" for k, v in r["by_verb"].items()),
        "  the operator's own requests        " + (
            f"{r['operator_own_rps']:8.4f} req/s = {r['operator_own_rps_per_kiln_object']:.5f} per Kiln object "
            f"(its kiln_operator_api_requests_total; kopf's watches apart)" if "operator_own_rps" in r
            else "     — (this operator exports no request counter)"),
        "  top resources (req/s)              " + ", ".join(
            f"{name} {v['rps']}" for name, v in list(r["by_resource"].items())[:8]),
        f"  operator RSS                       {o['rss_mb_rest']:8.1f} MB at rest, peak "
        f"{o['peak_rss_mb_sampled']:.1f} MB sampled (VmHWM {o['vmhwm_mb']:.1f} MB)",
        f"  operator CPU                       {o['cpu_s_burst']:8.2f} s over the {o['burst_phase_s']:.0f} s burst "
        f"phase ({o['cpu_pct_burst']} %), {o['cpu_pct_rest']} % at rest",
        f"  namespace cleanup                  {s(out['cleanup_s']) if out['cleanup_s'] is not None else 'over bound'}",
    ]
    return "\n".join(lines)


BASELINE_REF = "3b7b42b"  # the last commit of the timer-driven operator (one kopf timer per object, 1-3 s)
SMALL = {"models": 100, "trainingjobs": 100, "deployments": 20}  # what the baseline can take on 2 cores


def baseline_tree(ref: str) -> Path:
    """A git worktree of ref under .kiln/, made once: the operator's code as it was."""
    tree = REPO / ".kiln" / f"baseline-{ref}"
    if not (tree / "operator").is_dir():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(tree), ref],
                       check=True, capture_output=True, text=True)
    return tree


def swap_operator(source: Path | None) -> None:
    """Restart the local cluster's operator from source (a baseline tree), or from the working tree."""
    from kiln_local import s3

    procs.stop("kiln-operator", grace=20)
    local.start_operator(s3.read_env(), source=source)


def compare(args) -> int:
    """make bench: the current operator at full and at reduced scale, then the timers baseline at reduced
    scale, its code from BASELINE_REF, each under the same bench; the current operator is restored."""
    runs = [("event-driven", {"models": args.models, "trainingjobs": args.trainingjobs,
                              "deployments": args.deployments}, None),
            ("event-driven-small", SMALL, None),
            ("timers-baseline", SMALL, baseline_tree(BASELINE_REF))]
    results = {}
    try:
        for label, scale, source in runs:
            if source is not None:
                swap_operator(source)
            one = argparse.Namespace(**{**vars(args), **scale, "label": label})
            results[label] = run(one)
            (RESULTS / f"scale-{label}.json").write_text(json.dumps(results[label], indent=2))
            print(table(results[label]), flush=True)
    finally:
        if any(source is not None for _, _, source in runs):
            swap_operator(None)
    small, base = results["event-driven-small"], results["timers-baseline"]
    print(f"\nsame scale ({sum(SMALL.values())} objects): apply→Job p50 {small['apply_to_job']['p50_s']} s vs "
          f"{base['apply_to_job']['p50_s']} s; at rest {small['at_rest']['rps_per_kiln_object']} vs "
          f"{base['at_rest']['rps_per_kiln_object']} req/s per object; operator CPU at rest "
          f"{small['operator']['cpu_pct_rest']} % vs {base['operator']['cpu_pct_rest']} %")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=500)
    p.add_argument("--trainingjobs", type=int, default=500)
    p.add_argument("--deployments", type=int, default=100)
    p.add_argument("--window", type=float, default=60.0, help="seconds of the at-rest window")
    p.add_argument("--label", default="current", help="name of this configuration, e.g. event-driven")
    p.add_argument("--out", type=Path, help="default bench/results/scale-<label>.json")
    p.add_argument("--compare", action="store_true",
                   help=f"also measure the timers baseline (commit {BASELINE_REF}) and the current operator at "
                        f"{sum(SMALL.values())} objects; what make bench runs")
    args = p.parse_args(argv)
    if args.trainingjobs > args.models:
        p.error("--trainingjobs may not exceed --models (each TrainingJob has its own Model)")
    try:
        if args.compare:
            return compare(args)
        out = run(args)
    except OperatorRestarted as exc:
        print(f"[scale] {exc}", file=sys.stderr)
        return 1
    path = args.out or RESULTS / f"scale-{args.label}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(table(out))
    print(f"  → {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
