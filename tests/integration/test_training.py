"""TrainingJob → Job → trainer pod → Model version, on the local cluster with SeaweedFS."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from kube_helpers import GROUP, VERSION, create, get, model_versions, wait_until
from kubernetes import client

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def kubectl(*args: str) -> str:
    from kiln_local.cluster import kubectl as run

    return run(*args).stdout


def finished(custom, ns, name, timeout=180) -> dict:
    def done():
        st = get(custom, ns, "trainingjobs", name).get("status") or {}
        return st if st.get("phase") in ("Succeeded", "Failed") else None

    return wait_until(done, timeout, f"TrainingJob {name} to finish", interval=0.5)


def tj_spec(model="iris", algorithm=None, **extra) -> dict:
    return {"model": model, "dataset": {"uri": "builtin:iris"},
            "algorithm": algorithm or {"name": "random_forest", "params": {"n_estimators": 20}},
            "export": {"formats": ["onnx", "joblib"]}, **extra}


def test_iris_example_trains_registers_and_promotes(custom, kiln_ns, s3_env):
    kubectl("apply", "-n", kiln_ns, "-f", str(EXAMPLES / "iris-trainingjob.yaml"))
    status = finished(custom, kiln_ns, "iris")
    assert status["phase"] == "Succeeded", status
    assert status["modelVersion"] == 1 and status["jobName"] == "iris-v1"
    assert status["metrics"]["accuracy"] >= 0.85 and status["mainMetric"].startswith("accuracy=")

    jobs = client.BatchV1Api().list_namespaced_job(kiln_ns).items
    assert [j.metadata.name for j in jobs] == ["iris-v1"]
    assert jobs[0].metadata.owner_references[0].kind == "TrainingJob"

    model = wait_until(lambda: (m := get(custom, kiln_ns, "models", "iris")).get("status", {}).get("aliases")
                       and m, 30, "production alias")
    st = model["status"]
    assert st["latestVersion"] == 1 and st["aliases"]["production"] == 1
    v1 = st["versions"][0]
    assert v1["state"] == "Registered" and v1["trainingJob"] == "iris" and len(v1["sha256"]) == 64
    assert v1["metrics"] == status["metrics"] and v1["dataset"]["rows"] == 150

    # the registered sha256 is that of the artifact actually in S3
    from kiln_contract import checksums, storage

    loc = storage.parse_s3(f"{v1['uri']}/{v1['artifact']}")
    body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    assert checksums.sha256_bytes(body) == v1["sha256"]

    table = kubectl("get", "-n", kiln_ns, "tj,mdl")
    assert "Succeeded" in table and "accuracy=" in table
    row = next(line for line in table.splitlines() if line.startswith("model.kiln.dev/iris"))
    assert row.split()[1:3] == ["1", "1"]  # LATEST, PRODUCTION

    events = client.CoreV1Api().list_namespaced_event(kiln_ns, field_selector="involvedObject.name=iris").items
    assert {"JobCreated", "Registered", "Promoted"} <= {e.reason for e in events}


def test_worse_run_rejected_gate_and_pin(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"promotion": {"policy": "auto", "metric": "accuracy"}})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "good", tj_spec())
    assert finished(custom, kiln_ns, "good")["phase"] == "Succeeded"
    stump = {"name": "decision_tree", "params": {"max_depth": 1}}  # ~0.6 accuracy on iris
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "worse", tj_spec(algorithm=stump))
    assert finished(custom, kiln_ns, "worse")["modelVersion"] == 2
    gated = tj_spec(algorithm=stump, evaluation={"gates": [{"metric": "accuracy", "op": ">=", "value": 0.99}]})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "gated", gated)
    gated_status = finished(custom, kiln_ns, "gated")
    assert gated_status["phase"] == "Succeeded" and gated_status["gatesPassed"] is False

    st = get(custom, kiln_ns, "models", "iris")["status"]
    states = {v["version"]: v["state"] for v in st["versions"]}
    assert states == {1: "Registered", 2: "Registered", 3: "Rejected"}
    assert st["aliases"]["production"] == 1  # the worse run did not take production

    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "iris", {"spec": {"aliases": {
        "production": 2}}})
    wait_until(lambda: get(custom, kiln_ns, "models", "iris")["status"]["aliases"].get("production") == 2,
               30, "the pin to move production")
    # a pin to a Rejected version is refused, with the field named
    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "iris", {"spec": {"aliases": {
        "production": 3}}})

    def refused():
        st = get(custom, kiln_ns, "models", "iris")["status"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        return ready["status"] == "False" and "spec.aliases.production" in ready["message"] and st

    st = wait_until(refused, 30, "the bad pin to be reported")
    assert st["aliases"]["production"] == 1  # falls back to the auto choice, never the Rejected one


def test_regression_promotes_by_r2_without_a_metric_and_a_wrong_metric_is_named(custom, kiln_ns):
    # Before: the CRD defaulted promotion.metric to accuracy, which regression never has, so production
    # stayed on version 1 forever and nothing said why.
    create(custom, kiln_ns, "models", "Model", "sugar", {"promotion": {"policy": "auto"}})
    stump = {"name": "decision_tree", "task": "regression", "params": {"max_depth": 1}}
    for name, algorithm in (("stump", stump), ("ridge", {"name": "ridge", "task": "regression"})):
        create(custom, kiln_ns, "trainingjobs", "TrainingJob", name,
               tj_spec(model="sugar", algorithm=algorithm, dataset={"uri": "builtin:diabetes"},
                       export={"formats": ["onnx"]}))
        status = finished(custom, kiln_ns, name)
        assert status["phase"] == "Succeeded" and status["mainMetric"].startswith("r2="), status
    st = wait_until(lambda: (s := get(custom, kiln_ns, "models", "sugar")["status"]).get("aliases", {}).get(
        "production") == 2 and s, 30, "production to move to the better regression version")
    r2 = {v["version"]: v["metrics"]["r2"] for v in st["versions"]}
    assert r2[2] > r2[1]
    assert next(c for c in st["conditions"] if c["type"] == "PromotionMetricValid")["status"] == "True"

    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "sugar",
                                          {"spec": {"promotion": {"metric": "accuracy"}}})

    def named():
        conds = get(custom, kiln_ns, "models", "sugar")["status"]["conditions"]
        c = next((c for c in conds if c["type"] == "PromotionMetricValid"), None)
        return c if c and c["status"] == "False" else None

    cond = wait_until(named, 30, "the condition naming spec.promotion.metric")
    assert cond["reason"] == "MetricNotForTask" and cond["message"].startswith("spec.promotion.metric:")


def test_unreachable_dataset_fails_after_retries_with_the_trainers_message(custom, kiln_ns, s3_env):
    create(custom, kiln_ns, "models", "Model", "iris", {})
    spec = tj_spec(retries=1)
    spec["dataset"] = {"uri": f"s3://{s3_env['KILN_BUCKET']}/datasets/{kiln_ns}/no/such/data.csv", "target": "y"}
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "nodata", spec)
    status = finished(custom, kiln_ns, "nodata")
    assert status["phase"] == "Failed"
    cond = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert cond["status"] == "False" and cond["reason"] == "DataUnavailable"
    assert "no/such/data.csv" in cond["message"]
    assert status["attempts"] == 2  # the first try and one retry
    versions = get(custom, kiln_ns, "models", "iris")["status"]["versions"]
    assert [(v["version"], v["state"]) for v in versions] == [(1, "Failed")]


def test_missing_model_waits_then_runs(custom, kiln_ns):
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "early", tj_spec(model="later"))

    def waiting():
        st = get(custom, kiln_ns, "trainingjobs", "early").get("status") or {}
        return any(c.get("reason") == "ModelMissing" for c in st.get("conditions", [])) and st

    st = wait_until(waiting, 30, "ModelMissing condition")
    assert st["phase"] == "Pending"
    assert not client.BatchV1Api().list_namespaced_job(kiln_ns).items
    create(custom, kiln_ns, "models", "Model", "later", {})
    assert finished(custom, kiln_ns, "early")["phase"] == "Succeeded"


def test_operator_killed_at_random_points_never_duplicates(custom, kiln_ns, s3_env):
    """A burst of 50 runs on one Model while the operator is SIGKILLed at random points and restarted."""
    from kiln_local import cluster, procs, s3

    create(custom, kiln_ns, "models", "Model", "iris", {})
    rng = random.Random(7)
    runs = 50
    names = [f"run{i:02d}" for i in range(runs)]
    # Kills land among the creations and while Jobs start, finish and register (the riskiest windows).
    kill_after = sorted(rng.sample(range(1, runs), 6))
    try:
        for i, name in enumerate(names):
            create(custom, kiln_ns, "trainingjobs", "TrainingJob", name, tj_spec())
            if i in kill_after:
                time.sleep(rng.uniform(0.0, 1.5))
                procs.kill("kiln-operator")  # SIGKILL: no chance to finish what it was doing
                cluster.start_operator(s3.read_env())
        for _ in range(3):  # and a few more while the runs finish
            time.sleep(rng.uniform(3.0, 10.0))
            procs.kill("kiln-operator")
            cluster.start_operator(s3.read_env())
    finally:
        if procs.running("kiln-operator") is None:
            cluster.start_operator(s3.read_env())
    statuses = {name: finished(custom, kiln_ns, name, timeout=600) for name in names}
    assert all(s["phase"] == "Succeeded" for s in statuses.values()), statuses

    jobs = client.BatchV1Api().list_namespaced_job(kiln_ns).items
    by_tj = {}
    for job in jobs:
        by_tj.setdefault(job.metadata.labels["kiln.dev/trainingjob"], []).append(job.metadata.name)
    assert all(len(v) == 1 for v in by_tj.values()) and set(by_tj) == set(names), by_tj

    # Status keeps the newest versions; older ones are in the Model's history index in storage.
    versions = model_versions(custom, kiln_ns, "iris", s3_env["KILN_BUCKET"])
    assert sorted(versions) == list(range(1, runs + 1)), versions  # no version lost, none doubled
    assert all(v["state"] == "Registered" for v in versions.values())
    assert sorted(s["modelVersion"] for s in statuses.values()) == list(range(1, runs + 1))


def test_model_status_rebuilds_from_storage(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "once", tj_spec())
    assert finished(custom, kiln_ns, "once")["phase"] == "Succeeded"
    before = get(custom, kiln_ns, "models", "iris")["status"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "iris")
    wait_until(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models")["items"],
               30, "Model deletion")
    create(custom, kiln_ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
    after = wait_until(lambda: (get(custom, kiln_ns, "models", "iris").get("status") or {}).get("versions")
                       and get(custom, kiln_ns, "models", "iris")["status"], 30, "rebuild from S3")
    assert after["latestVersion"] == 1 and after["aliases"]["production"] == 1
    assert after["versions"][0]["sha256"] == before["versions"][0]["sha256"]
    assert after["versions"][0]["source"] == "storage"


def test_a_rebuilt_cluster_numbers_a_new_run_after_the_versions_in_storage(custom, kiln_ns):
    """Model and TrainingJob applied together (GitOps into a new cluster): the run must not reuse v1."""
    create(custom, kiln_ns, "models", "Model", "iris", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "first", tj_spec())
    assert finished(custom, kiln_ns, "first")["modelVersion"] == 1
    before = get(custom, kiln_ns, "models", "iris")["status"]["versions"][0]["sha256"]
    for plural, name in (("trainingjobs", "first"), ("models", "iris")):
        custom.delete_namespaced_custom_object(GROUP, VERSION, kiln_ns, plural, name)
    wait_until(lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models")["items"],
               30, "Model deletion")
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "second", tj_spec())  # before its Model, even
    create(custom, kiln_ns, "models", "Model", "iris", {})
    assert finished(custom, kiln_ns, "second")["modelVersion"] == 2
    versions = {v["version"]: v for v in get(custom, kiln_ns, "models", "iris")["status"]["versions"]}
    assert versions[1]["sha256"] == before and versions[1].get("source") == "storage"


def test_bring_your_own_model_is_verified(custom, kiln_ns, s3_env, tmp_path):
    import joblib
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from kiln_contract import checksums, storage

    X, y = load_iris(return_X_y=True)
    path = tmp_path / "byo.joblib"
    joblib.dump(LogisticRegression(max_iter=300).fit(X, y), path)
    digest = checksums.sha256_file(path)
    uri = f"s3://{s3_env['KILN_BUCKET']}/byo/{kiln_ns}/byo.joblib"
    loc = storage.parse_s3(uri)
    storage.s3_client().upload_file(str(path), loc.bucket, loc.key)

    create(custom, kiln_ns, "models", "Model", "byo", {"promotion": {"policy": "auto"}, "versions": [
        {"uri": uri, "sha256": digest, "metrics": {"accuracy": 0.97}},
        {"uri": uri, "sha256": "0" * 64},
    ]})

    def settled():
        st = get(custom, kiln_ns, "models", "byo").get("status") or {}
        vs = st.get("versions") or []
        return len(vs) == 2 and all(v["state"] != "Pending" for v in vs) and st

    st = wait_until(settled, 60, "both external versions to be processed")
    good, bad = st["versions"]
    assert good["state"] == "Registered" and good["sha256"] == digest and good["formats"] == ["joblib"]
    assert st["aliases"]["production"] == good["version"]
    assert bad["state"] == "Failed" and "spec.versions[1]" in bad["reason"] and "sha256 mismatch" in bad["reason"]
    # nothing was written for the rejected artifact
    assert storage.s3_client().list_objects_v2(
        Bucket=loc.bucket, Prefix=f"models/{kiln_ns}/byo/v{bad['version']}/").get("KeyCount", 0) == 0


def test_schedule_runs_one_at_a_time_and_suspend_stops_it(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "cron", tj_spec(schedule="* * * * * */10"))

    def two_runs():
        st = get(custom, kiln_ns, "trainingjobs", "cron").get("status") or {}
        done = [r for r in st.get("runs", []) if r["phase"] == "Succeeded"]
        return len(done) >= 2 and st

    st = wait_until(two_runs, 150, "two scheduled runs", interval=1)
    assert len({r["version"] for r in st["runs"]}) == len(st["runs"])
    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "trainingjobs", "cron",
                                          {"spec": {"suspend": True}})
    wait_until(lambda: get(custom, kiln_ns, "trainingjobs", "cron")["status"]["phase"] != "Running", 120,
               "the active run to finish")
    time.sleep(1)
    count = len(client.BatchV1Api().list_namespaced_job(kiln_ns).items)
    time.sleep(15)
    assert len(client.BatchV1Api().list_namespaced_job(kiln_ns).items) == count  # suspended: no new runs
    # never two at once: the Jobs' active windows do not overlap
    jobs = sorted(client.BatchV1Api().list_namespaced_job(kiln_ns).items, key=lambda j: j.status.start_time)
    for a, b in zip(jobs, jobs[1:], strict=False):
        assert a.status.completion_time is not None and a.status.completion_time <= b.status.start_time


@pytest.mark.parametrize(("extra", "reason", "text"), [
    ({"image": "evil.example/miner:1"}, "ImageNotAllowed", "spec.image"),
    ({"image": "kiln/no-such-image:1"}, "ImageNotRunnable", "ErrImagePull"),
    ({"timeout": 1, "algorithm": {"name": "random_forest", "params": {"n_estimators": 3000}}},
     "DeadlineExceeded", "spec.timeout"),
])
def test_failures_carry_their_reason(custom, kiln_ns, extra, reason, text):
    create(custom, kiln_ns, "models", "Model", "iris", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "broken", {**tj_spec(retries=0), **extra})
    status = finished(custom, kiln_ns, "broken", timeout=120)
    cond = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert (status["phase"], cond["reason"]) == ("Failed", reason), status
    assert text in cond["message"]
    events = client.CoreV1Api().list_namespaced_event(kiln_ns, field_selector="involvedObject.name=broken").items
    assert reason in {e.reason for e in events}


def test_delete_artifacts_finalizer_removes_only_that_models_artifacts(custom, kiln_ns, s3_env):
    from kiln_contract import storage

    create(custom, kiln_ns, "models", "Model", "gone", {"deleteArtifacts": True})
    create(custom, kiln_ns, "models", "Model", "kept", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "gone", tj_spec(model="gone"))
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "kept", tj_spec(model="kept"))
    assert finished(custom, kiln_ns, "gone")["phase"] == "Succeeded"
    assert finished(custom, kiln_ns, "kept")["phase"] == "Succeeded"
    assert "kiln.dev/delete-artifacts" in get(custom, kiln_ns, "models", "gone")["metadata"]["finalizers"]
    assert not get(custom, kiln_ns, "models", "kept")["metadata"].get("finalizers")

    def objects(model):
        prefix = get(custom, kiln_ns, "trainingjobs", model)["status"]["artifactURI"].rsplit("/", 1)[0]
        loc = storage.parse_s3(prefix)
        listing = storage.s3_client().list_objects_v2(Bucket=loc.bucket, Prefix=loc.key + "/")
        return [o["Key"] for o in listing.get("Contents", [])]

    assert objects("gone") and objects("kept")
    custom.delete_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "gone")
    wait_until(lambda: not any(m["metadata"]["name"] == "gone" for m in custom.list_namespaced_custom_object(
        GROUP, VERSION, kiln_ns, "models")["items"]), 60, "Model gone to be deleted after its artifacts")
    assert objects("gone") == []  # the TrainingJob still names the prefix; nothing is left under it
    assert objects("kept")  # another Model's artifacts are untouched
