"""Table-driven tests of serving_decide.decide: the Kiln Deployment's decisions without a cluster."""

from __future__ import annotations

import pytest

from kiln_contract import spec as specs
from kiln_operator import serving_decide
from kiln_operator.serving_decide import Observed, decide
from kiln_operator.serving_metrics import Sample
from kiln_operator.settings import Settings

CFG = Settings(trainer_image="kiln/trainer:t", server_image="kiln/server:t", allowed_images=["kiln/"])
NOW = 10_000.0


def entry(version: int, state: str = "Registered") -> dict:
    return {"version": version, "state": state, "uri": f"s3://kiln/m/ns/iris/v{version}", "formats": ["onnx"],
            "artifacts": {"onnx": {"file": "model.onnx", "sha256": "a" * 64}}}


def model(production: int | None = 1, versions=(1, 2), states: dict | None = None) -> dict:
    states = states or {}
    return {"metadata": {"name": "iris", "namespace": "ns"},
            "status": {"aliases": {"production": production} if production else {},
                       "versions": [entry(v, states.get(v, "Registered")) for v in versions]}}


def dep(status: dict | None = None, generation: int = 1, **spec) -> dict:
    full = specs.validate("Deployment", {"model": {"name": "iris"}, **spec})
    return {"metadata": {"name": "iris", "namespace": "ns", "uid": "u1", "generation": generation},
            "spec": full, "status": status or {}}


def observe(d: dict, m: dict | None = None, ready=None, replicas=None, desired=1, **kw) -> Observed:
    return Observed(dep=d, model=model() if m is None else m, ready=ready or {}, replicas=replicas or {},
                    desired=desired, now=kw.pop("now", NOW), **kw)


def cond(plan, kind: str) -> dict:
    return next(c for c in plan.status["conditions"] if c["type"] == kind)


# --- first rollout, and a rolling update that keeps the old version until the new one is full ------
def test_first_rollout_serves_the_alias_target():
    plan = decide(observe(dep()), CFG)
    assert plan.servers == {1: ("stable", 1)}
    assert plan.status["servingVersion"] == 1 and plan.status["rollingTo"] is None
    assert ("Normal", "RollingOut", "serving version 1") in plan.events
    assert cond(plan, "Ready")["reason"] == "Starting"


@pytest.mark.parametrize("new_ready, desired, finished", [
    (0, 3, False),   # nothing ready: both versions run
    (1, 3, False),   # one of three: the old version keeps serving (capacity never drops)
    (2, 3, False),
    (3, 3, True),    # full count: the old version goes
    (1, 1, True),
])
def test_rolling_update_keeps_the_old_version_until_the_new_has_its_full_count(new_ready, desired, finished):
    d = dep({"servingVersion": 1, "rollingTo": 2, "rollingStarted": NOW - 10}, replicas={"min": 1, "max": 4})
    plan = decide(observe(d, model(production=2), ready={1: 3, 2: new_ready}, replicas={1: 3, 2: 3},
                          desired=desired), CFG)
    if finished:
        assert plan.status["servingVersion"] == 2 and plan.status["rollingTo"] is None
        assert set(plan.servers) == {2}
        assert any(e[1] == "RolledOut" for e in plan.events)
    else:
        assert plan.status["servingVersion"] == 1 and plan.status["rollingTo"] == 2
        assert plan.servers == {1: ("stable", desired), 2: ("stable", desired)}
        assert plan.requeue_after is not None and plan.requeue_after > 0


def test_alias_move_starts_a_rolling_update():
    plan = decide(observe(dep({"servingVersion": 1}), model(production=2), ready={1: 1}, replicas={1: 1}), CFG)
    assert plan.status["rollingTo"] == 2 and plan.status["rollingStarted"] == NOW
    assert set(plan.servers) == {1, 2}


def test_rollout_past_its_deadline_is_abandoned_and_not_retried():
    started = NOW - serving_decide.ROLLOUT_DEADLINE - 1
    d = dep({"servingVersion": 1, "rollingTo": 2, "rollingStarted": started})
    plan = decide(observe(d, model(production=2), ready={1: 1, 2: 0}, replicas={1: 1, 2: 1}), CFG)
    assert plan.status["servingVersion"] == 1 and plan.status["rollingTo"] is None
    assert plan.status["failedVersions"] == [2] and set(plan.servers) == {1}
    assert cond(plan, "Degraded")["reason"] == "RolloutFailed"
    again = decide(observe(dep({**plan.status}), model(production=2), ready={1: 1}, replicas={1: 1}), CFG)
    assert again.status["rollingTo"] is None and set(again.servers) == {1}


