"""The two inference runtimes: ONNX Runtime (default, safe to load) and scikit-learn (fallback).

Both take a batch in one of two layouts and return (labels [N], probabilities [N, C] or None):

* a matrix: one float array [N, n_features] (models whose features are all numeric);
* columns: a list of n_features 1-D arrays, floats or strings (models with categorical features).

Each process runs one inference thread: ONNX Runtime gets intra_op_num_threads=1,
inter_op_num_threads=1 and sequential execution; scaling is by worker processes.
"""

from __future__ import annotations

import io
import logging
import os
import time

import numpy as np

from kiln_server.errors import StartupError
from kiln_server.schema import Schema, booleans_from_card, card_features, categorical_from_card, v2_datatype

log = logging.getLogger("kiln_server")

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
    "tensor(string)": np.object_,
}
_LABEL_NAMES = ("label", "output_label", "variable")
_PROBA_NAMES = ("probabilities", "output_probability")


class OnnxRuntime:
    name = "onnx"
    platform = "onnxruntime_onnx"

    def __init__(self, data: bytes, card: dict):
        # ONNX Runtime >= 1.29 on Linux keeps a device id under ~/.cache and uploads usage events
        # unless this is set before it initialises; a model server has no business doing either.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types
            raise StartupError(f"ONNX Runtime cannot load the model: {exc}") from exc
        names, _, _ = card_features(card)
        if not names:
            raise StartupError("the model card lists no features.names")
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        signature = card.get("signature") or self._default_signature(inputs, outputs)
        sig_inputs = [i["name"] for i in signature.get("inputs") or []]
        unknown = [n for n in sig_inputs if n not in inputs]
        if unknown or not sig_inputs:
            raise StartupError(
                f"card signature inputs {sig_inputs} do not match the ONNX graph's inputs {list(inputs)}"
            )
        # Which raw column each ONNX input carries: the signature's `feature` (ONNX names may be
        # sanitised forms of the user's column names), else the input's own name (older cards).
        feature_of = {i["name"]: str(i.get("feature", i["name"])) for i in signature.get("inputs") or []}
        fed = [feature_of[n] for n in sig_inputs]
        self.onnx_inputs = {}
        if sorted(fed) == sorted(names) and (len(names) > 1 or sig_inputs[0] != "input"):
            # One [-1, 1] input per raw column; strings for categorical columns.
            self.single = False
            onnx_of = {f: n for n, f in feature_of.items()}
            self.onnx_names = [onnx_of[f] for f in names]
            self.onnx_inputs = {f: o for f, o in zip(names, self.onnx_names, strict=True) if f != o}
            self.col_dtypes = [_ORT_TYPES.get(inputs[o].type) for o in self.onnx_names]
            if any(dt is None for dt in self.col_dtypes):
                raise StartupError(f"ONNX inputs of unsupported types: {[inputs[o].type for o in self.onnx_names]}")
            categorical = [dt is np.object_ for dt in self.col_dtypes]
            numeric = {dt for dt in self.col_dtypes if dt is not np.object_}
            # float64 inputs are fed float64 (decoded as such); float32 otherwise
            float_dtype = np.dtype(np.float64 if numeric == {np.float64} else np.float32)
        elif len(sig_inputs) == 1:
            self.single = True
            self.input_name = sig_inputs[0]
            meta = inputs[self.input_name]
            if meta.type not in ("tensor(float)", "tensor(double)"):
                raise StartupError(f"ONNX input {self.input_name!r} is {meta.type}; a numeric matrix was expected")
            width = meta.shape[-1] if meta.shape else None
            if isinstance(width, int) and width != len(names):
                raise StartupError(
                    f"ONNX input {self.input_name!r} takes {width} columns but the card lists "
                    f"{len(names)} features"
                )
            categorical = [False] * len(names)
            float_dtype = np.dtype(_ORT_TYPES[meta.type])
        else:
            raise StartupError(
                f"card signature inputs {sig_inputs} are neither one matrix nor one input per feature {names}"
            )
        sig_outputs = signature.get("outputs") or {}
        label = sig_outputs.get("label")
        proba = sig_outputs.get("probabilities") if card.get("task") == "classification" else None
        for role, out in (("label", label), ("probabilities", proba)):
            if out is None:
                continue
            if out not in outputs:
                raise StartupError(f"card signature output {role}={out!r} is not an output of the ONNX graph")
            if not outputs[out].type.startswith("tensor("):
                raise StartupError(
                    f"ONNX output {out!r} is {outputs[out].type}; export classifiers with zipmap disabled"
                )
        if label is None:
            raise StartupError("card signature names no label output")
        self.output_names = [label] + ([proba] if proba else [])
        self.schema = Schema(
            names=names,
            categorical=categorical,
            task=card.get("task", "classification"),
            classes=(card.get("features") or {}).get("classes"),
            float_dtype=float_dtype,
            onnx_inputs=self.onnx_inputs,
            booleans=booleans_from_card(card),
        )

    @staticmethod
    def _default_signature(inputs: dict, outputs: dict) -> dict:
        label = next((n for n in _LABEL_NAMES if n in outputs), next(iter(outputs)))
        proba = next((n for n in _PROBA_NAMES if n in outputs), None)
        sig = {"inputs": [{"name": n} for n in inputs], "outputs": {"label": label}}
        if proba:
            sig["outputs"]["probabilities"] = proba
        return sig

    def predict(self, x):
        if self.single:
            feed = {self.input_name: x}
        else:
            cols = x.T if isinstance(x, np.ndarray) else x
            feed = {
                n: np.asarray(c, dtype=dt).reshape(-1, 1)
                for n, c, dt in zip(self.onnx_names, cols, self.col_dtypes, strict=True)
            }
        outs = self.session.run(self.output_names, feed)
        label = outs[0]
        if label.ndim == 2 and label.shape[1] == 1:
            label = label.reshape(-1)
        return label, (outs[1] if len(outs) > 1 else None)


