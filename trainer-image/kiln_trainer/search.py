"""Hyperparameter search with cross-validation over the whole Pipeline.

`space` maps estimator parameter names to a list of candidate values; for method random a
value may also be a distribution: {"uniform": [low, high]}, {"loguniform": [low, high]} or
{"randint": [low, high]} (high exclusive).

trials bounds the candidates evaluated. For method grid, a grid larger than trials is
TRUNCATED, not refused: `trials` candidates are drawn from the grid at random without
replacement (seeded by split.seed), and the card's search section says so
(gridSize, candidates, truncated: true). Drawing at random keeps every value of every
parameter in play; cutting the grid's enumeration order would not.
"""

from __future__ import annotations

import logging
import math
import warnings

from sklearn.metrics import get_scorer_names
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, StratifiedKFold

from kiln_contract import metrics
from kiln_trainer import algorithms, halving, shards
from kiln_trainer.algorithms import CLASSIFICATION
from kiln_trainer.errors import BadInput

log = logging.getLogger(__name__)

STEP = "model"  # the estimator's step name in the Pipeline
DISTRIBUTIONS = ("uniform", "loguniform", "randint")
# Kiln's metric names whose scikit-learn scorer has another name.
SCORER_ALIASES = {
    "rmse": "neg_root_mean_squared_error",
    "mae": "neg_mean_absolute_error",
}


def default_metric(task: str) -> str:
    return metrics.default_metric(task)


def scorer_for(metric: str, task: str, n_classes: int) -> str:
    if metric == "roc_auc" and task == CLASSIFICATION and n_classes > 2:
        return "roc_auc_ovr"
    name = SCORER_ALIASES.get(metric, metric)
    if name not in get_scorer_names():
        raise BadInput("spec.search.metric", f"unknown metric {metric!r}; a scikit-learn scorer name, e.g. "
                       + ("accuracy, f1_macro, roc_auc" if task == CLASSIFICATION else "r2, rmse, mae"))
    return name


def _distribution(key: str, value: dict):
    from scipy import stats

    field = f"spec.search.space.{key}"
    if len(value) != 1 or next(iter(value)) not in DISTRIBUTIONS:
        raise BadInput(field, f"a distribution is one of {', '.join(DISTRIBUTIONS)} with [low, high]")
    kind, bounds = next(iter(value.items()))
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds)
            and bounds[0] < bounds[1]):
        raise BadInput(field, f"{kind} needs [low, high] with low < high")
    low, high = bounds
    if kind == "uniform":
        return stats.uniform(low, high - low)
    if kind == "loguniform":
        if low <= 0:
            raise BadInput(field, "loguniform needs low > 0")
        return stats.loguniform(low, high)
    return stats.randint(int(low), int(high))


def parse_space(search_spec: dict, name: str, task: str, base_params: dict) -> dict:
    """Validated space with Pipeline-prefixed keys (model__<param>)."""
    space = search_spec.get("space") or {}
    if not space:
        raise BadInput("spec.search.space", "needs at least one parameter")
    algorithms.check_param_names(name, task, space, field="spec.search.space")
    method = search_spec.get("method", "grid")
    cls = algorithms.estimator_class(name, task)
    out = {}
    for key, values in space.items():
        field = f"spec.search.space.{key}"
        if isinstance(values, dict):
            if method not in ("random", "halving"):
                raise BadInput(field, "distributions need method: random; a grid takes a list of values")
            out[f"{STEP}__{key}"] = _distribution(key, values)
            continue
        if not isinstance(values, list) or not values:
            raise BadInput(field, "must be a non-empty list of candidate values")
        for v in values:
            try:
                algorithms.check_param_values(cls(**{**base_params, key: v}), field="spec.search.space")
            except TypeError as exc:
                raise BadInput(field, str(exc)) from exc
        out[f"{STEP}__{key}"] = values
    return out


def grid_size(space: dict) -> int | None:
    if any(not isinstance(v, list) for v in space.values()):
        return None
    return math.prod(len(v) for v in space.values())


def run(pipeline, space: dict, search_spec: dict, task: str, seed: int, X, y, n_jobs: int, n_classes: int):
    """Fit the search; return (best fitted Pipeline, the card's search section)."""
    metric = search_spec.get("metric") or default_metric(task)
    scoring = scorer_for(metric, task, n_classes)
    folds = int(search_spec.get("cvFolds", 5))
    trials = int(search_spec.get("trials", 20))
    method = search_spec.get("method", "grid")
    cv = (StratifiedKFold(folds, shuffle=True, random_state=seed) if task == CLASSIFICATION
          else KFold(folds, shuffle=True, random_state=seed))
    size = grid_size(space)
    truncated = False
    if method == "halving":  # successive halving, in this pod (kiln_trainer.halving)
        searcher = halving.searcher(pipeline, space, search_spec, scoring=scoring, cv=cv, n_jobs=n_jobs,
                                    seed=seed, size=size, trials=trials, step=STEP)
    elif method == "grid" and size <= trials:
        searcher = GridSearchCV(pipeline, space, scoring=scoring, cv=cv, n_jobs=n_jobs, refit=True)
    else:
        truncated = method == "grid"
        n_iter = trials if size is None else min(trials, size)
        searcher = RandomizedSearchCV(pipeline, space, n_iter=n_iter, scoring=scoring, cv=cv,
                                      n_jobs=n_jobs, refit=True, random_state=seed)
    searcher = shards.wrap(searcher)  # across pods when the operator split the search (kiln_trainer.shards)
    if truncated:
        log.warning("grid of %d candidates > trials=%d: evaluating %d drawn at random", size, trials, trials)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        searcher.fit(X, y)
    results = searcher.cv_results_
    info = {
        "method": method,
        "metric": metric,
        "scorer": scoring,
        "cvFolds": folds,
        "trials": trials,
        "candidates": len(results["params"]),
        "gridSize": size,
        "truncated": truncated,
        "bestScore": float(searcher.best_score_),
        "bestParams": {k.split("__", 1)[1]: v for k, v in searcher.best_params_.items()},
    }
    info.update(shards.table(searcher))  # every candidate's mean and std (halving: the budget reached)
    return searcher.best_estimator_, info
