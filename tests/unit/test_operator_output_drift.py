"""Categorical and prediction drift (kiln_operator.drift.assess_all), the Drifted condition that names the
output, and what spec.logging and the gRPC port put on the serving pods and the Service."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kiln_contract import spec as specs
from kiln_operator import deployment_builder, drift, payload_logging, tenancy
from kiln_operator.serving_decide import Observed, decide
from kiln_operator.settings import Settings

FREQ = {"red": 0.5, "green": 0.3, "blue": 0.2}


def counts_text(categories: dict[str, int] | None = None, labels: dict[str, int] | None = None,
                values: list[float] | None = None, edges: list[float] | None = None) -> str:
    lines = ["# TYPE kiln_feature_category_total counter"]
    for c, n in (categories or {}).items():
        lines.append(f'kiln_feature_category_total{{model="m",version="1",feature="color",category="{c}"}} {n}')
    lines.append("# TYPE kiln_prediction_label_total counter")
    for c, n in (labels or {}).items():
        lines.append(f'kiln_prediction_label_total{{model="m",version="1",label="{c}"}} {n}')
    if values is not None:
        lines.append("# TYPE kiln_prediction_value histogram")
        for le in [*edges, float("inf")]:
            n = int(np.sum(np.asarray(values) <= le))
            le_text = "+Inf" if le == float("inf") else repr(le)
            lines.append(f'kiln_prediction_value_bucket{{model="m",version="1",le="{le_text}"}} {n}')
        lines.append(f'kiln_prediction_value_count{{model="m",version="1"}} {len(values)}')
        lines.append(f'kiln_prediction_value_sum{{model="m",version="1"}} {sum(values)}')
    return "\n".join(lines) + "\n"


def card(predictions: dict | None = None) -> dict:
    return {"features": {"distributions": {"color": {"kind": "categorical", "frequencies": FREQ}}},
            **({"predictions": predictions} if predictions else {})}


def test_categories_as_in_training_are_not_drift():
    live = drift.live_counts(counts_text({"red": 500, "green": 300, "blue": 200, "__other__": 0}))
    drifted, scores = drift.assess_all(card(), {}, live, 0.2, 100)
    assert drifted is False and scores["color"] < 0.01


def test_a_shifted_or_new_category_is_drift_and_named():
    shifted = drift.live_counts(counts_text({"red": 50, "green": 100, "blue": 850}))
    drifted, scores = drift.assess_all(card(), {}, shifted, 0.2, 100)
    assert drifted is True and scores["color"] > 0.5
    unseen = drift.live_counts(counts_text({"red": 200, "__other__": 800}))  # values training never had
    assert drift.assess_all(card(), {}, unseen, 0.2, 100)[1]["color"] > 1.0


def test_too_few_values_is_no_verdict():
    live = drift.live_counts(counts_text({"blue": 50}))
    assert drift.assess_all(card(), {}, live, 0.2, 100) == (None, {})


def test_predicted_labels_against_the_test_split():
    ref = {"kind": "categorical", "frequencies": {"a": 0.6, "b": 0.4}}
    same = drift.live_counts(counts_text(labels={"a": 600, "b": 400, "__other__": 0}))
    moved = drift.live_counts(counts_text(labels={"a": 100, "b": 900}))
    assert drift.assess_all(card(ref), {}, same, 0.2, 100)[0] is False
    drifted, scores = drift.assess_all(card(ref), {}, moved, 0.2, 100)
    assert drifted is True and scores[drift.OUTPUT] > 0.5 and "color" not in scores


def test_predicted_values_against_the_test_split_histogram():
    edges = [float(e) for e in np.linspace(0, 10, 11)]
    rng = np.random.default_rng(0)
    ref_counts, _ = np.histogram(rng.uniform(0, 10, 5000), bins=10, range=(0, 10))
    ref = {"kind": "numeric", "histogram": {"edges": edges, "counts": ref_counts.tolist()}}
    same = drift.live_counts(counts_text(values=rng.uniform(0, 10, 1000).tolist(), edges=edges))
    moved = drift.live_counts(counts_text(values=rng.uniform(8, 18, 1000).tolist(), edges=edges))
    assert drift.assess_all(card(ref), {}, same, 0.2, 100)[0] is False
    assert drift.assess_all(card(ref), {}, moved, 0.2, 100)[1][drift.OUTPUT] > 1.0


def test_counts_merge_over_pods():
    a = drift.live_counts(counts_text({"red": 1}, {"x": 2}))
    b = drift.live_counts(counts_text({"red": 3, "blue": 1}, {"x": 1}))
    merged = drift.merge_counts(drift.merge_counts({}, a), b)
    assert merged["categories"]["color"] == {"red": 4, "blue": 1} and merged["labels"] == {"x": 3}


CFG = Settings(storage="s3://kiln/models", storage_prefixes={"*": ["s3://logs/{namespace}"]})


def _dep(status=None, **spec):
    return {"metadata": {"name": "iris", "namespace": "ns", "uid": "u1", "generation": 1},
            "spec": specs.validate("Deployment", {"model": {"name": "iris"}, **spec}), "status": status or {}}


def _model():
    return {"metadata": {"name": "iris", "namespace": "ns"},
            "status": {"aliases": {"production": 1},
                       "versions": [{"version": 1, "uri": "s3://kiln/models/ns/iris/v1", "state": "Registered",
                                     "sha256": "a" * 64, "formats": ["onnx"],
                                     "artifacts": {"onnx": {"sha256": "a" * 64}}}]}}


@pytest.mark.parametrize("scores,reason,words", [
    ({"output:label": 0.9}, "PredictionDrift", "output:label PSI 0.90"),
    ({"color": 0.7, "output:label": 0.9}, "FeatureDrift", "color PSI 0.70"),
])
def test_drifted_names_the_output_or_the_feature(scores, reason, words):
    d = _dep({"servingVersion": 1}, monitoring={"drift": {"enabled": True, "threshold": 0.2, "retrain": "t"}})
    plan = decide(Observed(dep=d, model=_model(), ready={1: 1}, replicas={1: 1}, desired=1, now=1000.0,
                           drift=(True, scores)), CFG)
    cond = next(c for c in plan.status["conditions"] if c["type"] == "Drifted")
    assert (cond["status"], cond["reason"]) == ("True", reason) and words in cond["message"]
    assert plan.retrain == "t" and plan.status["driftScores"] == scores


def test_grpc_port_on_pod_and_service():
    d = _dep()
    svc = deployment_builder.build_service(d)
    assert {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c"} in svc["spec"]["ports"]
    server = deployment_builder.build_server(d, _model()["status"]["versions"][0], track="stable", replicas=1,
                                             image="kiln/server:0.1.0", s3_secret="kiln-s3-read")
    c = server["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in c["ports"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KILN_GRPC_PORT"] == "8081" and "KILN_PAYLOAD_LOG_URI" not in env


def test_logging_default_prefix_and_writable_credentials_for_it_only():
    d = _dep(logging={"enabled": True, "sampleRate": 0.25})
    logging = payload_logging.resolve(d, CFG)
    assert logging.uri == "s3://kiln/models/ns/payload-logs/iris" and logging.sample_rate == 0.25
    server = deployment_builder.build_server(d, _model()["status"]["versions"][0], track="stable", replicas=1,
                                             image="kiln/server:0.1.0", s3_secret="kiln-s3-read", logging=logging)
    c = server["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["KILN_PAYLOAD_LOG_URI"]["value"] == logging.uri
    # the rate reaches the server as a file of the Deployment's logging ConfigMap, which it follows while serving:
    # a new rate changes the ConfigMap, not the pod template (no rollout)
    config = deployment_builder.build_logging_config(d, logging)
    assert config["kind"] == "ConfigMap" and config["data"] == {"sampleRate": "0.25"}
    assert config["metadata"]["labels"]["kiln.dev/deployment"] == "iris"
    assert config["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert "KILN_PAYLOAD_LOG_SAMPLE_RATE" not in env
    assert env["KILN_PAYLOAD_LOG_SAMPLE_RATE_FILE"]["value"] == "/etc/kiln/logging/sampleRate"
    pod = server["spec"]["template"]["spec"]
    assert {"name": "logging", "configMap": {"name": config["metadata"]["name"]}} in pod["volumes"]
    assert {"name": "logging", "mountPath": "/etc/kiln/logging", "readOnly": True} in c["volumeMounts"]
    other = deployment_builder.build_server(_dep(logging={"enabled": True, "sampleRate": 1.0}),
                                            _model()["status"]["versions"][0], track="stable", replicas=1,
                                            image="kiln/server:0.1.0", s3_secret="kiln-s3-read",
                                            logging=payload_logging.resolve(
                                                _dep(logging={"enabled": True, "sampleRate": 1.0}), CFG))
    assert other["spec"]["template"] == server["spec"]["template"]
    assert env["KILN_PAYLOAD_LOG_COMPRESSION"]["value"] == "snappy"  # the CRD's default, also when absent
    ref = env["KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": CFG.s3_logging_secret, "key": "AWS_ACCESS_KEY_ID"}
    assert c["envFrom"] == [{"secretRef": {"name": "kiln-s3-read"}}]  # artifacts: still read-only
    assert payload_logging.resolve(_dep(logging={"enabled": False, "uri": "s3://x/y"}), CFG) is None


def test_logging_compression_reaches_the_server_and_the_crd_offers_what_the_server_takes():
    import yaml

    from kiln_server.config import PAYLOAD_LOG_CODECS

    logging = payload_logging.resolve(_dep(logging={"enabled": True, "compression": "zstd"}), CFG)
    server = deployment_builder.build_server(_dep(), _model()["status"]["versions"][0], track="stable", replicas=1,
                                             image="kiln/server:0.1.0", s3_secret="kiln-s3-read", logging=logging)
    env = {e["name"]: e.get("value") for e in server["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KILN_PAYLOAD_LOG_COMPRESSION"] == "zstd"
    crd = yaml.safe_load((Path(__file__).resolve().parents[2] / "crds" / "deployment.yaml").read_text())
    field = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "logging"]["properties"]["compression"]
    assert field["enum"] == list(PAYLOAD_LOG_CODECS) and field["default"] == "snappy"


def test_logging_prefix_outside_the_namespace_storage_is_refused_naming_the_field():
    ok = payload_logging.resolve(_dep(logging={"enabled": True, "uri": "s3://logs/ns/iris"}), CFG)
    assert ok.uri == "s3://logs/ns/iris"
    for uri in ("s3://kiln/models/other-ns/logs", "s3://logs/nsx", "s3://kiln/models/ns/../other"):
        with pytest.raises(tenancy.NotAllowed) as err:
            payload_logging.resolve(_dep(logging={"enabled": True, "uri": uri}), CFG)
        assert err.value.field == "spec.logging.uri"
