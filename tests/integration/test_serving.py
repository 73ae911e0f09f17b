"""Kiln Deployments on the local cluster: serve, follow the alias, canary rollback, autoscale, scale to zero."""

from __future__ import annotations

import time

import pytest
from kube_helpers import GROUP, VERSION, create, get, wait_until
from kubernetes import client

from kiln_local.gateway_client import Load, infer

pytestmark = pytest.mark.integration


def train(custom, ns, name, model="iris", algorithm=None, formats=("onnx", "joblib")) -> int:
    create(custom, ns, "trainingjobs", "TrainingJob", name, {
        "model": model, "dataset": {"uri": "builtin:iris"},
        "algorithm": algorithm or {"name": "random_forest", "params": {"n_estimators": 20}},
        "export": {"formats": list(formats)}})

    def done():
        st = get(custom, ns, "trainingjobs", name).get("status") or {}
        return st.get("phase") in ("Succeeded", "Failed") and st

    st = wait_until(done, 180, f"training {name}", interval=0.5)
    assert st["phase"] == "Succeeded", st
    return st["modelVersion"]


def ready(custom, ns, name, version=None, timeout=120):
    def check():
        st = get(custom, ns, "deployments", name).get("status") or {}
        ok = any(c["type"] == "Ready" and c["status"] == "True" and c["reason"] == "Serving"
                 for c in st.get("conditions", []))
        return ok and (version is None or st.get("servingVersion") == version) and st

    return wait_until(check, timeout, f"Deployment {name} ready" + (f" on version {version}" if version else ""),
                      interval=0.5)


def iris_rows():
    from sklearn.datasets import load_iris

    return load_iris().data.astype("float32").tolist()


def apps(ns):
    return {d.metadata.name: d for d in client.AppsV1Api().list_namespaced_deployment(ns).items}


def test_serves_what_the_trainers_pipeline_predicts_and_follows_the_alias(custom, kiln_ns):
    import joblib

    from kiln_contract import storage

    create(custom, kiln_ns, "models", "Model", "iris",
           {"promotion": {"policy": "manual"}, "aliases": {"production": 1}})
    train(custom, kiln_ns, "v1")
    create(custom, kiln_ns, "deployments", "Deployment", "iris", {"model": {"name": "iris"}, "replicas": {
        "min": 1, "max": 2}})
    st = ready(custom, kiln_ns, "iris", version=1)
    assert st["url"] == f"http://iris.{kiln_ns}.svc/v2/models/iris"
    server = apps(kiln_ns)["iris-v1"]
    assert server.metadata.owner_references[0].kind == "Deployment"
    pod = server.spec.template.spec
    assert pod.security_context.run_as_non_root and pod.containers[0].security_context.read_only_root_filesystem
    assert pod.containers[0].readiness_probe.http_get.path == "/v2/health/ready"

    rows = iris_rows()
    status, answer = infer(kiln_ns, "iris", "iris", rows)
    assert status == 200, answer
    labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
    model = get(custom, kiln_ns, "models", "iris")["status"]["versions"][0]
    loc = storage.parse_s3(f"{model['uri']}/model.joblib")
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".joblib") as fh:
        storage.s3_client().download_file(loc.bucket, loc.key, fh.name)
        pipeline = joblib.load(fh.name)
    import numpy as np

    # all-numeric features: the trainer's Pipeline takes the raw columns as an array, in card order
    assert [int(x) for x in labels] == [int(x) for x in pipeline.predict(np.asarray(rows))]

    # move the alias under a steady load: the new version serves and no request fails
    train(custom, kiln_ns, "v2", algorithm={"name": "logistic_regression", "params": {"max_iter": 300}})
    with Load(kiln_ns, "iris", "iris", rows[60], workers=2, pause=0.01) as load:
        time.sleep(2)
        custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "iris",
                                              {"spec": {"aliases": {"production": 2}}})
        ready(custom, kiln_ns, "iris", version=2)
        wait_until(lambda: "iris-v1" not in apps(kiln_ns), 60, "the old version's Deployment to go")
        time.sleep(3)
    assert load.failures == [], load.failures[:5]
    assert load.versions.get("1") and load.versions.get("2"), load.versions
    assert load.ok > 50


