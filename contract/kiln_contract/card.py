"""The model card: modelcard.json, written last in a version's directory as its commit marker.

The trainer writes it, the operator registers versions from it, the server verifies
artifacts against it. Keys every card carries:

    metrics    {name: number} on the held-out split
    gates      [{metric, op, value, actual, passed}]
    params     estimator parameters actually used
    artifacts  [{file, format, sha256, bytes}]
    dataset    {uri, sha256, rows, columns}
    features   {names, dtypes, categories, distributions, target, classes}; the trainer adds
               booleans (features made from boolean columns: numeric 0/1, JSON true/false accepted)
               and folded ({column: {levels, kept}}: categorical columns whose rare levels are one)
    libraries  {python, scikit-learn, onnx, onnxruntime, xgboost, ...}
    spec       the validated TrainingJob spec
    timings    {phase: seconds}
    device     {kind: cpu|cuda, ...}
    task       "classification" | "regression"
    signature  how to call the ONNX artifact (absent when there is none):
               {"inputs":  [{"name", "datatype": "FP32"|"BYTES", "shape": [-1, n]}],
                "outputs": {"label": <onnx output name>, "probabilities": <name, classifiers>}}
               All-numeric features: ONE input named "input", FP32 or FP64 [-1, len(features.names)],
               columns in features.names order. With categorical features: one input per
               raw column, shape [-1, 1], FP32/FP64 or BYTES, carrying `"feature": <the raw
               column's name>`; the input's ONNX `name` is onnx_input_name(position, column)
               (the column's own name when it is a plain identifier). Servers answer to the
               `feature` names; a card without `feature` keys names inputs as the columns.
    createdAt  ISO 8601 UTC time the version was trained (CREATED_AT; the one key for it)
    exportWithheld  {format: reason} for every format the spec asked for (spec.export.formats)
               that this version does not carry (WITHHELD_KEY; {} when none): e.g. ONNX that
               cannot be converted or does not match scikit-learn. The operator raises a
               condition from it.
    mainMetric {name, value, lowerIsBetter}: the deciding metric (kiln_contract.metrics)

features.distributions, per raw feature, is the training reference a drift check compares
serving traffic with (the trainer writes it, the server buckets live inputs by its edges):
    numeric      {"kind": "numeric", "count", "missing", "mean", "std", "min", "max",
                  "quantiles": {"p01": …, "p99": …},
                  "histogram": {"edges": [11 ascending], "counts": [10]}}
    categorical  {"kind": "categorical", "count", "missing", "distinct",
                  "frequencies": {value: share, "__other__": share of the rest}}
predictions (optional; cards before issue #14 lack it) is the prediction-drift reference: what the model
predicted on the held-out split (kiln_trainer.prediction_reference):
    classification  {"kind": "categorical", "split": "test", "count", "frequencies": {str(label): share}}
    regression      {"kind": "numeric", "split": "test", ... "histogram": {"edges": [11], "counts": [10]}}
Classifiers without predict_proba export `scores` instead of `probabilities`; servers then
answer with the label only.

features.names are the RAW input columns, in order; the artifact (a whole scikit-learn
Pipeline) applies cleaning-imputation, scaling and encoding itself, so a server feeds
raw values and nothing else.
"""

from __future__ import annotations

import json
import re

REQUIRED_KEYS = (
    "metrics", "gates", "params", "artifacts", "dataset", "features",
    "libraries", "spec", "timings", "device", "task",
)
ARTIFACT_KEYS = ("file", "format", "sha256", "bytes")
# Formats whose loading can execute code; refused unless explicitly allowed.
UNSAFE_FORMATS = frozenset({"joblib", "pkl"})
FORMAT_FILES = {"onnx": "model.onnx", "joblib": "model.joblib", "pkl": "model.pkl"}
CREATED_AT = "createdAt"
WITHHELD_KEY = "exportWithheld"
# Names an ONNX graph of a Pipeline uses for its own outputs and steps: never an input's name.
RESERVED_INPUT_NAMES = frozenset({"input", "label", "probabilities", "variable", "output_label",
                                  "output_probability", "scores"})
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_NOT_IDENTIFIER = re.compile(r"[^A-Za-z0-9_]")


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


def onnx_input_name(position: int, column: str) -> str:
    """The ONNX input name of raw column `column` at `position` (0-based) in features.names.

    The column's own name when it is a plain identifier of at most 64 characters and not reserved;
    otherwise "c<position>_" + the name with every other character replaced by "_", cut to 40
    characters. The position makes names unique even when two columns sanitise alike ("a b", "a/b").
    """
    if _IDENTIFIER.fullmatch(column) and column not in RESERVED_INPUT_NAMES:
        return column
    return f"c{position}_{_NOT_IDENTIFIER.sub('_', column)[:40]}"


def onnx_input_names(columns: list[str]) -> list[str]:
    """onnx_input_name for each column; a plain name that another column's generated name
    happens to equal gets the generated form too, so the names are always distinct."""
    names = [onnx_input_name(i, c) for i, c in enumerate(columns)]
    while len(set(names)) != len(names):
        seen: dict[str, int] = {}
        for i, n in enumerate(names):
            if n in seen:
                # the column keeping its own name gives way to the generated form
                j = i if names[i] == columns[i] else seen[n]
                names[j] = f"c{j}_{_NOT_IDENTIFIER.sub('_', columns[j])[:40]}"
                if names[j] == columns[j]:  # the column is literally named like a generated name
                    names[j] = f"c{j}__{_NOT_IDENTIFIER.sub('_', columns[j])[:39]}"
                break
            seen[n] = i
    return names


def input_features(card: dict) -> dict[str, str]:
    """{ONNX input name: raw column} from a card's signature (identity for older cards)."""
    out = {}
    for inp in (card.get("signature") or {}).get("inputs") or []:
        name = inp.get("name")
        if isinstance(name, str):
            out[name] = inp.get("feature", name)
    return out


def created_at(card: dict) -> str | None:
    """When the version was trained: `createdAt` (cards of early versions wrote `created`)."""
    return card.get(CREATED_AT) or card.get("created")


def withheld_formats(card: dict) -> dict[str, str]:
    """{format: reason} for each requested format this version lacks (see WITHHELD_KEY)."""
    value = card.get(WITHHELD_KEY)
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    # cards written before the key: an export entry with status "unavailable"
    return {fmt: str(e.get("reason", "")) for fmt, e in (card.get("export") or {}).items()
            if isinstance(e, dict) and e.get("status") == "unavailable"}
