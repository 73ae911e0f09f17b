"""Where the local cluster keeps its state (in the repo, git-ignored) and its binaries (cached)."""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STATE = Path(os.environ.get("KILN_STATE_DIR", REPO / ".kiln"))
CACHE = Path(os.environ.get("KILN_CACHE", Path.home() / ".cache" / "kiln"))
BIN = CACHE / "bin"
KUBECONFIG = STATE / "kubeconfig"
S3_ENV = STATE / "s3.env"
PIDS = STATE / "pids"
LOGS = STATE / "logs"


def venv_bin(name: str) -> str:
    """A console script of the running interpreter's environment (the repo's .venv)."""
    import shutil
    import sys

    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} not found next to {sys.executable} or on PATH")
    return found