def test_slow_canary_is_rolled_back_and_degraded(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"aliases": {"production": 1}})
    train(custom, kiln_ns, "fast")
    create(custom, kiln_ns, "deployments", "Deployment", "iris", {
        "model": {"name": "iris"}, "allowUnsafeFormats": True, "replicas": {"min": 1, "max": 3},
        "rollout": {"strategy": "canary", "steps": [50, 100], "interval": 20, "maxP99LatencyMs": 20}})
    ready(custom, kiln_ns, "iris", version=1)
    # version 2: a 1500-tree forest with no ONNX export, served by scikit-learn — tens of ms per row
    train(custom, kiln_ns, "slow", algorithm={"name": "random_forest", "params": {"n_estimators": 1500}},
          formats=("joblib",))
    with Load(kiln_ns, "iris", "iris", iris_rows()[10], workers=2, pause=0.01, limit=200):
        custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "iris",
                                              {"spec": {"aliases": {"production": 2}}})
        wait_until(lambda: (get(custom, kiln_ns, "deployments", "iris").get("status") or {}).get("canaryVersion")
                   == 2, 60, "the canary to start")

        def rolled_back():
            st = get(custom, kiln_ns, "deployments", "iris")["status"]
            degraded = next((c for c in st["conditions"] if c["type"] == "Degraded"), {})
            return degraded.get("status") == "True" and st

        st = wait_until(rolled_back, 150, "the canary to be rolled back", interval=1)
    degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "CanaryFailed" and "p99 latency" in degraded["message"]
    assert st["servingVersion"] == 1 and not st.get("canaryVersion") and st["failedVersions"] == [2]
    wait_until(lambda: "iris-v2" not in apps(kiln_ns), 60, "the canary Deployment to be removed")
    status, _ = infer(kiln_ns, "iris", "iris", [iris_rows()[0]])
    assert status == 200


def test_load_step_scales_up_then_idle_scales_to_zero_and_the_first_request_wakes_it(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"aliases": {"production": 1}})
    train(custom, kiln_ns, "v1", algorithm={"name": "random_forest", "params": {"n_estimators": 300}},
          formats=("joblib",))
    create(custom, kiln_ns, "deployments", "Deployment", "iris", {
        "model": {"name": "iris"}, "allowUnsafeFormats": True, "replicas": {"min": 0, "max": 3},
        "autoscaling": {"metric": "concurrency", "target": 0.5, "panicWindow": 4, "stableWindow": 20,
                        "scaleToZeroAfter": 15}})
    ready(custom, kiln_ns, "iris", version=1)
    row = iris_rows()[3]
    with Load(kiln_ns, "iris", "iris", row, workers=6, pause=0, limit=120) as load:
        t0 = time.monotonic()
        st = wait_until(lambda: (s := get(custom, kiln_ns, "deployments", "iris")["status"]).get("replicas", 0) >= 2
                        and s, 60, "scale-up under load", interval=0.5)
        reaction = time.monotonic() - t0
    assert not load.failures, load.failures[:3]
    assert reaction < 20, f"scale-up took {reaction:.1f}s, longer than the stable window"
    assert st["desiredReplicas"] >= 2

    # idle: down to min (0) after scaleToZeroAfter, and the pods go away
    wait_until(lambda: get(custom, kiln_ns, "deployments", "iris")["status"].get("replicas") == 0, 90,
               "scale to zero", interval=1)
    st = get(custom, kiln_ns, "deployments", "iris")["status"]
    assert next(c for c in st["conditions"] if c["type"] == "Ready")["reason"] == "ScaledToZero"
    wait_until(lambda: not [p for p in client.CoreV1Api().list_namespaced_pod(
        kiln_ns, label_selector="kiln.dev/deployment=iris").items], 60, "serving pods to be gone")

    status, answer = infer(kiln_ns, "iris", "iris", [row], timeout=180)
    assert status == 200, answer
    assert get(custom, kiln_ns, "deployments", "iris")["status"]["replicas"] >= 1


