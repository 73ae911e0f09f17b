"""The payload logger's encoder on payloads like real traffic, not only the one bench_grpc.py sends.

bench_grpc.py measures logging with the same 64 rows in every request; Parquet's Snappy then compresses
repeats of one 7.7 KB block, which is cheap. Live traffic does not repeat: rows drawn from a real table
repeat values (Snappy finds matches, slowly), measured values barely repeat (Snappy gives up, quickly).
This bench runs kiln_server.payload_log.PayloadLog.encode, the writer thread's work per object (the store's
chunks turned into columns, then Parquet), on one object of 64-row requests (the breast_cancer features as
float32, as the server's decoder gives them to the ONNX model) of three kinds:

    repeated   the same 64 rows in every request (what bench_grpc.py sends)
    drawn      64 rows drawn at random from the dataset's 569
    measured   drawn rows times a small random factor each (continuous values that do not repeat)

for each codec Parquet offers, against the named baseline **no compression**, in the same run: the writer's
CPU per request (best of --rounds, all threads of this process) and the object's size against the raw
input values. Kiln's codec is `PayloadLog.compression`.

Output: a table on stdout, JSON in bench/results/payload-encode.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "server-image"))
RESULTS = REPO / "bench" / "results" / "payload-encode.json"
CODECS = ("none", "snappy", "lz4", "zstd")  # the first is the baseline
ROWS = 64


class _NoStore:
    def put_object(self, **kw):
        raise AssertionError("the bench only encodes")


def records(kind: str, n: int, rng) -> list:
    from sklearn.datasets import load_breast_cancer

    X = load_breast_cancer().data.astype(np.float32)
    out = []
    for i in range(n):
        if kind == "repeated":
            x = X[:ROWS].copy()
        else:
            x = X[rng.integers(0, len(X), ROWS)]
            if kind == "measured":
                x = x * rng.uniform(0.95, 1.05, x.shape).astype(np.float32)
        label = rng.integers(0, 2, ROWS)
        p1 = rng.uniform(size=ROWS).astype(np.float32)
        probs = np.stack([1 - p1, p1], axis=1)
        out.append((f"bench-{i}", x, label, probs))  # what a request's handler offers
    return out


def chunks(plog, recs: list) -> list:
    """The store's chunks of the records, as the writer thread takes them (the log has none: they are taken here)."""
    for rid, x, label, probs in recs:
        plog.offer("rest-v2", rid, x, ROWS, label, probs, 0.0002)
    out = plog.store.take(1 << 30, 1 << 30)
    assert sum(c.records for c in out) == len(recs) and plog.counts["dropped"] == 0
    return out


def run(n: int, rounds: int) -> dict:
    from kiln_server.payload_log import PayloadLog

    names = [f"f{j}" for j in range(30)]
    plog = PayloadLog("s3://bench/payload-encode", "bc", "1", names, classes=[0, 1], client_factory=_NoStore,
                      writer=False)
    rng = np.random.default_rng(0)
    results: dict = {"kiln_codec": plog.compression, "requests_per_object": n, "rows_per_request": ROWS,
                     "points": {}}
    try:
        for kind in ("repeated", "drawn", "measured"):
            recs = records(kind, n, rng)
            raw = sum(r[1].nbytes for r in recs)
            taken = chunks(plog, recs)
            for codec in CODECS:
                plog.compression = codec
                size = len(plog.encode(taken))  # warm: first-touch page faults, pyarrow's lazy set-up
                best = min(_cpu(plog.encode, taken) for _ in range(rounds))
                results["points"][f"{kind}/{codec}"] = {"us_per_request": best / n * 1e6,
                                                        "object_bytes": size, "raw_input_bytes": raw,
                                                        "compression_ratio": raw / size}
            base = results["points"][f"{kind}/{CODECS[0]}"]["us_per_request"]
            for codec in CODECS:
                point = results["points"][f"{kind}/{codec}"]
                point["cost_vs_none"] = point["us_per_request"] / base
    finally:
        plog.close(0)
    return results


def _cpu(fn, arg) -> float:
    t = time.process_time()
    fn(arg)
    return time.process_time() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=1092, help="requests in the object (1092 x 64 x 30 values: "
                    "one object of BATCH_VALUES, as the server writes at full load)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    res = run(args.requests, args.rounds)
    print("| payload | codec | writer us/request | vs none | object / raw inputs |\n|---|---|---|---|---|")
    for point, r in res["points"].items():
        kind, codec = point.split("/")
        mark = " (Kiln)" if codec == res["kiln_codec"] else ""
        print(f"| {kind} | {codec}{mark} | {r['us_per_request']:.1f} | {r['cost_vs_none']:.2f}x | "
              f"{1 / r['compression_ratio']:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
