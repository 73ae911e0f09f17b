"""A search split across shard runs (kiln_trainer.shards) gives the same card as the one-pod search."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from unittest import mock

import pytest

from kiln_contract import card as contract_card
from kiln_contract import search_plan
from kiln_trainer import cli


def run_cli(spec: dict, out: Path, tmp: Path, env: dict | None = None) -> tuple[int, dict, dict | None]:
    spec_path = tmp / f"spec-{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    buf = io.StringIO()
    with mock.patch.dict(os.environ, {"KILN_TERMINATION_LOG": str(tmp / f"term-{out.name}"), **(env or {})}):
        code = cli.main(["--spec", str(spec_path), "--output", str(out), "--log-level", "WARNING"], stdout=buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines
    card_path = out / "modelcard.json"
    return code, json.loads(lines[0]), contract_card.loads(card_path.read_bytes()) if card_path.exists() else None


def sharded(spec: dict, out: Path, tmp: Path, shards: int, order=None) -> tuple[list[dict], dict, dict]:
    results = out / "search"
    summaries = []
    for i in order or range(shards):
        code, summary, card = run_cli(spec, out, tmp, {search_plan.RESULTS_ENV: str(results),
                                                       search_plan.SHARD_ENV: f"{i}/{shards}"})
        assert code == 0, summary
        assert card is None  # a shard pod trains nothing
        summaries.append(summary)
    code, summary, card = run_cli(spec, out, tmp, {search_plan.RESULTS_ENV: str(results)})
    assert code == 0, summary
    return summaries, summary, card


SAME = ("method", "metric", "scorer", "cvFolds", "trials", "candidates", "gridSize", "truncated", "bestScore",
        "bestParams", "results")


@pytest.mark.parametrize("search", [
    {"method": "grid", "space": {"max_depth": [2, 3, 4, None], "min_samples_leaf": [1, 3, 9],
                                 "criterion": ["gini", "entropy"]}, "cvFolds": 3, "trials": 50},
    {"method": "random", "space": {"max_depth": {"randint": [2, 9]}, "min_samples_leaf": [1, 2, 4, 8]},
     "cvFolds": 3, "trials": 10},
    {"method": "grid", "space": {"max_depth": [2, 3, 4, 5, 6], "criterion": ["gini", "entropy"]}, "trials": 7,
     "cvFolds": 4},
])
def test_sharded_search_gives_the_one_pod_card(tmp_path, search):
    spec = {"model": "wine", "dataset": {"uri": "builtin:wine"}, "algorithm": {"name": "decision_tree"},
            "export": {"formats": ["joblib"]}, "search": search}
    code, _, one = run_cli(spec, tmp_path / "one", tmp_path)
    assert code == 0
    total = one["search"]["candidates"]
    assert total == search_plan.candidate_count(search)
    assert len(one["search"]["results"]) == total
    summaries, summary, many = sharded(spec, tmp_path / "many", tmp_path, 3, order=[2, 0, 1])
    assert sum(s["search"]["candidates"] for s in summaries) == total
    assert {k: many["search"][k] for k in SAME} == {k: one["search"][k] for k in SAME}
    assert many["metrics"] == one["metrics"] and many["params"] == one["params"]
    assert summary["bestParams"] == one["search"]["bestParams"]
    best = max((s["search"]["best"] for s in summaries), key=lambda b: b["score"])
    assert best["score"] == pytest.approx(one["search"]["bestScore"])


def test_a_retried_shard_resumes_and_missing_results_fail_the_final_pod(tmp_path):
    spec = {"model": "wine", "dataset": {"uri": "builtin:wine"}, "algorithm": {"name": "decision_tree"},
            "export": {"formats": ["joblib"]},
            "search": {"space": {"max_depth": [2, 3, 4, 5]}, "cvFolds": 2}}
    out = tmp_path / "run"
    env = {search_plan.RESULTS_ENV: str(out / "search"), search_plan.SHARD_ENV: "0/2"}
    code, first, _ = run_cli(spec, out, tmp_path, env)
    assert code == 0 and first["search"]["evaluated"] == 2
    code, again, _ = run_cli(spec, out, tmp_path, env)  # the shard's pod retried: nothing evaluated twice
    assert code == 0 and again["search"]["evaluated"] == 0 and again["search"]["best"] == first["search"]["best"]
    code, summary, card = run_cli(spec, out, tmp_path, {search_plan.RESULTS_ENV: str(out / "search")})
    assert code == 1 and card is None and "2 of 4 candidates missing" in summary["message"]


def test_an_indexed_job_completion_index_names_the_shard(monkeypatch):
    from kiln_trainer import shards

    env = {search_plan.RESULTS_ENV: "s3://b/p/search", search_plan.INDEX_ENV: "3", search_plan.SHARDS_ENV: "4"}
    assert shards.shard(env) == (3, 4)
    assert shards.shard({search_plan.RESULTS_ENV: "x"}) is None


def test_halving_records_the_budget_each_candidate_reached(tmp_path):
    spec = {"model": "bc", "dataset": {"uri": "builtin:breast_cancer"}, "algorithm": {"name": "decision_tree"},
            "export": {"formats": ["joblib"]},
            "search": {"method": "halving", "space": {"max_depth": [1, 2, 3, 4, 5, 6, 8, None],
                                                      "min_samples_leaf": [1, 4, 16]},
                       "trials": 100, "cvFolds": 3, "halving": {"factor": 3, "minResources": 40}}}
    code, summary, card = run_cli(spec, tmp_path / "halving", tmp_path)
    assert code == 0, summary
    s = card["search"]
    assert s["candidates"] == 24 and len(s["results"]) == 24
    h = s["halving"]
    assert h["factor"] == 3 and h["resource"] == "n_samples" and h["nCandidates"][0] == 24
    stopped = [r for r in s["results"] if r["stopped"]]
    finished = [r for r in s["results"] if not r["stopped"]]
    assert stopped and finished and len(finished) == h["nCandidates"][-1]
    assert all(r["budget"] < max(h["nResources"]) for r in stopped)
    assert all(r["budget"] == h["nResources"][-1] for r in finished)
    assert s["bestParams"] in [r["params"] for r in finished]


def test_halving_over_estimators(tmp_path):
    spec = {"model": "bc", "dataset": {"uri": "builtin:breast_cancer"}, "algorithm": {"name": "random_forest"},
            "export": {"formats": ["joblib"]},
            "search": {"method": "halving", "space": {"max_depth": [2, 4, 8], "max_features": ["sqrt", "log2"]},
                       "cvFolds": 2, "halving": {"resource": "n_estimators", "minResources": 2,
                                                 "maxResources": 18}}}
    code, summary, card = run_cli(spec, tmp_path / "est", tmp_path)
    assert code == 0, summary
    s = card["search"]
    h = s["halving"]
    assert h["resource"] == "n_estimators" and h["nCandidates"][0] == 6 and h["nResources"][0] == 2
    assert max(r["budget"] for r in s["results"]) == h["nResources"][-1] == card["params"]["n_estimators"]
