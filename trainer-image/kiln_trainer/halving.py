"""Successive halving (spec.search.method: halving): scikit-learn's HalvingGridSearchCV, or
HalvingRandomSearchCV when the space holds distributions or the grid is larger than `trials`.

Every candidate starts with a small budget (`halving.minResources` of `halving.resource`: rows,
n_samples, by default; or an estimator parameter such as n_estimators); after each iteration
only the best 1/`factor` go on with `factor` times the budget. The card's search.results lists
every candidate with the budget it reached and whether it was stopped early.

Halving runs inside the training pod: its iterations depend on each other, so spreading them
over pods would need one shard set per iteration; spec.search.parallelism does not apply to it.
"""

from __future__ import annotations

from sklearn.experimental import enable_halving_search_cv  # noqa: F401 - registers the classes below
from sklearn.model_selection import HalvingGridSearchCV, HalvingRandomSearchCV

from kiln_trainer.errors import BadInput


def searcher(pipeline, space: dict, search_spec: dict, *, scoring, cv, n_jobs: int, seed: int, size: int | None,
             trials: int, step: str):
    options = search_spec.get("halving") or {}
    factor = int(options.get("factor", 3))
    resource = options.get("resource", "n_samples")
    if resource != "n_samples":
        if f"{step}__{resource}" in space:
            raise BadInput("spec.search.halving.resource", f"{resource} is the budget; it cannot also be searched")
        resource = f"{step}__{resource}"
        if resource.split("__", 1)[1] not in pipeline.steps[-1][1].get_params():
            raise BadInput("spec.search.halving.resource",
                           f"{resource.split('__', 1)[1]} is not a parameter of the estimator (or n_samples)")
    common = {"factor": factor, "resource": resource, "scoring": scoring, "cv": cv, "n_jobs": n_jobs,
              "refit": True, "random_state": seed}
    if options.get("minResources"):
        common["min_resources"] = int(options["minResources"])
    elif resource != "n_samples":
        common["min_resources"] = "smallest"
    if options.get("maxResources"):
        common["max_resources"] = int(options["maxResources"])
    elif resource != "n_samples":
        raise BadInput("spec.search.halving.maxResources", f"needed when the budget is {resource.split('__', 1)[1]}")
    if size is not None and size <= trials:
        return HalvingGridSearchCV(pipeline, space, **common)
    return HalvingRandomSearchCV(pipeline, space, n_candidates=trials, **common)
