"""Scoring on the held-out split, and the spec's gates.

A gate that fails does not fail the run: the version is written with gatesPassed false
and the operator registers it as Rejected.
"""

from __future__ import annotations

import math
import operator

import numpy as np
from sklearn import metrics as skm

from kiln_contract.metrics import CLASSIFICATION_METRICS, LOWER_IS_BETTER, REGRESSION_METRICS  # noqa: F401
from kiln_trainer.algorithms import CLASSIFICATION
from kiln_trainer.errors import BadInput

OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def known(task: str | None) -> tuple[str, ...]:
    if task is None:
        return CLASSIFICATION_METRICS + REGRESSION_METRICS
    return CLASSIFICATION_METRICS if task == CLASSIFICATION else REGRESSION_METRICS


def check_names(evaluation_spec: dict, task: str | None) -> None:
    """Metric names in evaluation.metrics and gates must exist for the task (any task when unknown yet)."""
    names = known(task)
    suffix = f" for {task}" if task else ""
    for i, m in enumerate(evaluation_spec.get("metrics") or []):
        if m not in names:
            raise BadInput(f"spec.evaluation.metrics[{i}]", f"unknown metric {m!r}{suffix}; one of: {', '.join(names)}")
    for i, gate in enumerate(evaluation_spec.get("gates") or []):
        if gate["metric"] not in names:
            raise BadInput(f"spec.evaluation.gates[{i}].metric",
                           f"unknown metric {gate['metric']!r}{suffix}; one of: {', '.join(names)}")


def classification(y_true, y_pred, scores, classes, has_proba: bool) -> tuple[dict, dict]:
    """Metrics and the confusion matrix; roc_auc only where it is defined."""
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "precision_macro": skm.precision_score(y_true, y_pred, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y_true, y_pred, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(y_true, y_pred, average="macro", zero_division=0),
    }
    auc = None
    if scores is not None and len(np.unique(y_true)) > 1:
        try:
            if len(classes) == 2:
                positive = scores[:, 1] if scores.ndim == 2 else scores
                auc = skm.roc_auc_score(np.asarray(y_true) == classes[1], positive)
            elif has_proba and set(np.unique(y_true)) == set(classes):
                auc = skm.roc_auc_score(y_true, scores, multi_class="ovr", labels=list(classes))
        except ValueError:
            auc = None
    if auc is not None:
        out["roc_auc"] = auc
    matrix = skm.confusion_matrix(y_true, y_pred, labels=list(classes))
    confusion = {"labels": [_plain(c) for c in classes], "matrix": matrix.tolist()}
    return {k: float(v) for k, v in out.items()}, confusion


def regression(y_true, y_pred) -> dict:
    return {
        "r2": float(skm.r2_score(y_true, y_pred)),
        "rmse": float(math.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
    }


def select(metrics: dict, evaluation_spec: dict) -> dict:
    """The metrics the card reports: those asked for (and those gates use), else all."""
    wanted = evaluation_spec.get("metrics")
    if not wanted:
        return dict(metrics)
    keep = set(wanted) | {g["metric"] for g in evaluation_spec.get("gates") or []}
    return {k: v for k, v in metrics.items() if k in keep}


def gates(gate_specs: list[dict], metrics: dict) -> list[dict]:
    results = []
    for g in gate_specs or []:
        actual = metrics.get(g["metric"])
        passed = actual is not None and bool(OPS[g["op"]](actual, g["value"]))
        results.append({"metric": g["metric"], "op": g["op"], "value": g["value"], "actual": actual, "passed": passed})
    return results


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value