# --- canary: steps, the error-rate gate, the p99 gate -------------------------------------------
CANARY = {"rollout": {"strategy": "canary", "steps": [10, 50, 100], "interval": 60, "maxErrorRate": 0.01,
                      "maxP99LatencyMs": 50}, "replicas": {"min": 2, "max": 10}}


def canary_status(step=0, started=NOW - 5) -> dict:
    return {"servingVersion": 1, "canaryVersion": 2, "canaryStep": step, "canaryStepStarted": started}


def sample(ok=100, errors=0, le=0.005) -> Sample:
    return Sample(requests={"200": ok, "500": errors}, buckets={le: ok + errors, float("inf"): ok + errors},
                  count=ok + errors)


def test_canary_starts_at_the_first_step():
    plan = decide(observe(dep({"servingVersion": 1}, **CANARY), model(production=2), ready={1: 2},
                          replicas={1: 2}, desired=10), CFG)
    assert plan.status["canaryVersion"] == 2 and plan.status["canaryStep"] == 0
    assert plan.servers == {1: ("stable", 9), 2: ("canary", 1)} and plan.reset_canary


@pytest.mark.parametrize("seen, elapsed, outcome", [
    (sample(), 5, "wait"),                       # healthy, step not over
    (sample(), 61, "next"),                      # healthy, step over: 10 % → 50 %
    (sample(ok=90, errors=10), 5, "rollback"),   # error rate 10 % > 1 %
    (sample(le=0.25), 5, "rollback"),            # p99 250 ms > 50 ms
    (sample(ok=10, le=0.25), 5, "wait"),         # too few requests to judge latency
    (None, 5, "wait"),                           # nothing seen yet
])
def test_canary_gates(seen, elapsed, outcome):
    plan = decide(observe(dep(canary_status(started=NOW - elapsed), **CANARY), model(production=2),
                          ready={1: 9, 2: 1}, replicas={1: 9, 2: 1}, desired=10, canary=seen), CFG)
    if outcome == "wait":
        assert plan.status["canaryVersion"] == 2 and plan.status["canaryStep"] == 0
        assert 0 < plan.requeue_after <= 60 and not plan.reset_canary
    elif outcome == "next":
        assert plan.status["canaryStep"] == 1 and plan.status["canaryStepStarted"] == NOW
        assert plan.servers == {1: ("stable", 5), 2: ("canary", 5)} and plan.reset_canary
    else:
        assert plan.status["canaryVersion"] is None and plan.status["servingVersion"] == 1
        assert plan.status["failedVersions"] == [2] and set(plan.servers) == {1}
        assert cond(plan, "Degraded")["reason"] == "CanaryFailed"


def test_canary_passing_the_last_step_is_promoted():
    plan = decide(observe(dep(canary_status(step=2, started=NOW - 61), **CANARY), model(production=2),
                          ready={1: 0, 2: 10}, replicas={1: 0, 2: 10}, desired=10, canary=sample()), CFG)
    assert plan.status["servingVersion"] == 2 and plan.status["canaryVersion"] is None
    assert set(plan.servers) == {2} and cond(plan, "Degraded")["reason"] == "CanaryPromoted"


def test_canary_never_ready_fails_after_its_interval():
    plan = decide(observe(dep(canary_status(started=NOW - 61), **CANARY), model(production=2),
                          ready={1: 9, 2: 0}, replicas={1: 9, 2: 1}, desired=10), CFG)
    assert plan.status["canaryVersion"] is None and "never became ready" in cond(plan, "Degraded")["message"]


# --- scale to zero and wake ---------------------------------------------------------------------
def test_scaled_to_zero_reports_it_and_wants_no_replica():
    d = dep({"servingVersion": 1}, replicas={"min": 0, "max": 2})
    plan = decide(observe(d, ready={1: 0}, replicas={1: 1}, desired=0), CFG)
    assert plan.servers == {1: ("stable", 0)}
    zero = decide(observe(d, ready={1: 0}, replicas={1: 0}, desired=0), CFG)
    assert cond(zero, "Ready")["reason"] == "ScaledToZero" and cond(zero, "Ready")["status"] == "True"


