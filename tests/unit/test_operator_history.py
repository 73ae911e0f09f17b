"""A Model's status stays small: which versions move to the history index, how they come back, and the
deciding metric in one place (registry.promotion_metric)."""

import json

import pytest

from kiln_operator import models, registry


def card(value: float, task: str = "classification", metric: str = "accuracy") -> dict:
    return {"metrics": {metric: value}, "params": {}, "task": task, "gates": [],
            "artifacts": [{"file": "model.onnx", "format": "onnx", "sha256": "a" * 64, "bytes": 1}],
            "dataset": {}}


def registered(n: int, **kw) -> dict:
    status = {}
    for i in range(1, n + 1):
        status, v = registry.reserve(status, f"r{i}", "m", "t")
        status = registry.commit(status, v, card(0.5 + i / 1000, **kw), f"s3://b/m/v{v}", "t")
    return status


def numbers(status: dict) -> list[int]:
    return [v["version"] for v in status["versions"]]


@pytest.mark.parametrize("count,keep,protected,slack,moved", [
    (30, 20, set(), None, []),                      # within keep + slack: nothing moves yet
    (41, 20, set(), None, list(range(1, 22))),      # beyond it: all but the newest 20
    (41, 20, {3, 7}, None, [v for v in range(1, 22) if v not in (3, 7)]),  # aliases and Deployments keep theirs
    (25, 20, set(), 0, [1, 2, 3, 4, 5]),            # a rebuild moves at once (slack 0)
    (5, 1, set(), 0, [1, 2, 3, 4]),
])
def test_to_history_moves_old_unused_versions(count, keep, protected, slack, moved):
    status = registered(count)
    assert [v["version"] for v in registry.to_history(status, keep, protected, slack)] == moved


def test_pending_versions_never_move():
    status = registered(45)
    status, v = registry.reserve(status, "late", "m", "t")
    status["versions"][0]["state"] = "Pending"
    out = registry.to_history(status, 20, set(), None)
    assert 1 not in [e["version"] for e in out] and v not in [e["version"] for e in out]


def test_protected_versions_are_aliases_auto_aliases_and_uses():
    status = {"aliases": {"production": 4, "staging": 9}, "autoAliases": {"production": 12}}
    assert registry.protected_versions(status, {2}) == {2, 4, 9, 12}


def test_moved_out_then_numbers_continue_and_restored_brings_back():
    status = registered(41)
    moved = registry.to_history(status, 20, set(), None)
    small = registry.moved_out(status, moved, uri="s3://b/m/index/", count=21, highest=21)
    assert numbers(small) == list(range(22, 42)) and small["history"] == {"uri": "s3://b/m/index/", "count": 21,
                                                                           "highest": 21}
    _, v = registry.reserve(small, "next", "m", "t")
    assert v == 42
    # Everything moved out (all failed, say): numbering still continues after the history's highest.
    emptied = registry.moved_out(small, small["versions"], uri="u", count=41, highest=41)
    emptied["latestVersion"] = None
    assert registry.reserve(emptied, "x", "m", "t")[1] == 42
    back = registry.restored(small, [moved[2], moved[0], small["versions"][0]])
    assert numbers(back) == [1, 3] + list(range(22, 42))


def test_merge_history_overwrites_by_version_in_order():
    page = [{"version": 1, "state": "Registered"}, {"version": 3, "state": "Registered"}]
    merged = registry.merge_history(page, [{"version": 2, "state": "Failed"}, {"version": 3, "state": "Archived"}])
    assert merged == [{"version": 1, "state": "Registered"}, {"version": 2, "state": "Failed"},
                      {"version": 3, "state": "Archived"}]
    assert registry.history_pages([1, 500, 501, 1000, 1001]) == {0, 1, 2}


def test_rebuild_takes_history_as_recorded_and_replays_promotion_over_all():
    auto = {"promotion": {"policy": "auto"}}
    history = {1: {"version": 1, "state": "Archived", "metrics": {"accuracy": 0.99}, "task": "classification"},
               2: {"version": 2, "state": "Failed", "reason": "OOMKilled"},
               3: {"version": 3, "state": "Registered", "metrics": {"accuracy": 0.9}, "task": "classification"}}
    cards = {4: ("s3://b/m/v4", card(0.8), "d" * 64), 5: ("s3://b/m/v5", card(0.95), "e" * 64)}
    status = registry.rebuild(auto, cards, "t", history)
    assert numbers(status) == [1, 2, 3, 4, 5]
    assert [v["state"] for v in status["versions"]] == ["Archived", "Failed", "Registered", "Registered",
                                                        "Registered"]
    assert status["autoAliases"] == {"production": 5} and status["latestVersion"] == 5
    assert status["versions"][3]["source"] == "storage" and "source" not in status["versions"][0]


def test_rebuild_of_thousands_of_versions_fits_in_a_small_status():
    cards = {n: (f"s3://b/m/v{n}", card(0.5), "a" * 64) for n in range(1, 5001)}
    status = registry.rebuild({"promotion": {"policy": "auto"}}, cards, "t")
    moved = registry.to_history(status, 20, registry.protected_versions(status, set()), 0)
    small = registry.moved_out(status, moved, uri="u", count=len(moved), highest=max(v["version"] for v in moved))
    assert numbers(small) == [1] + list(range(4981, 5001))  # production (the first, never beaten) stays
    assert len(json.dumps(small)) < 64 * 1024


# --- the deciding metric ----------------------------------------------------------------------------
@pytest.mark.parametrize("spec,task,expected", [
    ({}, "classification", ("accuracy", True, None)),
    ({}, "regression", ("r2", True, None)),
    ({"promotion": {"metric": "rmse"}}, "regression", ("rmse", False, None)),
    ({"promotion": {"metric": "rmse", "higherIsBetter": True}}, "regression", ("rmse", True, None)),
    ({"promotion": {"metric": "f1_macro"}}, "classification", ("f1_macro", True, None)),
    ({"promotion": {"metric": "custom"}}, None, ("custom", True, None)),
])
def test_promotion_metric_by_task(spec, task, expected):
    assert registry.promotion_metric(spec, task) == expected


def test_a_metric_the_task_lacks_falls_back_and_says_so():
    metric, higher, problem = registry.promotion_metric({"promotion": {"metric": "accuracy"}}, "regression")
    assert (metric, higher) == ("r2", True) and "accuracy" in problem and "regression" in problem


def test_regression_promotes_by_r2_without_a_configured_metric():
    spec = {"promotion": {"policy": "auto"}}
    status = {}
    for i, r2 in enumerate((0.5, 0.7, 0.6), start=1):
        status, v = registry.reserve(status, f"r{i}", "m", "t")
        status = registry.commit(status, v, card(r2, task="regression", metric="r2"), "u", "t")
        status, _ = registry.promote(spec, status, v)
    assert status["autoAliases"]["production"] == 2


def test_model_condition_names_the_metric_field():
    model = {"metadata": {"name": "m", "generation": 3},
             "spec": {"promotion": {"policy": "auto", "metric": "accuracy"}}}
    status = models.settle(model, registered(2, task="regression", metric="r2"), [])
    cond = next(c for c in status["conditions"] if c["type"] == "PromotionMetricValid")
    assert cond["status"] == "False" and cond["reason"] == "MetricNotForTask"
    assert cond["message"].startswith("spec.promotion.metric:")
    model["spec"]["promotion"]["metric"] = "r2"
    status = models.settle(model, status, [])
    assert next(c for c in status["conditions"] if c["type"] == "PromotionMetricValid")["status"] == "True"
