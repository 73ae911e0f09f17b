"""tritonclient[grpc] in a virtualenv of its own, built on first use: .kiln/tritonclient-venv (pinned version).

The gRPC tests call Kiln's server with a client no one here wrote: NVIDIA's tritonclient. It cannot go into the
dev extra: tritonclient 2.73 needs protobuf < 7 (`pip install --dry-run 'tritonclient[grpc]==2.73.0'
protobuf==7.36.2` reports ResolutionImpossible), while onnx/onnxruntime, and the server's generated stubs, run on
protobuf 7. So the client runs in its own venv, as a subprocess (tests/integration/grpc_client_driver.py), and
prints what it saw as JSON. Built like tests/checkov_tool.py: a file lock, built beside and renamed into place.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

VERSION = "2.73.0"
REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".kiln" / "tritonclient-venv"
DRIVER = REPO / "tests" / "integration" / "grpc_client_driver.py"


def _stamp(venv: Path) -> Path:
    return venv / f".tritonclient-{VERSION}"


def python() -> str:
    """The venv's python, with tritonclient[grpc]==VERSION; builds the venv when it is missing or stale."""
    exe = str(VENV / "bin" / "python")
    if _stamp(VENV).exists():
        return exe
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(VENV.parent / ".tritonclient-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _stamp(VENV).exists():
            return exe
        building = VENV.with_name(VENV.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(building)], check=True)
        env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        result = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                                 f"tritonclient[grpc]=={VERSION}"], env=env, capture_output=True, text=True,
                                timeout=900)
        if result.returncode != 0:
            errors = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("WARNING"))
            raise RuntimeError(f"installing tritonclient[grpc]=={VERSION} into {building} failed:\n{errors[-3000:]}")
        shutil.rmtree(VENV, ignore_errors=True)
        building.rename(VENV)
        _stamp(VENV).touch()
    return exe


def drive(target: str, model: str, scenario: dict, timeout: float = 120) -> dict:
    """Run one scenario of grpc_client_driver.py against host:port `target`; its JSON answer."""
    result = subprocess.run([python(), str(DRIVER), target, model], input=json.dumps(scenario),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"grpc client driver failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)