class SklearnRuntime:
    name = "sklearn"
    platform = "scikit-learn"

    def __init__(self, data: bytes, fmt: str, card: dict):
        try:
            if fmt == "joblib":
                import joblib

                model = joblib.load(io.BytesIO(data))
            else:
                import pickle

                model = pickle.loads(data)  # noqa: S301 - allowed explicitly by --allow-unsafe-formats
        except Exception as exc:
            raise StartupError(f"cannot load the {fmt} artifact: {exc}") from exc
        if not hasattr(model, "predict"):
            raise StartupError(f"the {fmt} artifact holds a {type(model).__name__}, which has no predict()")
        names, _, _ = card_features(card)
        if not names:
            raise StartupError("the model card lists no features.names")
        self.model = model
        self.frame = hasattr(model, "feature_names_in_")
        if self.frame:
            import pandas  # noqa: F401 - fail at startup, not at the first request

        task = card.get("task", "classification")
        self.proba = task == "classification" and hasattr(model, "predict_proba")
        # Trees and forests compute predict() as classes_[argmax(predict_proba())]: do that once, not twice.
        self.label_from_proba = self.proba and _argmax_classifier(model)
        classes = getattr(model, "classes_", None)
        # xgboost on labels that are not 0..n-1: the artifact predicts indices into features.classes
        # (the card's export.<format>.predictsClassIndex); answer with the labels, as the ONNX graph does.
        self.index_labels = None
        card_classes = (card.get("features") or {}).get("classes")
        if ((card.get("export") or {}).get(fmt) or {}).get("predictsClassIndex") and card_classes:
            self.index_labels = np.asarray(card_classes)
            classes = self.index_labels
        self.schema = Schema(
            names=names,
            categorical=categorical_from_card(card),
            task=task,
            classes=list(classes) if classes is not None else (card.get("features") or {}).get("classes"),
            float_dtype=np.dtype(np.float64),
            booleans=booleans_from_card(card),
        )

    def _input(self, x):
        names = self.schema.names
        if self.frame:
            import pandas as pd

            if isinstance(x, np.ndarray):
                return pd.DataFrame(x, columns=names)
            return pd.DataFrame(dict(zip(names, x, strict=True)))
        if isinstance(x, np.ndarray):
            return x
        return np.column_stack([np.asarray(c, dtype=object) for c in x])

    def predict(self, x):
        X = self._input(x)
        if self.label_from_proba:
            probs = np.asarray(self.model.predict_proba(X))
            return np.asarray(self.model.classes_).take(np.argmax(probs, axis=1)), probs
        label = np.asarray(self.model.predict(X))
        if label.ndim == 2 and label.shape[1] == 1:
            label = label.reshape(-1)
        if self.index_labels is not None:
            label = self.index_labels.take(label.astype(np.int64))
        probs = np.asarray(self.model.predict_proba(X)) if self.proba else None
        return label, probs