def test_wake_asks_for_a_replica_even_when_the_autoscaler_says_zero():
    d = dep({"servingVersion": 1}, replicas={"min": 0, "max": 2})
    plan = decide(observe(d, ready={1: 0}, replicas={1: 0}, desired=0, wake=True), CFG)
    assert plan.servers == {1: ("stable", 1)}
    assert cond(plan, "Ready")["reason"] == "Starting"


# --- HPA and PDB created and removed ------------------------------------------------------------
@pytest.mark.parametrize("spec, hpa, pdb, replicas", [
    ({"autoscaling": {"metric": "cpu", "target": 70}}, 1, False, None),  # the HPA owns replicas
    ({"autoscaling": {"metric": "concurrency"}}, None, False, 1),
    ({"replicas": {"min": 2, "max": 4}}, None, True, 2),
    ({"replicas": {"min": 1, "max": 4}}, None, False, 1),
])
def test_hpa_and_pdb_wanted_only_when_the_spec_asks(spec, hpa, pdb, replicas):
    desired = None if (spec.get("autoscaling") or {}).get("metric") == "cpu" else replicas
    plan = decide(observe(dep({"servingVersion": 1}, **spec), ready={1: 1}, replicas={1: 1}, desired=desired), CFG)
    assert plan.hpa_for == hpa and plan.pdb is pdb
    assert plan.servers[1] == ("stable", replicas)


# --- problems give a condition that names the field ---------------------------------------------
@pytest.mark.parametrize("m, spec, field", [
    (None, {}, "spec.model.name"),
    (model(production=None), {}, "spec.model.alias"),
    (model(production=2, states={2: "Rejected"}), {}, "spec.model"),
    (model(), {"image": "evil.example/x:1"}, "spec.image"),
    (model(), {"runtime": "sklearn"}, "spec.runtime"),
])
def test_unservable_specs_get_a_condition_naming_the_field(m, spec, field):
    absent = {"metadata": {"name": "iris", "namespace": "ns"}, "status": None}
    plan = decide(observe(dep(**spec), m if m is not None else absent, desired=1), CFG)
    if m is None:
        plan = decide(Observed(dep=dep(**spec), model=None, ready={}, replicas={}, desired=1, now=NOW), CFG)
    ready = cond(plan, "Ready")
    assert ready["status"] == "False" and ready["message"].startswith(field), ready
    assert plan.servers == {}


def test_a_conflicting_child_is_reported_on_ready():
    plan = decide(observe(dep({"servingVersion": 1}), ready={1: 1}, replicas={1: 1},
                          conflicts=["Service iris already exists and is not managed by this Deployment"]), CFG)
    assert cond(plan, "Ready")["reason"] == "ChildConflict" and "Service iris" in cond(plan, "Ready")["message"]


# --- drift --------------------------------------------------------------------------------------
DRIFT = {"monitoring": {"drift": {"enabled": True, "threshold": 0.2, "retrain": "iris-train"}}}


def test_drift_beginning_asks_for_a_retrain_once():
    first = decide(observe(dep({"servingVersion": 1}, **DRIFT), ready={1: 1}, replicas={1: 1},
                           drift=(True, {"petal_length": 0.9, "sepal_width": 0.01})), CFG)
    assert first.retrain == "iris-train" and cond(first, "Drifted")["status"] == "True"
    assert "petal_length PSI 0.90" in cond(first, "Drifted")["message"]
    again = decide(observe(dep(first.status, **DRIFT), ready={1: 1}, replicas={1: 1},
                           drift=(True, {"petal_length": 0.95})), CFG)
    assert again.retrain is None


@pytest.mark.parametrize("verdict, reason", [((None, {}), "InsufficientData"), ((False, {"x": 0.01}), "NoDrift")])
def test_drift_verdicts(verdict, reason):
    plan = decide(observe(dep({"servingVersion": 1}, **DRIFT), ready={1: 1}, replicas={1: 1}, drift=verdict), CFG)
    assert cond(plan, "Drifted")["reason"] == reason and plan.retrain is None


def test_unchanged_world_decides_the_same_status_again():
    first = decide(observe(dep(), ready={1: 1}, replicas={1: 1}), CFG)
    second = decide(observe(dep(first.status), ready={1: 1}, replicas={1: 1}), CFG)
    assert second.status == first.status and second.events == []
