"""A Kiln Deployment on the local cluster, reached over gRPC through its Service's `grpc` port (tritonclient);
payload logging to the namespace's storage; categorical-input drift and prediction drift each setting
`Drifted` with the feature or the output named, then the retrain.

The model: y = "pos" when a > b, else "neg", over a, b ~ U(0, 10) and a `color` that does not matter.
* categorical drift: rows like training's, but every color "blue": only `color` moves;
* prediction drift: a and b keep exactly their training marginals but are paired so that a > b for ~90 % of
  rows (the test split predicted ~50 %): only the predictions (`output:label`) move.
"""

from __future__ import annotations

import http.client
import io
import json
import time
import urllib.request

import grpc_client_tool
import numpy as np
import pytest
from kube_helpers import create, get, wait_until
from kubernetes import client

from kiln_local.gateway_client import HOST, PORT, auth_headers

pytestmark = pytest.mark.integration

COLORS = ["red", "green", "blue"]


def rows(n: int, seed: int, colors=None, paired_shift: float | None = None) -> dict[str, list]:
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0, 10, n), rng.uniform(0, 10, n)
    if paired_shift is not None:  # same marginals; each a paired with the b `shift` ranks below it (wrapping)
        k = int(n * paired_shift)
        a, b = np.sort(a), np.roll(np.sort(b), k)
    color = rng.choice(colors or COLORS, n)
    return {"a": a.round(4).tolist(), "b": b.round(4).tolist(), "color": color.tolist()}


def upload_dataset(ns: str, bucket: str) -> str:
    import pandas as pd

    from kiln_contract import storage

    frame = pd.DataFrame(rows(800, 0))
    frame["y"] = np.where(frame["a"] > frame["b"], "pos", "neg")
    uri = f"s3://{bucket}/datasets/{ns}/ab.csv"
    loc = storage.parse_s3(uri)
    storage.s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=frame.to_csv(index=False).encode())
    return uri


