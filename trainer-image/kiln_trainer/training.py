"""One training run: validated spec in; artifacts, report and model card (as a dict) out,
written into a staging directory. Publishing them is kiln_trainer.publish's job."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder

from kiln_contract import REPORT
from kiln_contract import card as contract_card
from kiln_contract.card import FORMAT_FILES
from kiln_trainer import (
    algorithms,
    cleaning,
    columns,
    datasets,
    distributions,
    evaluation,
    modelcard,
    onnx_export,
    prediction_reference,
    preprocessing,
    report,
    search,
)
from kiln_trainer.algorithms import CLASSIFICATION, REGRESSION
from kiln_trainer.errors import BadInput

log = logging.getLogger(__name__)


@dataclass
class Result:
    card: dict
    files: list[str]  # in staging, to upload before the card
    warnings: list[str] = field(default_factory=list)


class Timings(dict):
    """Seconds per phase; each phase that ends logs one progress line (the pod's log):
    `phase load: 1000000 rows in 8.21 s (121,802 rows/s)`. `rows` may be set inside the block."""

    @contextlib.contextmanager
    def phase(self, name: str, rows: int | None = None):
        started = time.monotonic()
        box = {"rows": rows}
        ok = False
        try:
            yield box
            ok = True
        finally:
            elapsed = time.monotonic() - started
            self[name] = round(self.get(name, 0.0) + elapsed, 4)
            if ok:
                log.info("%s", progress_line(name, box["rows"], elapsed))


def progress_line(name: str, rows: int | None, seconds: float) -> str:
    if rows is None:
        return f"phase {name}: {seconds:.2f} s"
    rate = rows / seconds if seconds > 0 else float("inf")
    shown = f"{rate:,.0f}" if rate != float("inf") else "inf"
    return f"phase {name}: {rows} rows in {seconds:.2f} s ({shown} rows/s)"


def precheck(spec: dict) -> None:
    """What can be refused before any data is read."""
    algo = spec["algorithm"]
    task = algo.get("task")
    evaluation.check_names(spec.get("evaluation", {}), task)
    params = algo.get("params") or {}
    if not isinstance(params, dict):
        raise BadInput("spec.algorithm.params", "must be an object")
    if task:
        algorithms.estimator_class(algo["name"], task)
        algorithms.check_param_names(algo["name"], task, params)
    if spec.get("search"):
        if spec["search"].get("metric"):
            search.scorer_for(spec["search"]["metric"], task or CLASSIFICATION, 2)
        if task:
            search.parse_space(spec["search"], algo["name"], task, params)


def prepare_target(y: pd.Series, task: str) -> pd.Series:
    if task == REGRESSION:
        if not pd.api.types.is_numeric_dtype(y) or pd.api.types.is_bool_dtype(y):
            raise BadInput("spec.algorithm.task", f"regression needs a numeric target; {y.name!r} is {y.dtype}")
        return y.astype("float64")
    if pd.api.types.is_bool_dtype(y):
        return y.astype("int64")
    if pd.api.types.is_numeric_dtype(y):
        values = y.to_numpy(dtype=float)
        if np.all(np.mod(values, 1) == 0):
            return y.astype("int64")
    return y.astype(str).astype(object)  # float or mixed labels become strings


def split(X, y, task: str, split_spec: dict, warn: list[str]):
    seed = int(split_spec.get("seed", 42))
    fraction = float(split_spec.get("testFraction", 0.2))
    stratify = y if task == CLASSIFICATION and split_spec.get("stratify", True) else None
    try:
        return train_test_split(X, y, test_size=fraction, random_state=seed, stratify=stratify)
    except ValueError as exc:
        if stratify is None:
            raise BadInput("spec.split.testFraction", str(exc)) from exc
        warn.append(f"stratified split impossible ({exc}); split without stratification")
        try:
            return train_test_split(X, y, test_size=fraction, random_state=seed)
        except ValueError as exc2:
            raise BadInput("spec.split.testFraction", str(exc2)) from exc2


def train(spec: dict, staging: Path) -> Result:
    with warnings.catch_warnings():
        # Kiln sets SVC(probability=True) on purpose (scikit-learn 1.9 deprecates it; skl2onnx reads
        # probA_/probB_): not something the user can act on.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*probability.*")
        return _train(spec, staging)


def _train(spec: dict, staging: Path) -> Result:
    timings = Timings()
    warn: list[str] = []
    algo = spec["algorithm"]
    name = algo["name"]
    params = dict(algo.get("params") or {})
    seed = int(spec.get("split", {}).get("seed", 42))
    resources = spec.get("resources") or {}
    precheck(spec)

    with timings.phase("load") as p:
        ds = datasets.load(spec["dataset"])
        p["rows"] = ds.rows
    with timings.phase("clean", ds.rows):
        cleaned = cleaning.clean(ds.frame, spec["dataset"], spec.get("cleaning", {}), ds.default_target)
    dataset_card = ds.card()
    ds.frame = None  # the cleaned frame is what the rest reads; the raw one's memory goes back now

    task = algo.get("task") or algorithms.infer_task(cleaned.y)
    evaluation.check_names(spec.get("evaluation", {}), task)
    y = prepare_target(cleaned.y, task)
    if task == CLASSIFICATION and y.nunique() < 2:
        only = y.iloc[0] if len(y) else None
        raise BadInput("spec.dataset.target", f"column {cleaned.target!r} holds a single class ({only!r}) in the "
                       f"{len(y)} rows left after cleaning; classification needs at least two classes")
    warn.extend(cleaned.columns.warnings)
    layout = preprocessing.FeatureLayout.of(cleaned.X)
    device = algorithms.resolve_device(name, int(resources.get("gpu") or 0))
    if device.get("warning"):
        warn.append(device["warning"])
    n_jobs = algorithms.cpu_count(resources)
    estimator = algorithms.build(name, task, params, seed, n_jobs, device)
    space = search.parse_space(spec["search"], name, task, params) if spec.get("search") else None

    with timings.phase("split", len(cleaned.y)):
        X_train, X_test, y_train, y_test = split(cleaned.X, y, task, spec.get("split", {}), warn)
        if task == CLASSIFICATION and y_train.nunique() < 2:
            raise BadInput("spec.dataset.target", "the training split holds a single class")

    # xgboost wants classes 0..n-1; the ONNX graph maps indices back to the labels (see onnx_export)
    encoder = None
    if name == "xgboost" and task == CLASSIFICATION:
        encoder = LabelEncoder().fit(y)
        fit_y = encoder.transform(y_train)
        identity = np.array_equal(encoder.classes_, np.arange(len(encoder.classes_)))
    else:
        fit_y = y_train.to_numpy()
        identity = True

    features_spec = spec.get("features", {})
    scale = name not in preprocessing.SCALE_INVARIANT
    if not scale and features_spec.get("scaling", "none") != "none":
        warn.append(f"spec.features.scaling={features_spec['scaling']} skipped: {name} is invariant to feature scaling")
    missing_policy = spec.get("cleaning", {}).get("missing", "drop")
    categories, folded = _kept_categories(layout, X_train, int(features_spec.get("maxCategories", 50)),
                                          missing_policy != "drop")
    for col, info in folded.items():
        warn.append(f"column {col!r} has {info['levels']} levels; the {info['kept']} most frequent are kept, the "
                    "rest (and levels never seen) are folded into one (spec.features.maxCategories)")
    preprocessor = preprocessing.build_preprocessor(layout, features_spec, missing_policy, scale, categories)
    pipeline = Pipeline([("preprocess", preprocessor), (search.STEP, estimator)])
    # What the card needs from the raw frames is taken now, so that they can go before the fit:
    # on a table of a million rows each is hundreds of MiB (the test split stays, for parity).
    n_train = len(X_train)
    dtypes = {c: str(cleaned.X[c].dtype) for c in layout.names}
    profile = distributions.profile(X_train, layout)
    Xm_train, Xm_test = layout.model_input(X_train), layout.model_input(X_test)
    cleaned.X = X_train = None

    search_info = None
    with timings.phase("fit", n_train), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, message=".*Falling back to prediction.*")
        if space is not None:
            pipeline, search_info = search.run(pipeline, space, spec["search"], task, seed, Xm_train, fit_y,
                                               n_jobs, n_classes=int(pd.Series(fit_y).nunique()))
        else:
            pipeline.fit(Xm_train, fit_y)
    model = pipeline.steps[-1][1]
    if device["kind"] == "cuda":
        model.set_params(device="cpu")  # artifacts serve on CPU; predictions below stay on the host

    with timings.phase("evaluate", len(X_test)):
        predicted = pipeline.predict(Xm_test)
        has_proba = task == CLASSIFICATION and hasattr(pipeline, "predict_proba")
        proba = pipeline.predict_proba(Xm_test) if has_proba else None
        if encoder is not None:
            predicted = encoder.inverse_transform(np.asarray(predicted).astype(int))
        if task == CLASSIFICATION:
            classes = list(encoder.classes_) if encoder is not None else list(model.classes_)
            scores = proba
            if scores is None and hasattr(pipeline, "decision_function"):
                scores = np.asarray(pipeline.decision_function(Xm_test))
            all_metrics, confusion = evaluation.classification(y_test.to_numpy(), predicted, scores, classes,
                                                               has_proba)
        else:
            classes, confusion = None, None
            all_metrics = evaluation.regression(y_test.to_numpy(), predicted)
        gate_results = evaluation.gates(spec.get("evaluation", {}).get("gates"), all_metrics)
        metrics = evaluation.select(all_metrics, spec.get("evaluation", {}))

    formats = list(spec.get("export", {}).get("formats") or ["onnx", "joblib"])
    artifacts: list[dict] = []
    export: dict = {}
    signature = None
    with timings.phase("export", len(X_test)):
        if "onnx" in formats:
            try:
                data, check, double = onnx_export.export(pipeline, layout, task, name,
                                                         None if identity else encoder.classes_,
                                                         X_test, predicted, proba)
                path = staging / FORMAT_FILES["onnx"]
                path.write_bytes(data)
                artifacts.append(modelcard.artifact_entry(path, "onnx"))
                signature = onnx_export.signature(layout, task, has_proba, onnx_export.output_names(data), double)
                export["onnx"] = {"status": "ok", "opset": onnx_export.TARGET_OPSET, "parity": check}
            except onnx_export.ExportError as exc:
                export["onnx"] = {"status": "unavailable", "reason": str(exc)}
                if getattr(exc, "parity", None) is not None:
                    export["onnx"]["parity"] = exc.parity
                warn.append(f"ONNX export unavailable: {exc}")
                log.warning("ONNX export unavailable: %s", exc)
        onnx_failed = "onnx" in export and export["onnx"]["status"] != "ok"
        if "joblib" in formats or onnx_failed:  # where ONNX is unavailable, joblib stays
            path = staging / FORMAT_FILES["joblib"]
            joblib.dump(pipeline, path, compress=3)
            artifacts.append(modelcard.artifact_entry(path, "joblib"))
            export["joblib"] = {"status": "ok", "requested": "joblib" in formats}
        if "pkl" in formats:
            path = staging / FORMAT_FILES["pkl"]
            with open(path, "wb") as fh:
                pickle.dump(pipeline, fh, protocol=pickle.HIGHEST_PROTOCOL)
            artifacts.append(modelcard.artifact_entry(path, "pkl"))
            export["pkl"] = {"status": "ok"}
        if encoder is not None and not identity:
            note = "predict() of this scikit-learn artifact returns indices into features.classes"
            for fmt in ("joblib", "pkl"):
                if fmt in export:
                    export[fmt]["predictsClassIndex"] = True
                    export[fmt]["note"] = note

    metric_name = (search_info or {}).get("metric") or search.default_metric(task)
    if metric_name not in all_metrics:
        metric_name = search.default_metric(task)
    learned_categories = _categories(pipeline, layout)
    withheld = {fmt: (export.get(fmt) or {}).get("reason", "not produced") for fmt in formats
                if fmt not in {a["format"] for a in artifacts}}
    card = {
        "kind": "ModelCard",
        contract_card.CREATED_AT: datetime.now(UTC).isoformat(timespec="seconds"),
        "task": task,
        "algorithm": name,
        "metrics": metrics,
        "mainMetric": {"name": metric_name, "value": all_metrics.get(metric_name),
                       "lowerIsBetter": metric_name in evaluation.LOWER_IS_BETTER},
        "gates": gate_results,
        "gatesPassed": all(g["passed"] for g in gate_results),
        "params": _params(model),
        "bestParams": search_info["bestParams"] if search_info else params,
        "search": search_info,
        "artifacts": artifacts,
        "export": export,
        contract_card.WITHHELD_KEY: withheld,
        "dataset": dataset_card,
        "cleaning": cleaned.counts,
        "features": {
            "names": layout.names,
            "dtypes": dtypes,
            "kinds": layout.kinds,
            "categories": learned_categories,
            "booleans": cleaned.columns.booleans,
            "folded": folded,
            "distributions": profile,
            "target": cleaned.target,
            "classes": classes,
            # how a caller marks a missing raw value (both runtimes; imputed when cleaning.missing imputes)
            "missing": {"numeric": "NaN", "categorical": preprocessing.MISSING_CATEGORY},
        },
        "predictions": prediction_reference.reference(task, predicted),  # prediction-drift reference
        "evaluation": {"trainRows": int(n_train), "testRows": int(len(X_test)),
                       "confusionMatrix": confusion, "allMetrics": all_metrics},
        "libraries": modelcard.libraries(),
        "spec": spec,
        "timings": timings,
        "device": device,
        "warnings": warn,
    }
    if signature:
        card["signature"] = signature
    card.update(_source())

    with timings.phase("report", len(X_test)):
        names = preprocessing.transformed_names(pipeline.steps[0][1], layout)
        page = report.render(modelcard.jsonable(card), y_test.to_numpy(), predicted, model, names)
        path = staging / REPORT
        path.write_text(page, encoding="utf-8")
        card["report"] = modelcard.artifact_entry(path, "html")

    files = [a["file"] for a in artifacts] + [REPORT]
    return Result(card, files, warn)


# Set by the operator on the training pod; recorded so a card found in S3 names its origin.
SOURCE_ENV = {"trainingJob": "KILN_TRAININGJOB", "run": "KILN_RUN", "modelVersion": "KILN_MODEL_VERSION"}


def _source() -> dict:
    out = {key: os.environ[env] for key, env in SOURCE_ENV.items() if os.environ.get(env)}
    if "modelVersion" in out and out["modelVersion"].isdigit():
        out["modelVersion"] = int(out["modelVersion"])
    return out


def _params(model) -> dict:
    return modelcard.jsonable(model.get_params(deep=False))


def _kept_categories(layout, X_train, cap: int, impute: bool) -> tuple[dict | None, dict]:
    """(encoder categories per categorical column, or None when no column has more than `cap`
    levels; {column: {levels, kept}} for the columns folded). Levels are counted on the training
    split as the encoder receives them (imputed missing values are not a level)."""
    if layout.all_numeric:
        return None, {}
    cat = preprocessing.FeatureLayout(layout.categorical, {c: preprocessing.CATEGORICAL for c in layout.categorical})
    values = cat.normalise(X_train)  # the categorical columns only, as the encoder receives them
    kept, folded = {}, {}
    for col in layout.categorical:
        s = values[col]
        if impute:
            s = s[s != preprocessing.MISSING_CATEGORY]
        levels, n = columns.kept_levels(s, cap)
        kept[col] = levels
        if n > cap:
            folded[col] = {"levels": n, "kept": len(levels)}
    return (kept if folded else None), folded


def _categories(pipeline, layout) -> dict:
    """Categories each categorical column's encoder learned, from the fitted ColumnTransformer."""
    if layout.all_numeric:
        return {}
    ct = pipeline.steps[0][1]
    cat = ct.named_transformers_.get("cat")
    encoder = cat.steps[-1][1] if cat is not None else None
    if encoder is None or not hasattr(encoder, "categories_"):
        return {}
    return {c: modelcard.jsonable(list(cats)) for c, cats in zip(layout.categorical, encoder.categories_, strict=True)}
