"""A hyperparameter search split across pods (spec.search.parallelism > 1).

The operator runs one Job per shard and then the normal training Job; every pod of the run gets
$KILN_SEARCH_RESULTS (where the per-candidate results live, `<version prefix>/search/`), shard
pods also $KILN_SEARCH_SHARD=<index>/<shards> (or, from an Indexed Job, $JOB_COMPLETION_INDEX
with $KILN_SEARCH_SHARDS).

Each pod runs the trainer as usual up to the search (same data, same cleaning, same seeded split
and folds). There `ShardedSearch` stands in for scikit-learn's searcher (search.run wraps the
GridSearchCV / RandomizedSearchCV it built):

- on a shard pod, `fit` evaluates the shard's candidates (candidate i belongs to shard
  i % shards; the candidate list is the one the wrapped searcher would evaluate: ParameterGrid,
  or ParameterSampler with the same random_state) — each through a one-candidate GridSearchCV
  over the same folds, so every fold score is computed exactly as in the one-pod search — and
  writes one object per candidate (`c00007.json`: params, fold scores). Candidates whose object
  already exists are skipped, so a retried shard pod resumes. Then the pod exits 0 with a
  one-line summary (the shard's best, for the operator's progress) and trains nothing.
- on the final pod, `fit` reads every candidate's object (all must be there), builds the same
  cv_results_ scikit-learn builds (means and stds over the same fold-score matrix, ranks with
  the same tie rule), picks best_index_ as scikit-learn does, and refits the best candidate on
  the whole training split. search.run then writes the card's search section from it, so the
  card is the same whether the search ran in one pod or many.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, ParameterGrid, ParameterSampler, RandomizedSearchCV

from kiln_contract import search_plan
from kiln_trainer import modelcard
from kiln_trainer.errors import TrainerError

log = logging.getLogger(__name__)


class ShardDone(BaseException):  # noqa: N818 - not an error: the shard pod's work ends here
    """Raised out of training.train on a shard pod once its candidates are written."""

    def __init__(self, summary: dict):
        super().__init__("shard done")
        self.summary = summary


def results_uri(environ=os.environ) -> str | None:
    return environ.get(search_plan.RESULTS_ENV) or None


def shard(environ=os.environ) -> tuple[int, int] | None:
    return search_plan.parse_shard(environ.get(search_plan.SHARD_ENV), environ.get(search_plan.INDEX_ENV),
                                   environ.get(search_plan.SHARDS_ENV))


def active(environ=os.environ) -> bool:
    return results_uri(environ) is not None


# --- where the results live ----------------------------------------------------------------------------
class Results:
    """One JSON object per candidate under a prefix: s3://… or a local directory."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.s3 = uri.startswith("s3://")
        if self.s3:
            from kiln_contract.storage import parse_s3, s3_client

            self.loc = parse_s3(self.uri)
            self.client = s3_client()
        else:
            self.path = Path(uri[len("file://"):] if uri.startswith("file://") else uri)

    def done(self) -> set[int]:
        if not self.s3:
            if not self.path.is_dir():
                return set()
            return {i for p in self.path.iterdir() if (i := search_plan.candidate_of(p.name)) is not None}
        out: set[int] = set()
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.loc.bucket,
                                                                       Prefix=self.loc.key + "/")
        for page in pages:
            for obj in page.get("Contents") or []:
                i = search_plan.candidate_of(obj["Key"])
                if i is not None:
                    out.add(i)
        return out

    def get(self, candidate: int) -> dict:
        name = search_plan.result_name(candidate)
        if not self.s3:
            return json.loads((self.path / name).read_text())
        body = self.client.get_object(Bucket=self.loc.bucket, Key=self.loc.child(name).key)["Body"].read()
        return json.loads(body)

    def put(self, candidate: int, record: dict) -> None:
        name = search_plan.result_name(candidate)
        data = json.dumps(record, sort_keys=True).encode()
        if not self.s3:
            self.path.mkdir(parents=True, exist_ok=True)
            tmp = self.path / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.path / name)
            return
        self.client.put_object(Bucket=self.loc.bucket, Key=self.loc.child(name).key, Body=data,
                               ContentType="application/json")