def train_and_deploy(custom, ns: str, bucket: str, **dep_spec) -> None:
    create(custom, ns, "models", "Model", "ab", {"promotion": {"policy": "auto"}})
    create(custom, ns, "trainingjobs", "TrainingJob", "ab-train", {
        "model": "ab", "dataset": {"uri": upload_dataset(ns, bucket), "target": "y"},
        "algorithm": {"name": "logistic_regression"}, "export": {"formats": ["onnx", "joblib"]}})
    st = wait_until(lambda: (s := get(custom, ns, "trainingjobs", "ab-train").get("status") or {}).get("phase")
                    in ("Succeeded", "Failed") and s, 240, "training ab", interval=0.5)
    assert st["phase"] == "Succeeded", st
    create(custom, ns, "deployments", "Deployment", "ab", {
        "model": {"name": "ab"},
        "monitoring": {"drift": {"enabled": True, "threshold": 0.2, "interval": 2, "minSamples": 100,
                                 "retrain": "ab-train"}}, **dep_spec})

    def ready():
        s = get(custom, ns, "deployments", "ab").get("status") or {}
        return s.get("servingVersion") == 1 and any(
            c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", [])) and s

    wait_until(ready, 180, "Deployment ab serving version 1", interval=0.5)


def v2_inputs(data: dict[str, list]) -> list[dict]:
    n = len(data["a"])
    return [{"name": "a", "datatype": "FP64", "shape": [n], "data": data["a"]},
            {"name": "b", "datatype": "FP64", "shape": [n], "data": data["b"]},
            {"name": "color", "datatype": "BYTES", "shape": [n], "data": data["color"]}]


def rest(ns: str, data: dict[str, list], rid: str) -> dict:
    """POST through the gateway (HTTP/1.1, V2 JSON)."""
    conn = http.client.HTTPConnection(HOST, int(PORT), timeout=120)
    try:
        conn.request("POST", f"/{ns}/ab/v2/models/ab/infer", json.dumps({"id": rid, "inputs": v2_inputs(data)}),
                     {"Content-Type": "application/json", **auth_headers()})
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert resp.status == 200, body
    return {o["name"]: o for o in body["outputs"]}


def grpc_target(ns: str) -> str:
    """host:port of the Service's `grpc` port, from its EndpointSlices (the local cluster has no Service proxy:
    a client in a cluster would dial ab.<ns>.svc:8081, which resolves to these)."""
    custom = client.CustomObjectsApi()

    def slices() -> list[dict]:
        for version in ("v1", "v1beta1"):  # discovery.k8s.io/v1 from Kubernetes 1.21; the local cluster is 1.20
            try:
                return custom.list_namespaced_custom_object("discovery.k8s.io", version, ns, "endpointslices",
                                                            label_selector="kubernetes.io/service-name=ab")["items"]
            except client.ApiException as exc:
                if exc.status != 404:
                    raise
        return []

    def find():
        for sl in slices():
            port = next((p["port"] for p in sl.get("ports") or [] if p.get("name") == "grpc"), None)
            ready = [e for e in sl.get("endpoints") or [] if (e.get("conditions") or {}).get("ready", True)]
            if port and ready:
                return f"{ready[0]['addresses'][0]}:{port}"
        return None

    return wait_until(find, 60, "the Service's grpc endpoint")


def drifted(custom, ns: str) -> dict | None:
    st = get(custom, ns, "deployments", "ab")["status"]
    return next((c for c in st.get("conditions", []) if c["type"] == "Drifted"), None)


def wait_retrained(custom, ns: str) -> None:
    def retrained():
        st = get(custom, ns, "trainingjobs", "ab-train").get("status") or {}
        return st.get("modelVersion") == 2 and st.get("phase") == "Succeeded" and st

    wait_until(retrained, 240, "the retrain run", interval=0.5)
    events = client.CoreV1Api().list_namespaced_event(ns, field_selector="involvedObject.name=ab").items
    assert {"Drifted", "RetrainRequested"} <= {e.reason for e in events}


def test_grpc_payload_logging_and_categorical_drift(custom, kiln_ns, s3_env):
    log_spec = {"enabled": True, "sampleRate": 1.0, "compression": "zstd"}
    train_and_deploy(custom, kiln_ns, s3_env["KILN_BUCKET"], logging=log_spec)
    status = get(custom, kiln_ns, "deployments", "ab")["status"]
    assert status["grpcTarget"] == f"ab.{kiln_ns}.svc:8081"
    log_uri = status["payloadLogUri"]
    assert log_uri == f"s3://{s3_env['KILN_BUCKET']}/models/{kiln_ns}/payload-logs/ab"

    # gRPC through the Service's port, answers equal to REST through the gateway
    sample = rows(5, 7)
    target = grpc_target(kiln_ns)
    md, raw, typed = grpc_client_tool.drive(target, "ab", {"calls": [
        {"op": "model_metadata"},
        {"op": "infer", "inputs": v2_inputs(sample), "id": "grpc-raw"},
        {"op": "infer", "inputs": v2_inputs(sample), "id": "grpc-typed", "typed": True},
    ]})["results"]
    assert md["name"] == "ab" and [t["name"] for t in md["inputs"]] == ["a", "b", "color"]
    by_rest = rest(kiln_ns, sample, "rest-sample")
    for result in (raw, typed):
        assert result["ok"], result
        assert result["outputs"]["label"]["data"] == by_rest["label"]["data"]
        np.testing.assert_allclose(result["outputs"]["probabilities"]["data"], by_rest["probabilities"]["data"],
                                   rtol=1e-6)
    expected = [("pos" if a > b else "neg") for a, b in zip(sample["a"], sample["b"], strict=True)]
    assert sum(x == y for x, y in zip(by_rest["label"]["data"], expected, strict=True)) >= 4

    # traffic as in training: a verdict, and no drift
    normal = rows(600, 1)
    rest(kiln_ns, normal, "rest-normal")
    cond = wait_until(lambda: (c := drifted(custom, kiln_ns)) and c["reason"] != "InsufficientData" and c, 60,
                      "a drift verdict")
    assert (cond["status"], cond["reason"]) == ("False", "NoDrift"), cond

    # the records, read back from the namespace's storage, match the requests by id
    from kiln_contract import storage

    loc = storage.parse_s3(log_uri)
    s3 = storage.s3_client()
    codecs: set = set()

    def records():
        import pyarrow.parquet as pq

        out: dict[str, list[dict]] = {}
        for obj in s3.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key + "/").get("Contents", []):
            body = s3.get_object(Bucket=loc.bucket, Key=obj["Key"])["Body"].read()
            codecs.add(pq.read_metadata(io.BytesIO(body)).row_group(0).column(0).compression)
            for row in pq.read_table(io.BytesIO(body)).to_pylist():
                out.setdefault(row["id"], []).append(row)
        for rows in out.values():
            rows.sort(key=lambda r: r["row"])
        return out if {"grpc-raw", "grpc-typed", "rest-sample", "rest-normal"} <= set(out) else None

    logged = wait_until(records, 60, "payload-log records in S3", interval=1)
    assert codecs == {"ZSTD"}  # spec.logging.compression, through the operator to the serving pods
    assert {r["protocol"] for r in logged["grpc-raw"]} == {"grpc"} and len(logged["rest-normal"]) == 600
    assert [r["input:color"] for r in logged["grpc-typed"]] == sample["color"]
    assert [r["output:label"] for r in logged["rest-sample"]] == by_rest["label"]["data"]
    assert {(r["version"], r["model"]) for r in logged["rest-normal"]} == {("1", "ab")}

    # a new sampleRate reaches the running server through its ConfigMap volume, without a rollout
    apps, core = client.AppsV1Api(), client.CoreV1Api()
    selector = "kiln.dev/deployment=ab"
    server = apps.list_namespaced_deployment(kiln_ns, label_selector=selector).items
    pods = {p.metadata.name for p in core.list_namespaced_pod(kiln_ns, label_selector=selector).items}
    metrics_url = f"http://{target.rsplit(':', 1)[0]}:8080/metrics"

    def server_at(rate: float) -> None:
        def taken():
            with urllib.request.urlopen(metrics_url, timeout=10) as resp:
                text = resp.read().decode()
            return any(line.startswith("kiln_payload_log_sample_rate{") and float(line.split()[-1]) == rate
                       for line in text.splitlines())

        wait_until(taken, 60, f"the server at sample rate {rate}", interval=0.5)

    def serving_rate(rate: float) -> None:
        client.CustomObjectsApi().patch_namespaced_custom_object(
            "kiln.dev", "v1alpha1", kiln_ns, "deployments", "ab", {"spec": {"logging": {"sampleRate": rate}}})
        server_at(rate)

    serving_rate(0.0)
    (config,) = core.list_namespaced_config_map(kiln_ns, label_selector=selector).items
    assert config.data == {"sampleRate": "0.0"}
    # an edit by hand is put back: the spec is the truth
    core.patch_namespaced_config_map(config.metadata.name, kiln_ns, {"data": {"sampleRate": "1"}})
    wait_until(lambda: core.read_namespaced_config_map(config.metadata.name, kiln_ns).data == {"sampleRate": "0.0"},
               30, "the operator to put the ConfigMap back")
    time.sleep(2.5)  # the server looks at the file once a second: it may have seen the "1" for a moment
    server_at(0.0)
    rest(kiln_ns, rows(20, 3), "rest-unsampled")
    serving_rate(1.0)
    rest(kiln_ns, rows(20, 4), "rest-resampled")
    logged = wait_until(lambda: (r := records()) and "rest-resampled" in r and r, 60, "the resampled records",
                        interval=1)
    assert "rest-unsampled" not in logged and len(logged["rest-resampled"]) == 20
    after = apps.list_namespaced_deployment(kiln_ns, label_selector=selector).items
    assert [(d.metadata.name, d.metadata.generation) for d in after] == \
        [(d.metadata.name, d.metadata.generation) for d in server]
    assert {p.metadata.name for p in core.list_namespaced_pod(kiln_ns, label_selector=selector).items} == pods

    # every color "blue": the categorical input drifts, and is named
    rest(kiln_ns, rows(1500, 2, colors=["blue"]), "rest-blue")
    cond = wait_until(lambda: (c := drifted(custom, kiln_ns)) and c["status"] == "True" and c, 60, "Drifted")
    assert cond["reason"] == "FeatureDrift" and "color PSI" in cond["message"], cond
    scores = get(custom, kiln_ns, "deployments", "ab")["status"]["driftScores"]
    assert scores["color"] > 0.2 and scores["a"] < 0.2 and scores["b"] < 0.2
    wait_retrained(custom, kiln_ns)


