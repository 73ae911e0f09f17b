"""The estimators a spec may name, task inference, parameter checking and the compute device.

Unknown parameters are rejected with the estimator's valid ones listed, naming the field
(`spec.algorithm.params.<name>`); values scikit-learn itself refuses are reported the same way.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import shutil
import subprocess

import numpy as np
import pandas as pd

from kiln_trainer.errors import BadInput

log = logging.getLogger(__name__)

CLASSIFICATION = "classification"
REGRESSION = "regression"
MAX_CLASSES_INFERRED = 20

# name → (classifier, regressor) as "module:Class"; None where the task does not apply.
ALGORITHMS: dict[str, tuple[str | None, str | None]] = {
    "logistic_regression": ("sklearn.linear_model:LogisticRegression", None),
    "decision_tree": ("sklearn.tree:DecisionTreeClassifier", "sklearn.tree:DecisionTreeRegressor"),
    "random_forest": ("sklearn.ensemble:RandomForestClassifier", "sklearn.ensemble:RandomForestRegressor"),
    "knn": ("sklearn.neighbors:KNeighborsClassifier", "sklearn.neighbors:KNeighborsRegressor"),
    "gradient_boosting": (
        "sklearn.ensemble:HistGradientBoostingClassifier",
        "sklearn.ensemble:HistGradientBoostingRegressor",
    ),
    "linear_regression": (None, "sklearn.linear_model:LinearRegression"),
    "ridge": ("sklearn.linear_model:RidgeClassifier", "sklearn.linear_model:Ridge"),
    "svm": ("sklearn.svm:SVC", "sklearn.svm:SVR"),
    "xgboost": ("xgboost:XGBClassifier", "xgboost:XGBRegressor"),
}

# Defaults Kiln sets unless the spec gives the parameter (random_state comes from split.seed).
KILN_DEFAULTS: dict[tuple[str, str], dict] = {
    ("logistic_regression", CLASSIFICATION): {"max_iter": 1000},
    ("svm", CLASSIFICATION): {"probability": True},
}


def infer_task(y: pd.Series) -> str:
    """Non-numeric targets, and integer targets with few distinct values, are classes."""
    if pd.api.types.is_bool_dtype(y) or not pd.api.types.is_numeric_dtype(y):
        return CLASSIFICATION
    values = y.dropna().to_numpy(dtype=float)
    if values.size and np.all(np.mod(values, 1) == 0) and np.unique(values).size <= MAX_CLASSES_INFERRED:
        return CLASSIFICATION
    return REGRESSION


def estimator_class(name: str, task: str):
    clf, reg = ALGORITHMS[name]
    path = clf if task == CLASSIFICATION else reg
    if path is None:
        other = REGRESSION if task == CLASSIFICATION else CLASSIFICATION
        raise BadInput("spec.algorithm.task", f"{name} does only {other}, but the task is {task}")
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BadInput("spec.algorithm.name", f"{name} needs the {module.split('.')[0]} package: {exc}") from exc


def valid_params(name: str, task: str) -> list[str]:
    return sorted(estimator_class(name, task)().get_params(deep=False))


def check_param_names(name: str, task: str, params: dict, field: str = "spec.algorithm.params") -> None:
    valid = valid_params(name, task)
    for key in params:
        if key not in valid:
            raise BadInput(f"{field}.{key}", f"unknown parameter for {name} ({task}); valid: {', '.join(valid)}")


_PARAM_IN_MESSAGE = re.compile(r"The '([^']+)' parameter")


def check_param_values(estimator, field: str = "spec.algorithm.params") -> None:
    """scikit-learn's own parameter validation, before any data is fitted."""
    validate = getattr(estimator, "_validate_params", None)
    if validate is None or not hasattr(estimator, "_parameter_constraints"):
        return  # not a scikit-learn estimator (xgboost checks its parameters when it fits)
    from sklearn.utils._param_validation import InvalidParameterError

    try:
        validate()
    except InvalidParameterError as exc:
        m = _PARAM_IN_MESSAGE.search(str(exc))
        raise BadInput(f"{field}.{m.group(1)}" if m else field, str(exc)) from exc


def build(name: str, task: str, params: dict, seed: int, n_jobs: int, device: dict):
    """The estimator with Kiln's defaults, then the spec's params on top."""
    cls = estimator_class(name, task)
    check_param_names(name, task, params)
    accepted = cls().get_params(deep=False)
    settings = dict(KILN_DEFAULTS.get((name, task), {}))
    if "random_state" in accepted:
        settings["random_state"] = seed
    if name == "xgboost":
        settings["n_jobs"] = n_jobs
        settings["device"] = "cuda" if device.get("kind") == "cuda" else "cpu"
    settings.update(params)
    estimator = cls(**settings)
    check_param_values(estimator)
    return estimator


# ---- compute device -------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """GPU names nvidia-smi reports (empty when none is visible to this process)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1", "NoDevFiles", "none"):
        return []
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def xgboost_has_cuda() -> bool:
    try:
        import xgboost

        return bool(xgboost.build_info().get("USE_CUDA"))
    except Exception:
        return False


def resolve_device(name: str, requested_gpus: int, gpus=visible_gpus, cuda_build=xgboost_has_cuda) -> dict:
    """The card's `device`: cuda only for xgboost with GPUs requested and visible; a warning otherwise."""
    if not requested_gpus:
        return {"kind": "cpu"}
    if name != "xgboost":
        return {"kind": "cpu", "requestedGpus": requested_gpus,
                "warning": f"{name} has no GPU implementation; trained on CPU"}
    found = gpus()
    if not found:
        return {"kind": "cpu", "requestedGpus": requested_gpus,
                "warning": "spec.resources.gpu > 0 but no GPU is visible; xgboost trained on CPU"}
    if not cuda_build():
        return {"kind": "cpu", "requestedGpus": requested_gpus,
                "warning": "the installed xgboost has no CUDA support; trained on CPU"}
    return {"kind": "cuda", "requestedGpus": requested_gpus, "gpus": found}


def cpu_count(resources: dict) -> int:
    """Workers to use: spec.resources.cpu (a container's limit is not what os.cpu_count() says)."""
    cpu = (resources or {}).get("cpu")
    if not cpu:
        return 1
    value = float(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    return max(1, int(value))
