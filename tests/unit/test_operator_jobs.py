"""The TrainingJob → Job builder and the reading of a Job's outcome."""

import json

import pytest

from kiln_contract import spec as specs
from kiln_operator import images, job_outcome, trainingjob_builder


def tj(**spec) -> dict:
    base = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "knn"}}
    return {"metadata": {"name": "iris-nightly", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": specs.validate("TrainingJob", {**base, **spec})}


def build(obj):
    return trainingjob_builder.build_job(obj, version=3, run="g1", output="s3://kiln/models/iris/v3",
                                         image="kiln/trainer:0.1.0", s3_secret="kiln-s3")


def test_job_carries_spec_output_owner_and_restricted_security():
    job = build(tj(retries=2, timeout=300, ttlSecondsAfterFinished=60))
    assert job["metadata"]["name"] == "iris-nightly-v3"
    assert job["metadata"]["ownerReferences"][0] == {
        "apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob", "name": "iris-nightly", "uid": "u-1",
        "controller": True, "blockOwnerDeletion": True}
    assert job["spec"]["backoffLimit"] == 2 and job["spec"]["activeDeadlineSeconds"] == 300
    assert job["spec"]["ttlSecondsAfterFinished"] == 60
    pod = job["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["args"] == ["--output", "s3://kiln/models/iris/v3"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert json.loads(env["KILN_SPEC"])["model"] == "iris"
    assert c["envFrom"] == [{"secretRef": {"name": "kiln-s3"}}]
    assert not any("SECRET" in e["name"] for e in c["env"])
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["automountServiceAccountToken"] is False and pod["restartPolicy"] == "Never"


def test_gpu_request_adds_limit_and_toleration():
    job = build(tj(resources={"cpu": "2", "memory": "4Gi", "gpu": 1}, nodeSelector={"gpu": "yes"}))
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": "1"}
    assert pod["nodeSelector"] == {"gpu": "yes"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_scheduler_name_goes_to_the_pod_and_only_when_set():
    assert build(tj(schedulerName="volcano"))["spec"]["template"]["spec"]["schedulerName"] == "volcano"
    assert "schedulerName" not in build(tj())["spec"]["template"]["spec"]


def test_long_names_stay_dns_labels():
    obj = tj()
    obj["metadata"]["name"] = "x" * 70
    name = build(obj)["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-v3")


def test_image_allowlist():
    assert images.choose(None, "kiln/trainer:1", ["kiln/"], "spec.image") == "kiln/trainer:1"
    assert images.choose("kiln/trainer:2", "kiln/trainer:1", ["kiln/"], "spec.image") == "kiln/trainer:2"
    with pytest.raises(images.ImageNotAllowed, match="spec.image"):
        images.choose("evil/miner:1", "kiln/trainer:1", ["kiln/"], "spec.image")


def pod(phase, term=None, waiting=None, created="2026-01-01T00:00:00Z"):
    state = {"terminated": term} if term else {"waiting": waiting} if waiting else {"running": {}}
    return {"metadata": {"creationTimestamp": created},
            "status": {"phase": phase, "containerStatuses": [{"name": "trainer", "state": state}]}}


def job(**status):
    return {"spec": {"activeDeadlineSeconds": 60}, "status": status}


def test_outcome_success_reads_the_summary():
    summary = {"status": "Succeeded", "metrics": {"accuracy": 0.9}}
    out = job_outcome.outcome(job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}]),
                              [pod("Succeeded", {"exitCode": 0, "message": "log\n" + json.dumps(summary)})])
    assert out.phase == "Succeeded" and out.summary == summary


def test_outcome_failure_carries_the_trainers_message():
    msg = json.dumps({"status": "Failed", "reason": "DataUnavailable", "message": "s3://x/y.csv: NoSuchKey"})
    out = job_outcome.outcome(
        job(failed=2, conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]),
        [pod("Failed", {"exitCode": 2, "message": msg})])
    assert (out.phase, out.reason, out.attempts) == ("Failed", "DataUnavailable", 2)
    assert "NoSuchKey" in out.message


def test_outcome_oom_and_deadline():
    failed = [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    oom = pod("Failed", {"exitCode": 137, "reason": "OOMKilled"})
    out = job_outcome.outcome(job(failed=1, conditions=failed), [oom])
    assert out.reason == "OOMKilled" and "spec.resources.memory" in out.message
    deadline = [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
    out = job_outcome.outcome(job(failed=1, conditions=deadline), [])
    assert out.reason == "DeadlineExceeded" and "60s" in out.message


def test_outcome_image_not_runnable_and_running():
    out = job_outcome.outcome(job(active=1), [pod("Pending", waiting={"reason": "ErrImagePull", "message": "nope"})])
    assert out.phase == "Failed" and out.reason == "ImageNotRunnable"
    assert job_outcome.outcome(job(active=1), [pod("Running")]).phase == "Running"
    assert job_outcome.outcome(None, []).phase == "Pending"
