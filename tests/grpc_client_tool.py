"""tritonclient[grpc] in a virtualenv of its own, built on first use: .kiln/tritonclient-venv (pinned version).

The gRPC tests call Kiln's server with a client no one here wrote: NVIDIA's tritonclient. It cannot go into the
dev extra: tritonclient 2.73 needs protobuf < 7 (`pip install --dry-run 'tritonclient[grpc]==2.73.0'
protobuf==7.36.2` reports ResolutionImpossible), while onnx/onnxruntime, and the server's generated stubs, run on
protobuf 7. So the client runs in its own venv, as a subprocess (tests/integration/grpc_client_driver.py), and
prints what it saw as JSON. Built by tests/tool_venv.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import tool_venv

VERSION = "2.73.0"
DRIVER = Path(__file__).resolve().parent / "integration" / "grpc_client_driver.py"


def python() -> str:
    """The venv's python, with tritonclient[grpc]==VERSION; built on first use (tests/tool_venv.py)."""
    return tool_venv.python("tritonclient", f"tritonclient[grpc]=={VERSION}")


def drive(target: str, model: str, scenario: dict, timeout: float = 120) -> dict:
    """Run one scenario of grpc_client_driver.py against host:port `target`; its JSON answer."""
    result = subprocess.run([python(), str(DRIVER), target, model], input=json.dumps(scenario),
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"grpc client driver failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout)
