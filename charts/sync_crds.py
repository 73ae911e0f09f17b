#!/usr/bin/env python3
"""Copy the CRDs from crds/ (the single source of truth) into charts/kiln/crds/, byte for byte.

    python charts/sync_crds.py          # write; prints what changed
    python charts/sync_crds.py --check  # exit 1 (and say which files) when the chart's copy is stale

Never edit charts/kiln/crds/ by hand: tests/unit/test_chart.py fails when it differs from crds/.
Helm installs files in a chart's crds/ directory before the templates and never templates them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "crds"
TARGET = REPO / "charts" / "kiln" / "crds"


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def differences(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    """Human-readable differences between source and target; empty when they are identical."""
    want = {p.name: p.read_bytes() for p in sorted(source.glob("*.yaml"))}
    have = {p.name: p.read_bytes() for p in sorted(target.glob("*")) if p.is_file()} if target.is_dir() else {}
    out = [f"missing in {_rel(target)}: {n}" for n in sorted(want.keys() - have.keys())]
    out += [f"not in {_rel(source)} (stale): {n}" for n in sorted(have.keys() - want.keys())]
    out += [f"differs: {n}" for n in sorted(want.keys() & have.keys()) if want[n] != have[n]]
    return out


def sync(source: Path = SOURCE, target: Path = TARGET) -> list[str]:
    changed = differences(source, target)
    if not changed:
        return []
    target.mkdir(parents=True, exist_ok=True)
    names = {p.name for p in source.glob("*.yaml")}
    for stale in target.iterdir():
        if stale.is_file() and stale.name not in names:
            stale.unlink()
    for name in sorted(names):
        data = (source / name).read_bytes()
        dest = target / name
        if not dest.exists() or dest.read_bytes() != data:
            dest.write_bytes(data)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report; exit 1 when out of date")
    args = parser.parse_args(argv)
    if args.check:
        diff = differences()
        for line in diff:
            print(line)
        if diff:
            print("run: python charts/sync_crds.py", file=sys.stderr)
        return 1 if diff else 0
    changed = sync()
    print("\n".join(changed) if changed else "charts/kiln/crds is up to date with crds/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
