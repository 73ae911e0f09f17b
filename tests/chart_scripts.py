"""The scripts in charts/ (render, sync_crds, pod_security) as modules for the tests: charts/ is no package."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"kiln_chart_{name}", REPO / "charts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