def _argmax_classifier(model) -> bool:
    """Is the (final) estimator one whose predict() is exactly argmax of predict_proba()?"""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    try:
        from sklearn.ensemble._forest import ForestClassifier
        from sklearn.tree import BaseDecisionTree
    except ImportError:
        return False
    classes = getattr(model, "classes_", None)
    single_output = classes is not None and np.asarray(classes).ndim == 1
    return single_output and isinstance(final, ForestClassifier | BaseDecisionTree) and hasattr(final, "classes_")


def load(artifact, data: bytes):
    if artifact.runtime == "onnx":
        runtime = OnnxRuntime(data, artifact.card)
    else:
        runtime = SklearnRuntime(data, artifact.format, artifact.card)
    warm_up(runtime, artifact.card)
    return runtime


# --- warm-up ---------------------------------------------------------------------------------


def typical_row(schema: Schema, card: dict) -> list:
    """One plausible raw row: a training-distribution centre per numeric feature, a known category otherwise."""
    _, _, categories = card_features(card)
    dists = (card.get("features") or {}).get("distributions") or {}
    row = []
    for name, cat in zip(schema.names, schema.categorical, strict=True):
        if cat:
            values = categories.get(name) or [""]
            row.append(str(values[0]))
            continue
        value = 0.0
        dist = dists.get(name) if isinstance(dists, dict) else None
        if isinstance(dist, dict):
            for key in ("mean", "median"):
                if isinstance(dist.get(key), int | float):
                    value = float(dist[key])
                    break
        row.append(value)
    return row


def rows_to_batch(schema: Schema, rows: list[list]):
    if schema.all_numeric:
        return np.asarray(rows, dtype=schema.float_dtype)
    cols = list(zip(*rows, strict=True))
    return [
        np.asarray(c, dtype=object) if cat else np.asarray(c, dtype=schema.float_dtype)
        for c, cat in zip(cols, schema.categorical, strict=True)
    ]


def finite_rows(label: np.ndarray, probs: np.ndarray | None) -> np.ndarray:
    """Per row: are all outputs finite? (A cheap sum first: it is finite when every value is.)"""
    ok = np.ones(len(label), dtype=bool)
    if label.dtype.kind == "f" and not np.isfinite(label.sum()):
        ok &= np.isfinite(label)
    if probs is not None and probs.dtype.kind == "f" and not np.isfinite(probs.sum()):
        ok &= np.isfinite(probs).all(axis=1)
    return ok


def warm_up(runtime, card: dict) -> None:
    """Run the model before the server says it is ready; learn output types and which features may be NaN."""
    schema = runtime.schema
    row = typical_row(schema, card)
    t0 = time.perf_counter()
    try:
        label, probs = runtime.predict(rows_to_batch(schema, [row]))
    except Exception as exc:
        raise StartupError(f"warm-up inference failed: {type(exc).__name__}: {exc}") from exc
    one = rows_to_batch(schema, [row])
    runtime.predict(one)
    t1 = time.perf_counter()
    runtime.predict(one)
    runtime.seconds_per_call = time.perf_counter() - t1
    schema.label_datatype = v2_datatype(label.dtype)
    if probs is not None:
        schema.proba_datatype = v2_datatype(probs.dtype)
        schema.n_classes = int(probs.shape[1])
    if not finite_rows(label, probs).all():
        raise StartupError("warm-up inference on a typical row returned NaN")

    # A model can take NaN in a feature when a row with that feature missing still gives finite
    # outputs (imputers, trees with missing-value support); otherwise NaN there is a client error.
    nan_ok = np.zeros(schema.n_features, dtype=bool)
    numeric = schema.numeric_indices
    probes = []
    for j in numeric:
        r = list(row)
        r[j] = float("nan")
        probes.append(r)
    if probes:
        try:
            pl, pp = runtime.predict(rows_to_batch(schema, probes))
            ok = finite_rows(pl, pp)
        except Exception:
            ok = np.zeros(len(probes), dtype=bool)
            for k, r in enumerate(probes):
                try:
                    ok[k] = finite_rows(*runtime.predict(rows_to_batch(schema, [r])))[0]
                except Exception:
                    ok[k] = False
        nan_ok[numeric] = ok
    schema.nan_ok = nan_ok
    log.info(
        "warm-up done in %.1f ms; %d of %d numeric features accept missing values",
        (time.perf_counter() - t0) * 1e3, int(nan_ok.sum()), len(numeric),
    )
