"""Pure parts of the event-driven operator: the work queue, children planning, status diffs, the
autoscaler across a restart, the sampler's tallies, and TrainingJob decisions that need no cluster."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from kiln_operator import apply, kube, trainingjobs
from kiln_operator.autoscaler import Autoscaler
from kiln_operator.reconcile import status_changes
from kiln_operator.serving_state import ServingState
from kiln_operator.workqueue import WorkQueue
from kiln_operator.world import TrainingWorld


# --- work queue ---------------------------------------------------------------------------------
def test_queue_holds_a_key_once_and_requeues_one_added_while_in_progress():
    async def scenario():
        q = WorkQueue()
        q.add("a")
        q.add("a")
        q.add("b")
        assert len(q) == 2
        first = await q.get()
        q.add(first)  # an event while it is being handled
        second = await q.get()
        assert (first, second) == ("a", "b")
        q.done("a")  # handled: the event that came meanwhile queues it again
        assert await asyncio.wait_for(q.get(), 1) == "a"
        q.done("a")
        q.done("b")
        assert len(q) == 0

    asyncio.run(scenario())


def test_queue_add_after_keeps_the_earliest_deadline():
    async def scenario():
        q = WorkQueue()
        q.add_after("k", 5.0)
        q.add_after("k", 0.01)
        q.add_after("k", 3.0)
        assert await asyncio.wait_for(q.get(), 1) == "k"
        q.done("k")
        q.add_after("gone", 0.01)
        q.forget("gone")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(q.get(), 0.1)

    asyncio.run(scenario())


def test_a_model_waits_while_one_of_its_runs_is_queued_or_being_handled():
    from kiln_operator.controller import Controller
    from kiln_operator.settings import Settings

    async def scenario():
        tj = {"metadata": {"name": "run-a", "namespace": "ns", "generation": 1}, "spec": {"model": "iris"}}
        ctl = Controller(Settings(), {"trainingjobs_by_model": {("ns", "iris"): ["run-a"]},
                                      "kiln_trainingjobs": {("ns", "run-a"): [tj]}})
        assert not ctl._runs_starting("ns", "iris")
        ctl.queue.add(("TrainingJob", "ns", "run-a"))
        assert ctl._runs_starting("ns", "iris") and not ctl._runs_starting("ns", "other")
        key = await ctl.queue.get()  # being handled: still starting
        assert ctl._runs_starting("ns", "iris")
        ctl.queue.done(key)
        assert not ctl._runs_starting("ns", "iris")
        ctl.queue.add_after(("TrainingJob", "ns", "run-a"), 60)  # a retry later is not a run starting now
        assert not ctl._runs_starting("ns", "iris")
        tj["status"] = {"jobName": "run-a-v1", "observedGeneration": 1}
        ctl.queue.add(("TrainingJob", "ns", "run-a"))  # an event of a run that has its Job: not starting
        assert not ctl._runs_starting("ns", "iris")
        ctl.executor.shutdown()
        ctl.event_executor.shutdown()

    asyncio.run(scenario())


# --- children: apply what changed, prune what is ours, never touch others ------------------------
def svc(name="iris", uid="u1", applied=None, kind="Service") -> dict:
    meta = {"name": name, "ownerReferences": [{"uid": uid, "controller": True}] if uid else []}
    if applied:
        meta["annotations"] = {apply.APPLIED: applied}
    return {"kind": kind, "metadata": meta}


WANT = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris", "namespace": "ns"}, "spec": {"x": 1}}
VERSIONS = {"Service": "v1", "Deployment": "apps/v1", "PodDisruptionBudget": "policy/v1"}


def test_children_plan_table():
    fp = apply.fingerprint(WANT)
    assert [m["metadata"]["name"] for m in apply.plan([WANT], {}, "u1", VERSIONS).create] == ["iris"]
    same = apply.plan([WANT], {("Service", "iris"): svc(applied=fp)}, "u1", VERSIONS)
    assert (same.apply, same.create, same.delete, same.conflicts) == ([], [], [], [])
    changed = apply.plan([WANT], {("Service", "iris"): svc(applied="old")}, "u1", VERSIONS)
    assert changed.apply[0]["metadata"]["annotations"][apply.APPLIED] == fp
    stranger = apply.plan([WANT], {("Service", "iris"): svc(uid="someone-else", applied="old")}, "u1", VERSIONS)
    assert stranger.apply == [] and "Service iris already exists" in stranger.conflicts[0]
    pruned = apply.plan([WANT], {("Service", "iris"): svc(applied=fp),
                                 ("PodDisruptionBudget", "iris"): svc(kind="PodDisruptionBudget"),
                                 ("Deployment", "other"): svc(name="other", uid="x", kind="Deployment")},
                        "u1", VERSIONS)
    assert pruned.delete == [("policy/v1", "PodDisruptionBudget", "iris")]  # not the stranger's Deployment


def test_a_hand_scaled_server_is_scaled_back():
    want = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "iris-v1", "namespace": "ns"},
            "spec": {"replicas": 2}}
    owner = [{"uid": "u1", "controller": True}]
    have = {"kind": "Deployment", "metadata": {"name": "iris-v1", "ownerReferences": owner,
                                               "annotations": {apply.APPLIED: apply.fingerprint(want)}},
            "spec": {"replicas": 5}}
    assert len(apply.plan([want], {("Deployment", "iris-v1"): have}, "u1", VERSIONS).apply) == 1
    have["spec"]["replicas"] = 2
    assert apply.plan([want], {("Deployment", "iris-v1"): have}, "u1", VERSIONS).apply == []


def test_a_hand_edited_configmap_is_put_back():
    want = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "iris-logging", "namespace": "ns"},
            "data": {"sampleRate": "0.5"}}
    owner = [{"uid": "u1", "controller": True}]
    have = {"kind": "ConfigMap", "metadata": {"name": "iris-logging", "ownerReferences": owner,
                                              "annotations": {apply.APPLIED: apply.fingerprint(want)}},
            "data": {"sampleRate": "1"}}
    assert apply.plan([want], {("ConfigMap", "iris-logging"): have}, "u1", VERSIONS).apply[0]["data"] == want["data"]
    have["data"] = {"sampleRate": "0.5"}
    assert apply.plan([want], {("ConfigMap", "iris-logging"): have}, "u1", VERSIONS).apply == []


def test_fingerprint_ignores_key_order():
    a = {"kind": "Service", "metadata": {"name": "x", "labels": {"a": "1", "b": "2"}}}
    b = {"metadata": {"labels": {"b": "2", "a": "1"}, "name": "x"}, "kind": "Service"}
    assert apply.fingerprint(a) == apply.fingerprint(b)
    assert apply.fingerprint(a) != apply.fingerprint({**a, "kind": "Other"})


# --- status: write only what changes -------------------------------------------------------------
@pytest.mark.parametrize("current, patch, changes", [
    ({"phase": "Succeeded", "observedGeneration": 1}, {"observedGeneration": 1}, {}),
    ({"phase": "Succeeded"}, {"metrics": None}, {}),  # None and absent are the same
    ({"phase": "Pending", "metrics": {"a": 1}}, {"metrics": None, "phase": "Pending"}, {"metrics": None}),
    (None, {"phase": "Pending"}, {"phase": "Pending"}),
    ({"conditions": [{"type": "Ready"}]}, {"conditions": [{"type": "Ready"}]}, {}),
])
def test_status_changes(current, patch, changes):
    assert status_changes(current, patch) == changes


@pytest.mark.parametrize("url, resource", [
    ("https://h/apis/kiln.dev/v1alpha1/namespaces/ns/models/iris/status", "models/status"),
    ("https://h/apis/batch/v1/namespaces/ns/jobs", "jobs"),
    ("https://h/api/v1/namespaces/ns/events", "events"),
    ("https://h/apis/apps/v1/namespaces/ns/deployments/iris-v1?fieldManager=kiln&force=true", "deployments"),
    ("https://h/apis", "other"),
])
def test_api_requests_are_labelled_by_resource(url, resource):
    assert kube.resource_of(url) == resource


# --- autoscaler across an operator restart -------------------------------------------------------
SPEC = {"replicas": {"min": 0, "max": 4}, "autoscaling": {"metric": "rps", "target": 10, "stableWindow": 30,
                                                          "panicWindow": 6, "scaleToZeroAfter": 60}}


def test_a_restarted_autoscaler_neither_scales_down_nor_to_zero_before_a_full_window():
    fresh = Autoscaler()
    assert fresh.desired(1000.0, 3, SPEC) == 3
    for t in range(1001, 1010):
        fresh.observe(float(t), 0.0, 1.0)  # a trickle that alone would ask for one replica
    assert fresh.desired(1010.0, 3, SPEC) == 3  # only 10 s of a 30 s window seen
    for t in range(1010, 1035):
        fresh.observe(float(t), 0.0, 1.0)
    assert fresh.desired(1035.0, 3, SPEC) == 1  # a whole window: now it may


def test_a_restarted_autoscaler_keeps_zero_at_zero_until_a_request():
    fresh = Autoscaler()
    assert fresh.desired(1000.0, 0, SPEC) == 0
    fresh.poke(1001.0)
    assert fresh.desired(1001.0, 0, SPEC) == 1
    assert fresh.desired(1001.0 + 61, 1, SPEC) == 0  # idle for scaleToZeroAfter


def test_panic_scales_up_at_once_even_right_after_a_restart():
    fresh = Autoscaler()
    fresh.desired(1000.0, 1, SPEC)
    for t in range(1001, 1004):
        fresh.observe(float(t), 0.0, 40.0)
    assert fresh.desired(1004.0, 1, SPEC) == 4


# --- the sampler's tallies -----------------------------------------------------------------------
def metrics_text(ok: int, seconds: float) -> str:
    return (f'kiln_inference_requests_total{{code="200"}} {ok}\n'
            f'kiln_inference_request_duration_seconds_bucket{{le="0.01"}} {ok}\n'
            f'kiln_inference_request_duration_seconds_bucket{{le="+Inf"}} {ok}\n'
            f"kiln_inference_request_duration_seconds_count {ok}\n"
            f"kiln_inference_request_duration_seconds_sum {seconds}\n")


def pod(name: str, version: int) -> dict:
    return {"metadata": {"name": name, "labels": {"kiln.dev/version": str(version)}}}


def test_ingest_feeds_the_autoscaler_and_the_canary_tally():
    state = ServingState()
    state.ingest(100.0, [(pod("a", 1), metrics_text(10, 0.1)), (pod("b", 2), metrics_text(0, 0))], canary=2)
    assert state.canary_seen is None and not state.autoscaler.points  # a first round is only a baseline
    state.ingest(101.0, [(pod("a", 1), metrics_text(30, 0.3)), (pod("b", 2), metrics_text(5, 0.05))], canary=2)
    t, concurrency, rps = state.autoscaler.points[-1]
    assert (t, rps) == (101.0, 25.0) and concurrency == pytest.approx(0.25)
    assert state.canary_seen.total == 5
    state.ingest(102.0, [(pod("a", 1), metrics_text(30, 0.3)), (pod("b", 2), metrics_text(9, 0.09))], canary=2)
    assert state.canary_seen.total == 9
    state.reset_canary()
    state.ingest(103.0, [(pod("a", 1), metrics_text(30, 0.3)), (pod("b", 2), metrics_text(10, 0.1))], canary=2)
    assert state.canary_seen.total == 1


# --- TrainingJob decisions that need no cluster ---------------------------------------------------
def tj(status=None, **spec) -> dict:
    return {"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "t", "namespace": "ns", "uid": "u", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"model": "iris", "dataset": {"uri": "builtin:iris", "target": "species"},
                     "algorithm": {"name": "random_forest"}, **spec},
            "status": status or {}}


def test_cron_schedule_looks_again_at_the_next_tick():
    now = dt.datetime(2026, 1, 1, 0, 30, 10, tzinfo=dt.UTC)
    obj = tj(schedule="0 * * * *")
    assert trainingjobs.due_run(obj, obj["spec"], {}, now) is None
    assert trainingjobs.seconds_to_next_tick(obj, obj["spec"], {}, now) == pytest.approx(29 * 60 + 50)
    assert trainingjobs.seconds_to_next_tick(tj(), tj()["spec"], {}, now) is None


def test_a_job_we_just_created_is_not_mistaken_for_a_deleted_one():
    status = {"phase": "Pending", "jobName": "t-v1", "modelVersion": 1, "artifactURI": "s3://kiln/x/v1"}
    world = TrainingWorld(tj=tj(status), model=None, model_users=[], job=None, job_expected=True, pods=[])
    result = trainingjobs.reconcile(world, None)
    assert result.status is None and not result.acted


def test_a_running_pod_moves_the_phase_and_says_so_once():
    status = {"phase": "Pending", "jobName": "t-v1", "modelVersion": 1, "artifactURI": "s3://kiln/x/v1",
              "observedGeneration": 1}
    job = {"metadata": {"name": "t-v1"}, "spec": {}, "status": {"active": 1}}
    running = {"metadata": {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}}
    world = TrainingWorld(tj=tj(status), model=None, model_users=[], job=job, job_expected=False, pods=[running])
    result = trainingjobs.reconcile(world, None)
    assert result.status["phase"] == "Running" and [e[1] for e in result.events] == ["Running"]
    world.tj["status"] = {**status, **result.status}
    again = trainingjobs.reconcile(world, None)
    assert status_changes(world.tj["status"], again.status) == {} and again.events == []


def test_invalid_spec_fails_with_the_field_named():
    world = TrainingWorld(tj=tj(split={"testFraction": 3}), model=None, model_users=[], job=None,
                          job_expected=False, pods=[])
    result = trainingjobs.reconcile(world, None)
    cond = result.status["conditions"][0]
    assert result.status["phase"] == "Failed" and cond["reason"] == "InvalidSpec"
    assert cond["message"].startswith("spec.split.testFraction")


def test_queue_hands_out_by_priority_then_arrival():
    async def scenario():
        q = WorkQueue(priority=lambda key: {"TrainingJob": 0, "Model": 2}[key[0]])
        for key in [("Model", "a"), ("TrainingJob", "b"), ("Model", "c"), ("TrainingJob", "d")]:
            q.add(key)
        return [await q.get() for _ in range(4)]

    assert asyncio.run(scenario()) == [("TrainingJob", "b"), ("TrainingJob", "d"), ("Model", "a"), ("Model", "c")]


def test_a_run_that_needs_its_job_goes_before_serving_and_runs_that_only_follow_theirs():
    from kiln_operator.controller import Controller
    from kiln_operator.settings import Settings

    def tj(name, status=None, generation=1):
        return {"metadata": {"name": name, "namespace": "ns", "generation": generation}, "spec": {"model": "m"},
                "status": status or {}}

    objects = {
        "new": tj("new"),  # applied a moment ago
        "following": tj("following", {"jobName": "following-v1", "phase": "Pending", "observedGeneration": 1}),
        "edited": tj("edited", {"jobName": "edited-v1", "phase": "Running", "observedGeneration": 1}, generation=2),
        "finished": tj("finished", {"jobName": "finished-v1", "phase": "Succeeded", "observedGeneration": 1}),
    }

    async def scenario():
        ctl = Controller(Settings(), {"kiln_trainingjobs": {("ns", n): [o] for n, o in objects.items()}})
        for key in [("Model", "ns", "m"), ("TrainingJob", "ns", "following"), ("Deployment", "ns", "d"),
                    ("TrainingJob", "ns", "new"), ("TrainingJob", "ns", "edited"),
                    ("TrainingJob", "ns", "finished")]:
            ctl.queue.add(key)
        assert ctl.queue.outstanding() == 6
        order = [(await ctl.queue.get())[2] for _ in range(6)]
        assert ctl.queue.outstanding() == 6  # handed out, not done: still in hand
        for key in [("Model", "ns", "m"), ("Deployment", "ns", "d")] + [("TrainingJob", "ns", n) for n in objects]:
            ctl.queue.done(key)
        assert ctl.queue.outstanding() == 0
        ctl.executor.shutdown()
        ctl.event_executor.shutdown()
        return order

    # runs that may start (new, an edited spec, a finished run's next tick) first, then serving, then runs
    # whose Job exists (their Job and pod events), then Model bookkeeping
    assert asyncio.run(scenario()) == ["new", "edited", "finished", "d", "following", "m"]


@pytest.mark.parametrize("quiet, since_last, due", [
    (True, 0.0, False), (True, 29.0, False), (True, 30.0, True),
    (False, 30.0, False), (False, 299.0, False), (False, 300.0, True),
])
def test_full_garbage_collections_wait_for_a_quiet_moment_but_not_for_ever(quiet, since_last, due):
    from kiln_operator.controller import full_collection_due

    assert full_collection_due(quiet, since_last) is due


def _api_error(status: int, body: str):
    from kubernetes.client.rest import ApiException

    exc = ApiException(status=status, reason="x")
    exc.body = body
    return exc


@pytest.mark.parametrize("exc, terminating", [
    (_api_error(403, '{"kind":"Status","reason":"Forbidden","details":{"name":"d1","kind":"services","causes":'
                     '[{"reason":"NamespaceTerminating","message":"namespace ns is being terminated",'
                     '"field":"metadata.namespace"}]},"code":403}'), True),
    (_api_error(403, '{"kind":"Status","reason":"Forbidden","details":{"name":"d1","kind":"services"}}'), False),
    (_api_error(403, "not json"), False),
    (_api_error(409, '{"details":{"causes":[{"reason":"NamespaceTerminating"}]}}'), False),
    (RuntimeError("NamespaceTerminating"), False),
])
def test_a_write_refused_because_the_namespace_is_going_away_is_told_apart(exc, terminating):
    assert kube.namespace_terminating(exc) is terminating
