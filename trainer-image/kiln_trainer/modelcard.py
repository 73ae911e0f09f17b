"""Helpers for the model card (its keys are kiln_contract.card's): library versions, a
strict-JSON view of numpy values, and the artifact entries with their checksums."""

from __future__ import annotations

import math
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

import kiln_trainer
from kiln_contract import card as contract_card
from kiln_contract.checksums import sha256_file

LIBRARIES = ("scikit-learn", "onnx", "onnxruntime", "skl2onnx", "xgboost", "onnxmltools", "numpy", "pandas",
             "scipy", "joblib")


def libraries() -> dict:
    out = {"python": platform.python_version(), "kiln-trainer": kiln_trainer.__version__}
    for dist in LIBRARIES:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def jsonable(value):
    """Plain JSON values: numpy scalars and arrays unwrapped, NaN/inf as null, objects as repr."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return repr(value)


def artifact_entry(path: Path, fmt: str) -> dict:
    return {"file": path.name, "format": fmt, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def primary(artifacts: list[dict]) -> dict | None:
    """The artifact a server loads by default: ONNX where present, else joblib, else pkl."""
    for fmt in ("onnx", "joblib", "pkl"):
        for art in artifacts:
            if art["format"] == fmt:
                return art
    return None


def encode(card: dict) -> bytes:
    return contract_card.dumps(jsonable(card))
