"""Share of (table, algorithm) pairs of the table corpus (tests/integration/table_corpus.py) that get
an ONNX artifact when trained through the trainer's CLI (in this process, one run after another).

    .venv/bin/python bench/onnx_share.py [--json out.json] [--trainer-path DIR]

--trainer-path puts another kiln_trainer (e.g. `git show` of an older commit, extracted) first on
sys.path, to measure that one. A run that fails counts as no ONNX, with its reason.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", help="write the per-pair results here")
    ap.add_argument("--trainer-path", help="a directory holding another kiln_trainer package")
    ap.add_argument("--format", default="csv", choices=["csv", "parquet"])
    ap.add_argument("--plain-names", action="store_true",
                    help="rename every column to f<i> (target: y) first: measures the export alone, names apart")
    args = ap.parse_args()
    if args.trainer_path:
        sys.path.insert(0, args.trainer_path)
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    import logging

    import table_corpus
    import yaml

    from kiln_trainer import cli

    logging.disable(logging.WARNING)
    results = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kiln-onnx-share-") as tmp:
        tmp = Path(tmp)
        for table in table_corpus.all_tables():
            if args.plain_names:
                mapping = {c: ("y" if c == table.target else f"f{i}") for i, c in enumerate(table.frame.columns)}
                table.frame = table.frame.rename(columns=mapping)
                table.target = "y"
                for part in table.spec.values():
                    if "dropColumns" in part:
                        part["dropColumns"] = [mapping[c] for c in part["dropColumns"]]
            path = table_corpus.write(table, tmp, args.format)
            for algo in table.algorithms:
                spec = table_corpus.spec_for(table, algo, f"file://{path}", args.format, ("onnx",))
                spec_path = tmp / f"{table.name}-{algo}.yaml"
                spec_path.write_text(yaml.safe_dump(spec))
                out = io.StringIO()
                cli.main(["--spec", str(spec_path), "--output", str(tmp / f"{table.name}-{algo}"),
                          "--log-level", "ERROR"], stdout=out)
                line = json.loads(out.getvalue().strip().splitlines()[-1])
                onnx = line.get("status") == "Succeeded" and "onnx" in line.get("formats", [])
                why = None
                if not onnx:
                    why = line.get("message") or (line.get("exportWithheld") or {}).get("onnx")
                    if why is None and line.get("status") == "Succeeded":
                        card = json.loads((tmp / f"{table.name}-{algo}" / "modelcard.json").read_text())
                        why = (card.get("export", {}).get("onnx") or {}).get("reason")
                results.append({"table": table.name, "algorithm": algo, "status": line.get("status"),
                                "onnx": onnx, "why": (why or "")[:300]})
                print(f"{table.name:28s} {algo:20s} {line.get('status'):10s} onnx={onnx} {(why or '')[:150]}",
                      flush=True)
    got = sum(r["onnx"] for r in results)
    print(f"ONNX artifacts: {got}/{len(results)} = {got / len(results):.1%} of (table, algorithm) pairs "
          f"({time.monotonic() - started:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"pairs": len(results), "onnx": got, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