def test_prediction_drift_names_the_output_and_retrains(custom, kiln_ns, s3_env):
    train_and_deploy(custom, kiln_ns, s3_env["KILN_BUCKET"])
    # a and b drawn as in training, paired so that a > b for ~90 % of rows
    for seed in range(3):
        rest(kiln_ns, rows(800, 10 + seed, paired_shift=0.1), f"shifted-{seed}")
    cond = wait_until(lambda: (c := drifted(custom, kiln_ns)) and c["status"] == "True" and c, 60, "Drifted")
    assert "output:label PSI" in cond["message"], cond
    scores = get(custom, kiln_ns, "deployments", "ab")["status"]["driftScores"]
    assert scores["output:label"] > 0.2
    assert all(scores[f] < 0.2 for f in ("a", "b", "color")), scores
    assert cond["reason"] == "PredictionDrift"
    wait_retrained(custom, kiln_ns)


def test_a_log_prefix_outside_the_namespace_storage_is_refused(custom, kiln_ns):
    create(custom, kiln_ns, "deployments", "Deployment", "ab", {
        "model": {"name": "ab"}, "logging": {"enabled": True, "uri": "s3://kiln/models/someone-else/logs"}})

    def refused():
        st = get(custom, kiln_ns, "deployments", "ab").get("status") or {}
        return next((c for c in st.get("conditions", []) if c["type"] == "Ready" and c["status"] == "False"
                     and c["reason"] == "StorageNotAllowed"), None)

    cond = wait_until(refused, 30, "Ready=False StorageNotAllowed")
    assert "spec.logging.uri" in cond["message"]
