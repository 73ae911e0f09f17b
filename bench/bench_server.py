"""Inference server benchmark: Kiln's server vs MLServer vs the floor of a bare ASGI app.

    python bench/bench_server.py [--duration 10] [--quick] [--rounds 3] [--out FILE]
    python bench/bench_server.py --rescore [--out FILE]   # ratios again from a results file, no run

Reference model: RandomForestClassifier(n_estimators=100, random_state=0) on scikit-learn's
breast_cancer (30 features). The SAME payloads (Open Inference Protocol V2 JSON, FP64,
one row, and a 64-row batch) go to, in the same run:

  kiln      python -m kiln_server serving the ONNX export (1 worker process)
  kiln-skl  the same server with --runtime sklearn on the joblib MLServer serves: separates what
            the runtime (ONNX vs scikit-learn) buys from what the server buys
  mlserver  MLServer 1.7 + mlserver-sklearn serving the joblib of the same model
            (its default settings; parallel_workers=1 means one extra inference process)
  floor     a raw ASGI app on uvicorn + httptools that parses the JSON body with orjson and
            answers a constant: what any Python server on this stack cannot beat

Load: Debian's wrk (one thread, a Lua script for the POST), closed loop at concurrency 1
and 8, after a short warm-up; every response must be 2xx or the run is void. All servers
run at once (idle but for the one measured); each point is measured in interleaved rounds
(server A, B, C, A, B, C, ...) and reported as medians, so that load from elsewhere on
the machine hits them alike instead of skewing one. With two or
more CPUs the servers (and their child processes) are pinned to CPU 0 and wrk to CPU 1, so
each server gets exactly one core whatever its process layout.

MLServer is installed on first use into its own venv under .kiln/bench/mlserver-venv
(mlserver==1.7.*, mlserver-sklearn==1.7.*, uvloop<0.22: MLServer 1.7.1 only starts with
uvloop<0.22; scikit-learn pinned to the version that wrote the joblib). If that fails the
table says so and the other servers are still measured.

Output: a table on stdout; JSON in bench/results/server.json (--out elsewhere, e.g. for a short
check with --quick --rounds 1). Ratios per point: throughput, p50 and p99 of kiln against
mlserver and floor (and kiln-skl against mlserver); `target` checks the issue's goal, kiln's
p99 at most P99_TARGET (1/10) of MLServer's at concurrency 8. Every server started is stopped
at the end (SIGTERM, then SIGKILL after 10 s), whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "server.json"
STATE = Path(os.environ.get("KILN_STATE_DIR", REPO / ".kiln")) / "bench"
MLSERVER_VENV = STATE / "mlserver-venv"
MLSERVER_PINS = ["mlserver==1.7.*", "mlserver-sklearn==1.7.*", "uvloop<0.22"]
BATCH_ROWS = 64
CONCURRENCY = (1, 8)
P99_TARGET = 0.1  # kiln p99 / MLServer p99 at concurrency 8

LUA = r"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("KILN_BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'KILN_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), e.connect, e.read, e.write, e.status, e.timeout))
end
"""


# --- the floor: a bare ASGI app --------------------------------------------------------------------


async def floor_app(scope, receive, send):
    """Read the body, parse it, answer a constant."""
    import orjson

    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        msg = await receive()
        body += msg.get("body", b"")
        more = msg.get("more_body", False)
    orjson.loads(body)
    payload = b'{"model_name":"bc","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})


def run_floor(port: int) -> None:
    import uvicorn

    uvicorn.run(floor_app, host="127.0.0.1", port=port, http="httptools", lifespan="off",
                access_log=False, log_level="warning")


# --- the reference model --------------------------------------------------------------------------