# --- the searcher stand-in ---------------------------------------------------------------------------
def candidates(searcher) -> list[dict]:
    """The candidates the wrapped scikit-learn searcher would evaluate, in its order."""
    if isinstance(searcher, GridSearchCV):
        return list(ParameterGrid(searcher.param_grid))
    return list(ParameterSampler(searcher.param_distributions, searcher.n_iter, random_state=searcher.random_state))


def _key(params: dict) -> str:
    """Params as the result object records them (a check that a result belongs to this candidate)."""
    return json.dumps(modelcard.jsonable(params), sort_keys=True)


def _store_means(array: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means, stds and ranks of a (candidates × folds) score matrix, computed as BaseSearchCV._format_results."""
    means = np.average(array, axis=1)
    stds = np.sqrt(np.average((array - means[:, np.newaxis]) ** 2, axis=1))
    if np.isnan(means).all():
        ranks = np.ones_like(means, dtype=np.int32)
    else:
        filled = np.nan_to_num(means, nan=np.nanmin(means) - 1)
        ranks = rankdata(-filled, method="min").astype(np.int32, copy=False)
    return means, stds, ranks


class ShardedSearch:
    """Duck-types the parts of a fitted BaseSearchCV that search.run reads."""

    def __init__(self, searcher, results: str, shard_of: tuple[int, int] | None):
        self.searcher = searcher
        self.store = Results(results)
        self.shard = shard_of

    def fit(self, X, y):
        params = candidates(self.searcher)
        if self.shard is not None:
            raise ShardDone(self._evaluate(params, X, y))
        self._collect(params, X, y)
        return self

    def _evaluate(self, params: list[dict], X, y) -> dict:
        index, shards = self.shard
        mine = search_plan.members(index, shards, len(params))
        done = self.store.done()
        todo = [i for i in mine if i not in done]
        log.info("shard %d/%d: %d candidates (%d already evaluated)", index, shards, len(mine), len(mine) - len(todo))
        s = self.searcher
        for n, i in enumerate(todo, 1):
            started = time.monotonic()
            one = GridSearchCV(clone(s.estimator), [{k: [v] for k, v in params[i].items()}], scoring=s.scoring,
                               cv=s.cv, n_jobs=s.n_jobs, refit=False, error_score=s.error_score)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*least populated class.*")
                one.fit(X, y)
            r = one.cv_results_
            scores = [float(r[f"split{j}_test_score"][0]) for j in range(one.n_splits_)]
            record = {"candidate": i, "params": json.loads(_key(params[i])), "scores": scores, "shard": index,
                      "fitSeconds": float(r["mean_fit_time"][0]), "scoreSeconds": float(r["mean_score_time"][0]),
                      "seconds": round(time.monotonic() - started, 4)}
            self.store.put(i, record)
            log.info("candidate %d (%d/%d of shard %d): mean %.6g", i, n, len(todo), index, float(np.mean(scores)))
        best = None
        for i in mine:
            rec = self.store.get(i)
            mean = float(np.mean(rec["scores"]))
            if not np.isnan(mean) and (best is None or mean > best["score"]):
                best = {"candidate": i, "score": mean, "std": float(np.std(rec["scores"])),
                        "params": {k.split("__", 1)[-1]: v for k, v in rec["params"].items()}}
        if best is not None and len(json.dumps(best["params"])) > 2000:  # the termination message stays < 4 KiB
            best["params"] = {"truncated": True}
        return {"status": "Succeeded", "search": {"shard": index, "shards": shards, "candidates": len(mine),
                                                  "evaluated": len(todo), "best": best}}

    def _collect(self, params: list[dict], X, y) -> None:
        done = self.store.done()
        missing = [i for i in range(len(params)) if i not in done]
        if missing:
            raise TrainerError(f"search results incomplete under {self.store.uri}: {len(missing)} of {len(params)} "
                               f"candidates missing (first: {missing[:5]})")
        records = [self.store.get(i) for i in range(len(params))]
        for i, rec in enumerate(records):
            if json.dumps(rec["params"], sort_keys=True) != _key(params[i]):
                raise TrainerError(f"search result {i} under {self.store.uri} is for other params "
                                   f"({rec['params']} != {_key(params[i])}); was the spec changed?")
        array = np.array([rec["scores"] for rec in records], dtype=np.float64)
        means, stds, ranks = _store_means(array)
        results = {"params": params, "mean_test_score": means, "std_test_score": stds, "rank_test_score": ranks,
                   "mean_fit_time": np.array([rec.get("fitSeconds", 0.0) for rec in records])}
        for j in range(array.shape[1]):
            results[f"split{j}_test_score"] = array[:, j]
        self.cv_results_ = results
        self.n_splits_ = array.shape[1]
        self.best_index_ = int(ranks.argmin())
        self.best_score_ = float(means[self.best_index_])
        self.best_params_ = params[self.best_index_]
        log.info("search across %d shards: best candidate %d, %.6g", len({r.get("shard") for r in records}),
                 self.best_index_, self.best_score_)
        s = self.searcher
        # as BaseSearchCV.fit refits: a clone of the estimator with the best params, on all the data
        self.best_estimator_ = clone(s.estimator).set_params(**clone(self.best_params_, safe=False)).fit(X, y)


def wrap(searcher):
    """search.run's hook: the searcher itself, or its stand-in when the search runs across pods."""
    uri = results_uri()
    if uri is None or not isinstance(searcher, GridSearchCV | RandomizedSearchCV):  # halving stays in one pod
        return searcher
    return ShardedSearch(searcher, uri, shard())


# --- the card's list of candidates -----------------------------------------------------------------
def _score(value) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


def _short(params: dict) -> dict:
    return modelcard.jsonable({k.split("__", 1)[-1]: v for k, v in params.items()})


def table(searcher) -> dict:
    """Additions to the card's search section: every candidate's mean and std (and, for successive
    halving, the budget each candidate reached before it was stopped)."""
    r = searcher.cv_results_
    if "iter" not in r:
        return {"results": [{"params": _short(p), "mean": _score(m), "std": _score(s), "rank": int(k)}
                            for p, m, s, k in zip(r["params"], r["mean_test_score"], r["std_test_score"],
                                                  r["rank_test_score"], strict=True)]}
    last: dict[str, int] = {}
    for row, p in enumerate(r["params"]):  # rows come iteration by iteration: the last one a candidate reached
        last[_key(p)] = row
    final = int(max(r["iter"]))
    rows = sorted(last.values(), key=lambda row: (-int(r["iter"][row]), -float(np.nan_to_num(
        r["mean_test_score"][row], nan=-np.inf)), row))
    results = [{"params": _short(r["params"][row]), "mean": _score(r["mean_test_score"][row]),
                "std": _score(r["std_test_score"][row]), "budget": int(r["n_resources"][row]),
                "iteration": int(r["iter"][row]), "stopped": int(r["iter"][row]) < final} for row in rows]
    return {"results": results, "candidates": len(results),
            "halving": {"factor": searcher.factor, "resource": searcher.resource.split("__", 1)[-1],
                        "iterations": int(searcher.n_iterations_),
                        "nResources": [int(n) for n in searcher.n_resources_],
                        "nCandidates": [int(n) for n in searcher.n_candidates_]}}


# --- the shard pod's command ---------------------------------------------------------------------------
def run_shard(spec: dict, train) -> dict:
    """Run the trainer up to the search; the search evaluates this pod's shard and ends the run."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="kiln-shard-") as tmp:
        try:
            train(spec, Path(tmp))
        except ShardDone as done:
            return done.summary
    raise TrainerError("the spec has no search to shard (spec.search)")
