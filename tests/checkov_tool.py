"""checkov in a virtualenv of its own, built on first use: .kiln/checkov-venv (pinned version).

checkov pins boto3, packaging and others to versions that conflict with the project's own pins (boto3==1.44.8:
`pip install --dry-run -e '.[dev]' checkov` reports ResolutionImpossible), so it cannot go into the dev extra.
The tests call checkov() and get the path of its executable; the first call builds the venv with the same pip
configuration as the project's (its registry and local wheels), later calls reuse it. A file lock keeps two test
processes from building it at once; the venv is built beside and renamed into place, so a half-built one is
never used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "3.3.30"
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".kiln" / "checkov-venv"


def _stamp(venv: Path) -> Path:
    return venv / f".checkov-{VERSION}"


def checkov() -> list[str]:
    """The command that runs checkov VERSION (the venv's python -m checkov.main: console scripts would carry the
    directory the venv was built in); builds the venv when it is missing or stale."""
    exe = [str(VENV / "bin" / "python"), "-m", "checkov.main"]
    if _stamp(VENV).exists():
        return exe
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".checkov-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamp(VENV).exists():
            return exe
        building = VENV.with_name(VENV.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                                 f"checkov=={VERSION}"], env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING"))
            raise RuntimeError(f"installing checkov=={VERSION} into {building} failed:\n{errors[-3000:]}")
        shutil.rmtree(VENV, ignore_errors=True)
        building.rename(VENV)  # bin/python and pyvenv.cfg do not name the venv's own directory: it moves whole
        _stamp(VENV).touch()
    return exe
