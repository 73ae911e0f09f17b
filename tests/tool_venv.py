"""A test tool in a virtualenv of its own, built on first use under .kiln/ (a pinned requirement).

For tools whose dependencies conflict with the project's pins, so that they cannot go into the dev extra
(checkov, tritonclient). The first call builds the venv; later calls reuse it. A file lock keeps two test
processes from building it at once; the venv is built beside and renamed into place, so a half-built one is
never used, and a stamp names the requirement it holds, so a changed pin rebuilds it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def python(name: str, requirement: str) -> str:
    """The python of .kiln/<name>-venv holding `requirement` (e.g. "checkov==3.3.30"); built when missing."""
    venv = REPO / ".kiln" / f"{name}-venv"
    stamp = venv / f".{re.sub(r'[^A-Za-z0-9.=-]', '_', requirement)}"
    exe = str(venv / "bin" / "python")
    if stamp.exists():
        return exe
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{name}-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return exe
        building = venv.with_name(venv.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
                                env=env, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING"))
            raise RuntimeError(f"installing {requirement} into {building} failed:\n{errors[-3000:]}")
        shutil.rmtree(venv, ignore_errors=True)
        building.rename(venv)  # bin/python and pyvenv.cfg do not name the venv's own directory: it moves whole
        stamp.touch()
    return exe