def build_model(directory: Path) -> dict:
    """model.onnx + model.joblib of the reference forest, and a modelcard.json by the card contract."""
    import joblib
    import numpy as np
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    from kiln_contract import MODEL_CARD
    from kiln_contract import card as cards
    from kiln_contract.checksums import sha256_file

    data = load_breast_cancer()
    X, y = data.data, data.target
    names = [str(n) for n in data.feature_names]
    model = RandomForestClassifier(n_estimators=100, random_state=0).fit(X, y)
    directory.mkdir(parents=True, exist_ok=True)
    onx = to_onnx(model, initial_types=[("input", FloatTensorType([None, len(names)]))],
                  options={id(model): {"zipmap": False}})
    (directory / "model.onnx").write_bytes(onx.SerializeToString())
    joblib.dump(model, directory / "model.joblib")
    outputs = [o.name for o in onx.graph.output]
    artifacts = [{"file": f, "format": fmt, "sha256": sha256_file(directory / f),
                  "bytes": (directory / f).stat().st_size}
                 for fmt, f in (("onnx", "model.onnx"), ("joblib", "model.joblib"))]
    dists = {}
    for j, n in enumerate(names):
        counts, edges = np.histogram(X[:, j], bins=10)
        dists[n] = {"kind": "numeric", "mean": float(X[:, j].mean()),
                    "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    import sklearn

    card = {
        "metrics": {"accuracy": float(model.score(X, y))}, "gates": [],
        "params": {"n_estimators": 100, "random_state": 0}, "artifacts": artifacts,
        "dataset": {"uri": "builtin:breast_cancer", "sha256": "", "rows": len(X), "columns": len(names) + 1},
        "features": {"names": names, "dtypes": {n: "float64" for n in names}, "categories": {},
                     "distributions": dists, "target": "target", "classes": [0, 1]},
        "libraries": {"python": platform.python_version(), "scikit-learn": sklearn.__version__},
        "spec": {"algorithm": {"name": "random_forest"}}, "timings": {}, "device": {"kind": "cpu"},
        "task": "classification",
        "signature": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, len(names)]}],
                      "outputs": {"label": outputs[0], "probabilities": outputs[1]}},
    }
    (directory / MODEL_CARD).write_bytes(cards.dumps(card))
    return {"X": X, "model": model}


def payload(rows) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                                   "data": [float(v) for r in rows for v in r]}]}).encode()


# --- processes --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(argv: list[str], cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *argv]
    return argv


def pin_running(pid: int, cpus: str) -> bool:
    """Every thread of a running process onto `cpus` (taskset's list, e.g. "1" or "0-1"); False where it cannot
    be done (one CPU, no taskset, the process gone)."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        return False
    return subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True).returncode == 0


class Proc:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name = name
        self.log = log
        self.fh = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.fh.close()

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


def wait_ready(proc: Proc, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited ({proc.proc.returncode}):\n{proc.tail()}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"{proc.name} not ready after {timeout:.0f} s:\n{proc.tail()}")


def check_answer(url: str, body: bytes) -> dict:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def ensure_mlserver() -> Path | None:
    """The MLServer venv's `mlserver` script, installing it on first use; None when that fails."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    import sklearn

    print(f"installing MLServer into {MLSERVER_VENV} (first run only) ...", flush=True)
    STATE.mkdir(parents=True, exist_ok=True)
    log = STATE / "mlserver-install.log"
    try:
        with open(log, "wb") as fh:
            subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=300)
            subprocess.run([str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", *MLSERVER_PINS,
                            f"scikit-learn=={sklearn.__version__}"], check=True, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=1200)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        print(f"MLServer install failed ({exc}); see {log}", file=sys.stderr)
        shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
        return None
    return exe if exe.exists() else None


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, timeout=600,
                       stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    return found


def mlserver_dir(root: Path, model_dir: Path, port: int, parallel_workers: int) -> Path:
    d = root / f"mlserver-{parallel_workers}"
    (d / "bc").mkdir(parents=True, exist_ok=True)
    shutil.copy(model_dir / "model.joblib", d / "bc" / "model.joblib")
    (d / "bc" / "model-settings.json").write_text(json.dumps({
        "name": "bc", "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "1"},
    }))
    (d / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": parallel_workers, "debug": False, "host": "127.0.0.1",
    }))
    return d


# --- load ----------------------------------------------------------------------------------------


def combine(runs: list[dict]) -> dict:
    """Medians over rounds; requests and errors summed."""
    def med(key):
        return statistics.median(r[key] for r in runs)

    return {"rps": med("rps"), "p50_ms": med("p50_ms"), "p90_ms": med("p90_ms"), "p99_ms": med("p99_ms"),
            "requests": sum(r["requests"] for r in runs), "errors": sum(r["errors"] for r in runs),
            "rounds": [{k: r[k] for k in ("rps", "p50_ms", "p99_ms")} for r in runs]}


