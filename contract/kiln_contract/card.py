"""The model card: modelcard.json, written last in a version's directory as its commit marker.

The trainer writes it, the operator registers versions from it, the server verifies
artifacts against it. Keys every card carries:

    metrics    {name: number} on the held-out split
    gates      [{metric, op, value, actual, passed}]
    params     estimator parameters actually used
    artifacts  [{file, format, sha256, bytes}]
    dataset    {uri, sha256, rows, columns}
    features   {names, dtypes, categories, distributions, target, classes}
    libraries  {python, scikit-learn, onnx, onnxruntime, xgboost, ...}
    spec       the validated TrainingJob spec
    timings    {phase: seconds}
    device     {kind: cpu|cuda, ...}
    task       "classification" | "regression"
    signature  how to call the ONNX artifact (absent when there is none):
               {"inputs":  [{"name", "datatype": "FP32"|"BYTES", "shape": [-1, n]}],
                "outputs": {"label": <onnx output name>, "probabilities": <name, classifiers>}}
               All-numeric features: ONE input named "input", FP32 [-1, len(features.names)],
               columns in features.names order. With categorical features: one input per
               raw column, named as the column, shape [-1, 1], FP32 or BYTES.

features.distributions, per raw feature, is the training reference a drift check compares
serving traffic with (the trainer writes it, the server buckets live inputs by its edges):
    numeric      {"kind": "numeric", "count", "missing", "mean", "std", "min", "max",
                  "quantiles": {"p01": …, "p99": …},
                  "histogram": {"edges": [11 ascending], "counts": [10]}}
    categorical  {"kind": "categorical", "count", "missing", "distinct",
                  "frequencies": {value: share, "__other__": share of the rest}}
Classifiers without predict_proba export `scores` instead of `probabilities`; servers then
answer with the label only.

features.names are the RAW input columns, in order; the artifact (a whole scikit-learn
Pipeline) applies cleaning-imputation, scaling and encoding itself, so a server feeds
raw values and nothing else.
"""

from __future__ import annotations

import json

REQUIRED_KEYS = (
    "metrics", "gates", "params", "artifacts", "dataset", "features",
    "libraries", "spec", "timings", "device", "task",
)
ARTIFACT_KEYS = ("file", "format", "sha256", "bytes")
# Formats whose loading can execute code; refused unless explicitly allowed.
UNSAFE_FORMATS = frozenset({"joblib", "pkl"})
FORMAT_FILES = {"onnx": "model.onnx", "joblib": "model.joblib", "pkl": "model.pkl"}


class CardError(ValueError):
    pass


def check(card: dict) -> dict:
    """Raise CardError when a card lacks what the contract promises; return it otherwise."""
    missing = [k for k in REQUIRED_KEYS if k not in card]
    if missing:
        raise CardError(f"model card lacks {', '.join(missing)}")
    for i, art in enumerate(card["artifacts"]):
        lacking = [k for k in ARTIFACT_KEYS if k not in art]
        if lacking:
            raise CardError(f"artifacts[{i}] lacks {', '.join(lacking)}")
    return card


def loads(data: bytes | str) -> dict:
    try:
        return check(json.loads(data))
    except json.JSONDecodeError as exc:
        raise CardError(f"model card is not JSON: {exc}") from exc


def dumps(card: dict) -> bytes:
    return json.dumps(check(card), indent=2, sort_keys=True, default=str).encode()


def artifact(card: dict, fmt: str) -> dict | None:
    return next((a for a in card["artifacts"] if a["format"] == fmt), None)


def gates_passed(card: dict) -> bool:
    return all(g.get("passed") for g in card.get("gates", []))
