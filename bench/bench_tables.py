"""Large tables: a 1,000,000-row x 50-column table as CSV and as Parquet, trained by
`python -m kiln_trainer` as a subprocess; reports the trainer's peak RSS against the in-memory size
of the DataFrame it trains on, the time of each phase (from the card's `timings` and the progress
lines the trainer logs), and rows/s.

    .venv/bin/python bench/bench_tables.py [--rows 1000000] [--algorithm gradient_boosting] [--formats csv,parquet]
    .venv/bin/python bench/bench_tables.py --trainer-path DIR   # another kiln_trainer, e.g. an older commit's

Table: 45 float64 columns (make_classification, 10 informative), 2 categorical (12 and 300
levels, the second folded to spec.features.maxCategories), 1 boolean, 1 integer with 5 % missing,
and the binary target; column names with spaces, `/` and brackets. Workload: gradient_boosting
(HistGradientBoostingClassifier, max_iter 30), export onnx + joblib, missing: median. Peak RSS is
the trainer process's VmHWM (read from /proc until it exits); the highest VmRSS sampled (every
50 ms) within each phase is printed next to that phase's progress line. Baseline: the DataFrame's own size
(`memory_usage(deep=True)`) — the floor for any trainer that holds the table in memory.
Output: a table on stdout, JSON in bench/results/tables.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def make_table(rows: int) -> pd.DataFrame:
    from sklearn.datasets import make_classification

    X, y = make_classification(rows, 45, n_informative=10, random_state=0)
    frame = pd.DataFrame(X, columns=[f"sensor {i} [a/u]" for i in range(45)])
    rng = np.random.default_rng(0)
    frame["region/zone"] = rng.choice(np.array([f"r{i}" for i in range(12)], dtype=object), rows)
    frame["store id"] = rng.choice(np.array([f"store-{i:03d}" for i in range(300)], dtype=object), rows)
    frame["is weekend?"] = rng.random(rows) < 0.3
    visits = rng.integers(0, 50, rows).astype(float)
    visits[rng.random(rows) < 0.05] = np.nan
    frame["visits (n)"] = visits
    frame["target"] = y
    return frame


def rss(pid: int) -> tuple[int, int]:
    """(VmRSS now, VmHWM: the peak so far) in bytes; zeros once the process is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                out[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out.get("VmRSS", 0), out.get("VmHWM", 0)


def phase_peaks(log_text: str, samples: list[tuple[float, int]]) -> dict:
    """Highest sampled RSS within each phase; a phase ends at its progress line's timestamp."""
    import datetime as dt

    ends = []
    for line in log_text.splitlines():
        if "kiln_trainer.training: phase " in line:
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            ends.append((line.split("phase ", 1)[1].split(":", 1)[0], stamp))
    out, start = {}, 0.0
    for name, end in ends:
        inside = [r for t, r in samples if start < t <= end]
        out[name] = max(inside) if inside else None
        start = end
    return out


def train(path: Path, fmt: str, algorithm: str, out: Path, trainer_path: str | None = None) -> dict:
    spec = {"model": "big", "dataset": {"uri": f"file://{path}", "format": fmt, "target": "target"},
            "algorithm": {"name": algorithm, "task": "classification",
                          "params": {"max_iter": 30} if algorithm == "gradient_boosting" else {}},
            "cleaning": {"missing": "median"}, "features": {"maxCategories": 50},
            "export": {"formats": ["onnx", "joblib"]}}
    spec_path = out.with_suffix(".json")
    spec_path.write_text(json.dumps(spec))
    started = time.monotonic()
    err_path = out.with_suffix(".log")
    env = {**os.environ, "KILN_LOG_LEVEL": "INFO"}
    if trainer_path:  # another kiln_trainer (e.g. an older commit's, extracted) first on the path
        env["PYTHONPATH"] = os.pathsep.join(p for p in (trainer_path, env.get("PYTHONPATH")) if p)
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "kiln_trainer", "--spec", str(spec_path), "--output", str(out)],
                                stdout=subprocess.PIPE, stderr=err, env=env)
        peak, samples = 0, []
        while proc.poll() is None:
            now, high = rss(proc.pid)
            peak = max(peak, high)
            samples.append((time.time(), now))
            time.sleep(0.05)
        stdout = proc.stdout.read().decode()
    wall = time.monotonic() - started
    summary = json.loads(stdout.strip().splitlines()[-1])
    if summary["status"] != "Succeeded":
        raise SystemExit(f"training failed: {summary}\n{err_path.read_text()[-3000:]}")
    card = json.loads((out / "modelcard.json").read_text())
    progress = [line.split("kiln_trainer.training: ", 1)[-1] for line in err_path.read_text().splitlines()
                if "phase " in line]
    return {"format": fmt, "bytes": path.stat().st_size, "wall_s": round(wall, 2), "peak_rss": peak,
            "phase_peak_rss": phase_peaks(err_path.read_text(), samples),
            "timings": card["timings"], "progress": progress, "formats": summary["formats"],
            "exportWithheld": summary.get("exportWithheld"), "sha256": card["dataset"]["sha256"],
            "metric": summary["mainMetric"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--algorithm", default="gradient_boosting")
    ap.add_argument("--formats", default="csv,parquet")
    ap.add_argument("--trainer-path", help="a directory holding another kiln_trainer package (a baseline)")
    args = ap.parse_args()
    results = {"rows": args.rows, "algorithm": args.algorithm, "runs": []}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-tables-") as tmp:
        tmp = Path(tmp)
        t0 = time.monotonic()
        frame = make_table(args.rows)
        results["columns"] = frame.shape[1]
        results["dataframe_bytes"] = int(frame.memory_usage(deep=True).sum())
        paths = {}
        if "parquet" in args.formats:
            paths["parquet"] = tmp / "big.parquet"
            frame.to_parquet(paths["parquet"], index=False)
        if "csv" in args.formats:
            import pyarrow as pa
            import pyarrow.csv as pacsv

            paths["csv"] = tmp / "big.csv"
            pacsv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), paths["csv"])
        del frame
        print(f"table {args.rows} x {results['columns']}: DataFrame {results['dataframe_bytes'] / 2**20:.0f} MiB; "
              f"files written in {time.monotonic() - t0:.0f} s", flush=True)
        for fmt, path in paths.items():
            run = train(path, fmt, args.algorithm, tmp / f"out-{fmt}", args.trainer_path)
            results["runs"].append(run)
            ratio = run["peak_rss"] / results["dataframe_bytes"]
            print(f"\n{fmt}: file {run['bytes'] / 2**20:.0f} MiB, wall {run['wall_s']:.1f} s, peak RSS "
                  f"{run['peak_rss'] / 2**20:.0f} MiB = {ratio:.2f}x the DataFrame; formats {run['formats']}, "
                  f"{run['metric']}", flush=True)
            for line in run["progress"]:
                name = line.split("phase ", 1)[-1].split(":", 1)[0]
                high = run["phase_peak_rss"].get(name)
                shown = f"  [RSS up to {high / 2**20:.0f} MiB]" if high else ""
                print(f"  {line}{shown}")
    out = ROOT / "bench" / "results" / ("tables-baseline.json" if args.trainer_path else "tables.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