def test_input_drift_sets_drifted_and_retrains(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
    train(custom, kiln_ns, "iris-train")
    create(custom, kiln_ns, "deployments", "Deployment", "iris", {
        "model": {"name": "iris"},
        "monitoring": {"drift": {"enabled": True, "threshold": 0.2, "interval": 2, "minSamples": 100,
                                 "retrain": "iris-train"}}})
    ready(custom, kiln_ns, "iris", version=1)
    rows = iris_rows()

    def drifted_condition():
        st = get(custom, kiln_ns, "deployments", "iris")["status"]
        return next((c for c in st.get("conditions", []) if c["type"] == "Drifted"), None)

    assert infer(kiln_ns, "iris", "iris", rows)[0] == 200  # the training distribution itself
    cond = wait_until(lambda: (c := drifted_condition()) and c["reason"] != "InsufficientData" and c, 30,
                      "a drift verdict")
    assert (cond["status"], cond["reason"]) == ("False", "NoDrift"), cond

    shifted = [[v + 10.0 for v in row] for row in rows]
    for _ in range(3):
        assert infer(kiln_ns, "iris", "iris", shifted)[0] == 200
    cond = wait_until(lambda: (c := drifted_condition()) and c["status"] == "True" and c, 30, "Drifted")
    assert cond["reason"] == "FeatureDrift" and "PSI" in cond["message"]
    assert get(custom, kiln_ns, "deployments", "iris")["status"]["driftScores"]

    # the named TrainingJob runs again and registers version 2
    def retrained():
        st = get(custom, kiln_ns, "trainingjobs", "iris-train").get("status") or {}
        return st.get("modelVersion") == 2 and st.get("phase") == "Succeeded" and st

    wait_until(retrained, 120, "the retrain run")
    events = client.CoreV1Api().list_namespaced_event(kiln_ns, field_selector="involvedObject.name=iris").items
    assert {"Drifted", "RetrainRequested"} <= {e.reason for e in events}


def test_a_child_name_taken_by_another_app_is_reported_and_left_alone(custom, kiln_ns):
    """A Kiln Deployment named like another app's Service: a condition names the conflict; the Service is
    left exactly as it was, and serving starts once it is gone."""
    core = client.CoreV1Api()
    core.create_namespaced_service(kiln_ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="iris", labels={"app": "someone-else"}),
        spec=client.V1ServiceSpec(selector={"app": "someone-else"},
                                  ports=[client.V1ServicePort(port=9999, protocol="TCP")])))
    before = core.read_namespaced_service("iris", kiln_ns)
    create(custom, kiln_ns, "models", "Model", "iris", {"aliases": {"production": 1}})
    train(custom, kiln_ns, "v1")
    create(custom, kiln_ns, "deployments", "Deployment", "iris", {"model": {"name": "iris"}})

    def conflicted():
        st = get(custom, kiln_ns, "deployments", "iris").get("status") or {}
        cond = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        return cond.get("reason") == "ChildConflict" and cond

    cond = wait_until(conflicted, 60, "a ChildConflict condition", interval=0.5)
    assert cond["status"] == "False" and "Service iris already exists" in cond["message"]
    after = core.read_namespaced_service("iris", kiln_ns)
    assert after.metadata.resource_version == before.metadata.resource_version  # not even patched
    assert after.spec.selector == {"app": "someone-else"} and after.spec.ports[0].port == 9999

    core.delete_namespaced_service("iris", kiln_ns, _preload_content=False)  # the typed answer fails to parse
    ready(custom, kiln_ns, "iris", version=1)
    mine = core.read_namespaced_service("iris", kiln_ns)
    assert mine.spec.selector == {"kiln.dev/deployment": "iris"}
    assert mine.metadata.owner_references[0].kind == "Deployment"