def wrk_run(wrk: str, lua: Path, body_file: Path, url: str, connections: int, seconds: float) -> dict:
    argv = pinned([wrk, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
                   "-s", str(lua), url], 1)
    out = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "KILN_BENCH_BODY": str(body_file)},
                         timeout=seconds + 60)
    line = next((x for x in out.stdout.splitlines() if x.startswith("KILN_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-500:]} {out.stderr[-500:]}")
    r = json.loads(line.split(" ", 1)[1])
    errors = sum(r["errors"].values())
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "p50_ms": r["p50_us"] / 1000, "p90_ms": r["p90_us"] / 1000, "p99_ms": r["p99_us"] / 1000,
        "requests": r["requests"], "errors": errors, "error_detail": r["errors"],
    }


# --- main ----------------------------------------------------------------------------------------


def run(seconds: float, warmup: float, with_mlserver: bool = True, rounds: int = 3) -> dict:

    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    procs: list[Proc] = []
    results: dict = {"servers": {}, "notes": []}
    try:
        model_dir = work / "bc" / "v1"
        ref = build_model(model_dir)
        X = ref["X"]
        bodies = {"1-row": work / "one.json", "64-rows": work / "batch.json"}
        bodies["1-row"].write_bytes(payload(X[:1].tolist()))
        bodies["64-rows"].write_bytes(payload(X[:BATCH_ROWS].tolist()))
        lua = work / "post.lua"
        lua.write_text(LUA)
        expected = ref["model"].predict(X[:BATCH_ROWS]).tolist()

        servers = []  # (name, argv, ready_url or None, infer_url, cwd)

        def kiln(name, *extra):
            port = free_port()
            servers.append((name, pinned([sys.executable, "-m", "kiln_server", "--model", str(model_dir), "--name",
                                          "bc", "--port", str(port), "--log-level", "warning", *extra], 0),
                            port, f"http://127.0.0.1:{port}/v2/health/ready",
                            f"http://127.0.0.1:{port}/v2/models/bc/infer", None))

        kiln("kiln")
        kiln("kiln-skl", "--runtime", "sklearn", "--allow-unsafe-formats")
        if with_mlserver:
            exe = ensure_mlserver()
            if exe is None:
                results["notes"].append("MLServer could not be installed; not measured")
            else:
                port = free_port()
                d = mlserver_dir(work, model_dir, port, parallel_workers=1)
                servers.append(("mlserver", pinned([str(exe), "start", str(d)], 0), port,
                                f"http://127.0.0.1:{port}/v2/models/bc/ready",
                                f"http://127.0.0.1:{port}/v2/models/bc/infer", d))
        port = free_port()
        servers.append(("floor", pinned([sys.executable, str(Path(__file__).resolve()), "--floor-app",
                                         "--port", str(port)], 0), port, None,
                        f"http://127.0.0.1:{port}/v2/models/bc/infer", None))

        # Start everything, check each answers like the scikit-learn model, then measure point by point,
        # the servers in turn, so that load from elsewhere on the machine hits all of them alike.
        live = {}
        for name, argv, port, ready_url, infer_url, cwd in servers:
            proc = Proc(name, argv, work / f"{name}.log", cwd=cwd)
            procs.append(proc)
            try:
                if ready_url:
                    wait_ready(proc, ready_url, 120)
                else:
                    _wait_port(proc, port, 60)
                answer = check_answer(infer_url, bodies["64-rows"].read_bytes())
                if name != "floor" and [int(v) for v in answer["outputs"][0]["data"]] != expected:
                    raise RuntimeError(f"{name} predicts differently from the scikit-learn model")
                live[name] = infer_url
            except Exception as exc:  # one server failing must not lose the others' numbers
                results["notes"].append(f"{name}: {exc}")
                print(f"{name}: FAILED: {exc}", file=sys.stderr, flush=True)
                proc.stop()
        print(f"measuring {', '.join(live)}: {seconds:.0f} s per point ({rounds} rounds, medians) after "
              f"{warmup:.0f} s warm-up", flush=True)
        for case, body_file in bodies.items():
            for c in CONCURRENCY:
                point = f"{case}/c{c}"
                runs: dict[str, list] = {name: [] for name in live}
                for name, url in live.items():
                    try:
                        wrk_run(wrk, lua, body_file, url, c, warmup)
                    except Exception as exc:
                        results["notes"].append(f"{name} {point} warm-up: {exc}")
                for _ in range(rounds):  # interleaved: a burst of outside load hits one round, not one server
                    for name, url in live.items():
                        try:
                            runs[name].append(wrk_run(wrk, lua, body_file, url, c, seconds / rounds))
                        except Exception as exc:
                            results["notes"].append(f"{name} {point}: {exc}")
                for name, got in runs.items():
                    if not got:
                        continue
                    r = combine(got)
                    results["servers"].setdefault(name, {})[point] = r
                    flag = "" if r["errors"] == 0 else f"  !! {r['errors']} errors"
                    print(f"  {point:<11} {name:<9} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                          f"p99 {r['p99_ms']:6.2f} ms{flag}", flush=True)
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(work, ignore_errors=True)
    rescore(results)
    results["setup"] = {
        "model": "RandomForestClassifier(n_estimators=100, random_state=0), breast_cancer (30 features)",
        "payload": "Open Inference Protocol V2 JSON, FP64, [1, 30] and [64, 30]",
        "load": f"wrk -t1, closed loop, {seconds:.0f} s per point in {rounds} interleaved rounds (medians) "
                f"after {warmup:.0f} s warm-up",
        "pinning": "servers on CPU 0, wrk on CPU 1" if (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
        else "none",
        "cpus": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
        "kiln": "python -m kiln_server, ONNX Runtime, 1 worker process",
        "kiln-skl": "python -m kiln_server --runtime sklearn: the same joblib MLServer loads (runtime vs server)",
        "mlserver": "MLServer 1.7 + mlserver-sklearn, joblib, default settings (parallel_workers=1)",
        "floor": "raw ASGI app, uvicorn + httptools, orjson.loads(body), constant answer",
    }
    return results


def _wait_port(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited:\n{proc.tail()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not listen on {port}")


def ratios(servers: dict) -> dict:
    out = {}
    for point in servers.get("kiln", {}):
        row = {}
        for mine, other in (("kiln", "mlserver"), ("kiln", "floor"), ("kiln-skl", "mlserver")):
            k = servers.get(mine, {}).get(point)
            o = servers.get(other, {}).get(point)
            if k and o and o["rps"] > 0:
                row[f"{mine}/{other} throughput"] = round(k["rps"] / o["rps"], 3)
                row[f"{mine}/{other} p50"] = round(k["p50_ms"] / o["p50_ms"], 3) if o["p50_ms"] else None
                row[f"{mine}/{other} p99"] = round(k["p99_ms"] / o["p99_ms"], 3) if o["p99_ms"] else None
        out[point] = row
    return out


def target(ratio_rows: dict) -> dict:
    """The issue's goal: kiln's p99 at most P99_TARGET of MLServer's at concurrency 8, per payload."""
    points = {}
    for point, row in ratio_rows.items():
        r = row.get("kiln/mlserver p99")
        if point.endswith(f"/c{max(CONCURRENCY)}") and r is not None:
            points[point] = {"kiln/mlserver p99": r, "met": r <= P99_TARGET}
    return {"goal": f"kiln p99 <= {P99_TARGET} x mlserver p99 at concurrency {max(CONCURRENCY)}",
            "points": points, "met": bool(points) and all(p["met"] for p in points.values())}


def rescore(results: dict) -> dict:
    results["ratios"] = ratios(results["servers"])
    results["target"] = target(results["ratios"])
    return results


def table(results: dict) -> str:
    servers = results["servers"]
    points = [f"{case}/c{c}" for case in ("1-row", "64-rows") for c in CONCURRENCY]
    lines = [f"{'point':<12} {'server':<9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"]
    for point in points:
        for name in ("kiln", "kiln-skl", "mlserver", "floor"):
            r = servers.get(name, {}).get(point)
            if r:
                bad = f"  ({r['errors']} errors)" if r["errors"] else ""
                lines.append(f"{point:<12} {name:<9} {r['rps']:9.0f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}{bad}")
        ratio = results["ratios"].get(point, {})
        for mine_other in dict.fromkeys(k.rsplit(" ", 1)[0] for k in ratio):
            values = "  ".join(f"{what} {ratio[f'{mine_other} {what}']:.3f}x" for what in ("throughput", "p50", "p99")
                               if ratio.get(f"{mine_other} {what}") is not None)
            lines.append(f"{'':<12} {mine_other:<20} {values}")
        lines.append("")
    goal = results.get("target")
    if goal and goal["points"]:
        verdicts = ", ".join(f"{p} {v['kiln/mlserver p99']:.3f} ({'met' if v['met'] else 'NOT met'})"
                             for p, v in goal["points"].items())
        lines.append(f"target: {goal['goal']}: {verdicts}")
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per point (2)")
    parser.add_argument("--quick", action="store_true", help="3 s points, 1 s warm-up")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per point; medians (3)")
    parser.add_argument("--no-mlserver", action="store_true", help="skip MLServer")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON (bench/results/server.json)")
    parser.add_argument("--rescore", action="store_true",
                        help="no run: recompute the ratios and the target of the results in --out, print, rewrite")
    parser.add_argument("--floor-app", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_app:
        run_floor(args.port)
        return 0
    out = args.out.resolve()
    if args.rescore:
        results = rescore(json.loads(out.read_text()))
    else:
        seconds, warmup = (3.0, 1.0) if args.quick else (args.duration, args.warmup)
        results = run(seconds, warmup, with_mlserver=not args.no_mlserver, rounds=max(1, args.rounds))
    print()
    print(table(results))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out}")
    return 0 if results["servers"].get("kiln") else 1


if __name__ == "__main__":
    sys.exit(main())
