"""A search across pods: the shard plan, the shard Jobs, and the decisions while they run (search_shards)."""

import json

import pytest

from kiln_contract import search_plan
from kiln_contract import spec as specs
from kiln_operator import search_shards, trainingjob_builder

GRID24 = {"space": {"max_depth": [2, 3, 4, None], "min_samples_leaf": [1, 2, 4], "criterion": ["gini", "entropy"]},
          "trials": 50}


def tj(**spec) -> dict:
    base = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "decision_tree"}}
    return {"metadata": {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": specs.validate("TrainingJob", {**base, **spec})}


@pytest.mark.parametrize(("search", "count"), [
    (GRID24, 24),
    ({**GRID24, "trials": 10}, 10),  # a grid larger than trials: trials drawn from it
    ({"method": "random", "space": {"max_depth": {"randint": [1, 9]}}, "trials": 48}, 48),
    ({"method": "random", "space": {"max_depth": [1, 2, 3]}, "trials": 48}, 3),
    ({"method": "halving", "space": {"max_depth": [1, 2, 3]}}, None),
])
def test_candidate_count_matches_what_one_pod_evaluates(search, count):
    assert search_plan.candidate_count(search) == count


def test_plan_defaults_and_bounds():
    assert search_plan.plan(None) is None
    assert search_plan.plan(GRID24) is None  # parallelism 1: in the training pod
    assert search_plan.plan({**GRID24, "parallelism": 4}) == search_plan.Plan(24, 4, 4)
    assert search_plan.plan({**GRID24, "parallelism": 4, "shards": 8}) == search_plan.Plan(24, 8, 4)
    assert search_plan.plan({**GRID24, "parallelism": 64}) == search_plan.Plan(24, 24, 24)
    assert search_plan.plan({"method": "halving", "space": {"a": [1, 2]}, "parallelism": 4}) is None
    shards = [search_plan.members(k, 5, 24) for k in range(5)]
    assert sorted(sum(shards, [])) == list(range(24))
    assert all(search_plan.shard_of(i, 5) == k for k, m in enumerate(shards) for i in m)
    assert search_plan.candidate_of("s3://b/m/v1/search/" + search_plan.result_name(17)) == 17
    assert search_plan.parse_shard("2/4") == (2, 4) and search_plan.parse_shard(None, "1", "3") == (1, 3)
    with pytest.raises(ValueError):
        search_plan.parse_shard("4/4")


def test_the_crd_accepts_the_search_fields():
    spec = tj(search={**GRID24, "parallelism": 4, "shards": 8})["spec"]
    assert spec["search"]["parallelism"] == 4
    halving = tj(search={"method": "halving", "space": {"max_depth": [1, 2]}, "halving": {"factor": 2}})["spec"]
    assert halving["search"]["halving"] == {"factor": 2, "resource": "n_samples"}
    with pytest.raises(specs.SpecError):
        tj(search={**GRID24, "parallelism": 0})


def test_shard_jobs_carry_their_shard_and_resources_per_pod():
    obj = tj(search={**GRID24, "parallelism": 4}, resources={"cpu": "2", "gpu": 1}, retries=3)
    job = trainingjob_builder.build_job(obj, version=3, run="g1", output="s3://k/m/iris/v3", image="kiln/trainer:1",
                                        s3_secret="kiln-s3", search_results="s3://k/m/iris/v3/search", shard=(2, 4))
    assert job["metadata"]["name"] == "iris-v3-s2"
    assert job["spec"]["backoffLimit"] == 3  # retries per shard
    assert job["spec"]["template"]["metadata"]["labels"][trainingjob_builder.SHARD_LABEL] == "2"
    c = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env[search_plan.SHARD_ENV] == "2/4" and env[search_plan.RESULTS_ENV] == "s3://k/m/iris/v3/search"
    assert c["resources"]["limits"] == {"cpu": "2", "nvidia.com/gpu": "1"}
    final = trainingjob_builder.build_job(obj, version=3, run="g1", output="s3://k/m/iris/v3", image="kiln/trainer:1",
                                          s3_secret="kiln-s3", search_results="s3://k/m/iris/v3/search")
    env = {e["name"]: e.get("value") for e in final["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert final["metadata"]["name"] == "iris-v3" and search_plan.SHARD_ENV not in env
    assert json.loads(env["KILN_SPEC"])["search"]["parallelism"] == 4
    long = search_shards.shard_job_name("x" * 80, 12, 999)
    assert len(long) <= 63 and long.endswith("-v12-s999")


def job(succeeded=0, failed=0, active=0, condition=None):
    status = {"succeeded": succeeded, "failed": failed, "active": active}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded",
                                 "message": "Job has reached the specified backoff limit"}]
    return {"metadata": {"name": "j"}, "spec": {}, "status": status}


def pod(phase, summary=None):
    term = {"terminated": {"exitCode": 0, "message": json.dumps(summary)}} if summary else {"running": {}}
    return {"metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": phase, "containerStatuses": [{"state": term}]}}


def shard_summary(k, count, score, candidate):
    return {"status": "Succeeded", "search": {"shard": k, "shards": 4, "candidates": count, "evaluated": count,
                                              "best": {"candidate": candidate, "score": score, "std": 0.01,
                                                       "params": {"max_depth": candidate}}}}


def test_first_pass_creates_parallelism_shards_only():
    search = search_shards.initial(search_plan.Plan(24, 8, 3))
    d = search_shards.decide(search, {}, {}, set())
    assert d.create == [0, 1, 2] and d.phase == "Pending" and not d.finished
    assert d.search["progress"] == "0/24"
    # the watch has not shown them yet: nothing doubled
    assert search_shards.decide(search, {}, {}, {0, 1, 2}).create == []


def test_a_finished_shard_makes_room_and_reports_progress():
    search = search_shards.initial(search_plan.Plan(24, 8, 3))
    jobs = {0: job(succeeded=1), 1: job(active=1), 2: job(active=1)}
    pods = {0: [pod("Succeeded", shard_summary(0, 3, 0.9, 8))], 1: [pod("Running")], 2: [pod("Running")]}
    d = search_shards.decide(search, jobs, pods, set())
    assert d.create == [3] and d.newly_completed == [0] and d.phase == "Running"
    assert d.search["done"] == 3 and d.search["bestScore"] == 0.9 and d.search["bestParams"] == {"max_depth": 8}
    assert d.search["progress"] == "3/24 best=0.9"
    # the next pass: shard 0's Job is gone (TTL) but it is completed; 3 was created a moment ago
    jobs2 = {1: job(succeeded=1), 2: job(active=1)}
    pods2 = {1: [pod("Succeeded", shard_summary(1, 3, 0.95, 1))], 2: [pod("Running")]}
    d2 = search_shards.decide(d.search, jobs2, pods2, {3})
    assert d2.create == [4] and d2.search["completed"] == [0, 1] and d2.search["done"] == 6
    assert d2.search["bestScore"] == 0.95 and d2.search["bestCandidate"] == 1


def test_ties_keep_the_lowest_candidate_as_scikit_learn_does():
    search = search_shards.initial(search_plan.Plan(4, 2, 2))
    jobs = {0: job(succeeded=1), 1: job(succeeded=1)}
    pods = {0: [pod("Succeeded", shard_summary(0, 2, 0.9, 2))], 1: [pod("Succeeded", shard_summary(1, 2, 0.9, 1))]}
    d = search_shards.decide(search, jobs, pods, set())
    assert d.finished and d.search["stage"] == "final" and d.search["bestCandidate"] == 1
    assert d.search["progress"] == "4/4 best=0.9" and d.create == []


def test_a_shard_that_failed_for_good_fails_the_run():
    search = search_shards.initial(search_plan.Plan(24, 4, 4))
    jobs = {0: job(failed=2, condition="Failed"), 1: job(active=1), 2: job(active=1), 3: job(active=1)}
    d = search_shards.decide(search, jobs, {}, set())
    assert d.failed is not None and d.failed_shard == 0 and not d.finished and d.create == []
    assert d.failed.reason == "BackoffLimitExceeded"


# --- the reconcile around the decision, with the cluster calls recorded -----------------------------------
def search_world(status, jobs=None, pods=None, expected=(), **spec):
    from kiln_operator.world import TrainingWorld

    obj = tj(**spec)
    obj["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    obj["status"] = status
    return TrainingWorld(tj=obj, model=None, model_users=[], job=None, job_expected=False, pods=[],
                         shard_jobs=jobs or {}, shard_pods=pods or {}, shard_expected=set(expected))


@pytest.fixture
def calls(monkeypatch):
    from kiln_operator import kube

    made = {"created": [], "deleted": []}
    monkeypatch.setattr(kube, "create_job", lambda job: made["created"].append(job) or True)
    monkeypatch.setattr(kube, "delete_job", lambda ns, name: made["deleted"].append(name))
    return made


def running_status(search):
    return {"phase": "Running", "run": "g1", "jobName": "iris-v3", "modelVersion": 3,
            "artifactURI": "s3://k/m/iris/v3", "observedGeneration": 1, "search": search}


def test_follow_creates_the_next_shard_then_the_training_job(calls):
    from kiln_operator import trainingjobs
    from kiln_operator.settings import Settings

    search = {**GRID24, "parallelism": 2, "shards": 3}
    state = search_shards.initial(search_plan.plan(search))
    state = search_shards.decide(state, {}, {}, set()).search
    jobs = {0: job(succeeded=1), 1: job(active=1)}
    pods = {0: [pod("Succeeded", shard_summary(0, 8, 0.9, 3))], 1: [pod("Running")]}
    result = trainingjobs.reconcile(search_world(running_status(state), jobs, pods, search=search), Settings())
    assert [j["metadata"]["name"] for j in calls["created"]] == ["iris-v3-s2"]
    assert result.status["search"]["progress"] == "8/24 best=0.9"
    # all three done: the training Job, with the results and no shard
    calls["created"].clear()
    done = {k: job(succeeded=1) for k in range(3)}
    dpods = {k: [pod("Succeeded", shard_summary(k, 8, 0.9, k))] for k in range(3)}
    result = trainingjobs.reconcile(search_world(running_status(result.status["search"]), done, dpods, search=search),
                                    Settings())
    (final,) = calls["created"]
    env = {e["name"]: e.get("value") for e in final["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert final["metadata"]["name"] == "iris-v3" and env[search_plan.RESULTS_ENV] == "s3://k/m/iris/v3/search"
    assert search_plan.SHARD_ENV not in env
    assert result.status["search"]["stage"] == "final" and result.status["search"]["done"] == 24
    assert result.status["conditions"][0]["reason"] == "SearchDone"


def test_a_spec_edited_mid_search_applies_to_the_next_run(calls):
    from kiln_operator import trainingjobs
    from kiln_operator.settings import Settings

    search = {**GRID24, "parallelism": 2, "shards": 3}
    started = tj(search=search)["spec"]
    state = {**search_shards.initial(search_plan.plan(search)), "spec": json.dumps(started)}
    state = search_shards.decide(state, {}, {}, set()).search
    world = search_world(running_status(state), {0: job(succeeded=1), 1: job(active=1)},
                         {0: [pod("Succeeded", shard_summary(0, 8, 0.9, 3))]},
                         search={**search, "trials": 5})  # edited: another candidate list
    trainingjobs.reconcile(world, Settings())
    (shard,) = calls["created"]
    env = {e["name"]: e.get("value") for e in shard["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert json.loads(env["KILN_SPEC"])["search"]["trials"] == 50


def test_suspend_during_a_search_deletes_its_jobs_and_cancels_the_run(calls):
    from kiln_operator import trainingjobs
    from kiln_operator.settings import Settings

    search = {**GRID24, "parallelism": 2}
    state = search_shards.decide(search_shards.initial(search_plan.plan(search)), {}, {}, set()).search
    world = search_world(running_status(state), {0: job(active=1)}, {}, {1}, search=search, suspend=True)
    result = trainingjobs.reconcile(world, Settings())
    assert sorted(calls["deleted"]) == ["iris-v3-s0", "iris-v3-s1"]  # the training Job does not exist yet
    assert result.status["phase"] == "Failed" and result.status["conditions"][0]["reason"] == "Cancelled"
    assert not calls["created"]
