"""The registry's rules: reservations, commits, promotion, pins, retention, rebuild."""

import pytest

from kiln_operator import registry


def card(acc: float, passed: bool = True) -> dict:
    return {"metrics": {"accuracy": acc}, "params": {"n": 1}, "task": "classification",
            "gates": [{"metric": "accuracy", "op": ">=", "value": 0.5, "actual": acc, "passed": passed}],
            "artifacts": [{"file": "model.joblib", "format": "joblib", "sha256": "b" * 64, "bytes": 2},
                          {"file": "model.onnx", "format": "onnx", "sha256": "a" * 64, "bytes": 1}],
            "dataset": {"uri": "builtin:iris", "sha256": "c" * 64, "rows": 150, "columns": 5}}


AUTO = {"promotion": {"policy": "auto", "metric": "accuracy", "minImprovement": 0.01}}


def test_reservation_is_idempotent_per_run():
    status, v1 = registry.reserve({}, "uid/g1", "iris", "t0")
    again, same = registry.reserve(status, "uid/g1", "iris", "t1")
    assert v1 == same == 1 and again == status
    status, v2 = registry.reserve(status, "uid/g2", "iris", "t2")
    assert v2 == 2 and [v["state"] for v in status["versions"]] == ["Pending", "Pending"]


def test_numbers_continue_after_a_rebuild_or_failure():
    status, v = registry.reserve({"latestVersion": 7}, "r", "tj", "t")
    assert v == 8
    status = registry.fail(status, 8, "OOMKilled")
    status, v = registry.reserve(status, "r2", "tj", "t")
    assert v == 9 and registry.find(status, 8)["state"] == "Failed"


def test_commit_records_the_card_and_is_idempotent():
    status, v = registry.reserve({}, "r", "iris", "t")
    status = registry.commit(status, v, card(0.9), "s3://b/iris/v1", "t1")
    entry = registry.find(status, 1)
    assert entry["state"] == "Registered" and entry["sha256"] == "a" * 64  # onnx is the primary artifact
    assert entry["formats"] == ["joblib", "onnx"] and entry["dataset"]["rows"] == 150
    assert status["latestVersion"] == 1
    assert registry.commit(status, v, card(0.1, passed=False), "x", "t2") == status


def test_failed_gate_is_rejected_and_never_promoted():
    status, v = registry.reserve({}, "r", "iris", "t")
    status = registry.commit(status, v, card(0.99, passed=False), "u", "t")
    assert registry.find(status, 1)["state"] == "Rejected"
    status, promoted = registry.promote(AUTO, status, 1)
    assert not promoted and "production" not in status.get("autoAliases", {})


@pytest.mark.parametrize(("second", "moves"), [(0.95, True), (0.905, False), (0.85, False)])
def test_auto_promotion_needs_min_improvement(second, moves):
    status = {}
    for n, acc in enumerate((0.9, second), start=1):
        status, v = registry.reserve(status, f"r{n}", "iris", "t")
        status = registry.commit(status, v, card(acc), "u", "t")
        status, _ = registry.promote(AUTO, status, v)
    assert status["autoAliases"]["production"] == (2 if moves else 1)


def test_lower_is_better_metrics():
    spec = {"promotion": {"policy": "auto", "metric": "rmse", "higherIsBetter": False}}
    status = {}
    for n, rmse in enumerate((10.0, 8.0, 9.0), start=1):
        status, v = registry.reserve(status, f"r{n}", "m", "t")
        status = registry.commit(status, v, card(0.9) | {"metrics": {"rmse": rmse}, "task": "regression"}, "u", "t")
        status, _ = registry.promote(spec, status, v)
    assert status["autoAliases"]["production"] == 2


def test_manual_policy_never_promotes():
    status, v = registry.reserve({}, "r", "iris", "t")
    status = registry.commit(status, v, card(0.9), "u", "t")
    status, promoted = registry.promote({"promotion": {"policy": "manual"}}, status, v)
    assert not promoted


def test_pins_win_and_bad_pins_are_reported_by_field():
    status = {}
    for n, (acc, ok) in enumerate(((0.9, True), (0.95, True), (0.99, False)), start=1):
        status, v = registry.reserve(status, f"r{n}", "iris", "t")
        status = registry.commit(status, v, card(acc, ok), "u", "t")
        status, _ = registry.promote(AUTO, status, v)
    resolved, problems = registry.resolve_aliases({"aliases": {"production": 1}}, status)
    assert resolved["aliases"]["production"] == 1 and not problems
    resolved, problems = registry.resolve_aliases({"aliases": {"production": 3, "staging": 9}}, status)
    assert resolved["aliases"] == {"production": 2}  # the auto choice stands
    assert any(p.startswith("spec.aliases.production: version 3 is Rejected") for p in problems)
    assert any(p.startswith("spec.aliases.staging: version 9 is not registered") for p in problems)


def test_retention_archives_old_versions_but_not_used_ones():
    status = {}
    for n in range(1, 6):
        status, v = registry.reserve(status, f"r{n}", "iris", "t")
        status = registry.commit(status, v, card(0.9), "u", "t")
    status["aliases"] = {"production": 1}
    status = registry.apply_retention({"retention": {"keepLast": 2}}, status, in_use={2})
    states = {v["version"]: v["state"] for v in status["versions"]}
    assert states == {1: "Registered", 2: "Registered", 3: "Archived", 4: "Registered", 5: "Registered"}


def test_rebuild_from_cards_replays_promotion():
    found = {1: ("s3://b/iris/v1", card(0.9), "a" * 64), 2: ("s3://b/iris/v2", card(0.8), "b" * 64),
             4: ("s3://b/iris/v4", card(0.97), "c" * 64)}
    status = registry.rebuild(AUTO, found, "t")
    assert [v["cardSha256"] for v in status["versions"]] == ["a" * 64, "b" * 64, "c" * 64]
    assert [v["version"] for v in status["versions"]] == [1, 2, 4]
    assert status["latestVersion"] == 4 and status["autoAliases"]["production"] == 4
    _, v = registry.reserve(status, "new", "iris", "t")
    assert v == 5
