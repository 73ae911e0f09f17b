"""The deciding metric: which metric compares versions of a Model, by task, in one place.

The trainer writes it as the card's `mainMetric`; the operator's auto promotion compares
versions by `promotion.metric` or, when the Model sets none, by `default_metric(task)`;
`deciding_metric` tells which applies and whether a configured one exists for the task.
"""

from __future__ import annotations

CLASSIFICATION = "classification"
REGRESSION = "regression"

CLASSIFICATION_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc")
REGRESSION_METRICS = ("r2", "rmse", "mae")
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "r2"}
LOWER_IS_BETTER = frozenset({"rmse", "mae"})


def metrics_for(task: str | None) -> tuple[str, ...]:
    """Metric names the trainer computes for task (every name when the task is unknown)."""
    if task == CLASSIFICATION:
        return CLASSIFICATION_METRICS
    if task == REGRESSION:
        return REGRESSION_METRICS
    return CLASSIFICATION_METRICS + REGRESSION_METRICS


def default_metric(task: str) -> str:
    """accuracy for classification, r2 for regression."""
    try:
        return DEFAULT_METRIC[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; one of: {', '.join(DEFAULT_METRIC)}") from None


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER


def deciding_metric(task: str, configured: str | None = None) -> tuple[str, str | None]:
    """(the metric that decides for task, problem): the configured one when it exists for the
    task, else the task's default with `problem` saying why the configured one was not used
    (None when there is nothing to say)."""
    default = default_metric(task)
    if not configured:
        return default, None
    if configured in metrics_for(task):
        return configured, None
    return default, (f"metric {configured!r} does not exist for {task}; one of: "
                     f"{', '.join(metrics_for(task))} (deciding by {default})")
