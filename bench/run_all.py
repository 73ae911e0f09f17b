"""`make bench`: every benchmark in bench/, each with its baseline measured in the same run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
ARGS = {"bench_scale.py": ["--compare"]}  # measures its baseline (the timer-driven operator) in the same run


def main() -> int:
    scripts = sorted(HERE.glob("bench_*.py"))
    failed = []
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        if subprocess.run([sys.executable, str(script), *ARGS.get(script.name, [])]).returncode != 0:
            failed.append(script.name)
    print(f"\nbenchmarks: {len(scripts) - len(failed)} ran, {len(failed)} failed {failed or ''}; results in "
          f"{HERE / 'results'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
