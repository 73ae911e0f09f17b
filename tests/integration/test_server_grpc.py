"""The Open Inference Protocol over gRPC against a real server process, called with NVIDIA's tritonclient
(a client no one here wrote, run in its own venv: tests/grpc_client_tool.py): health, metadata, inference
with raw_input_contents and with typed contents (FP32, FP64, INT64, BYTES), errors mapped to gRPC status
codes, and answers equal to the REST path's for the same rows.
"""

from __future__ import annotations

import grpc_client_tool
import numpy as np
import pytest
from server_support import Server, free_port, infer, model_version

pytestmark = pytest.mark.integration


def _start(kind: str, *args: str):
    m = model_version(kind)
    port = free_port()
    srv = Server(str(m["dir"]), "bc", "--grpc-port", str(port), *args).start()
    return m, srv, f"127.0.0.1:{port}"


def _calls(target: str, calls: list[dict]) -> list[dict]:
    return grpc_client_tool.drive(target, "bc", {"calls": calls})["results"]


def _rest(srv: Server, inputs: list[dict], rid: str) -> dict:
    status, body = infer(srv, {"id": rid, "inputs": inputs})
    assert status == 200, body
    return {o["name"]: o for o in body["outputs"]}


def _same(grpc_out: dict, rest_out: dict) -> None:
    assert set(grpc_out) == set(rest_out)
    for name, o in rest_out.items():
        g = grpc_out[name]
        assert g["datatype"] == o["datatype"] and g["shape"] == o["shape"], (name, g, o)
        if o["datatype"] == "BYTES":
            assert g["data"] == o["data"]
        else:
            np.testing.assert_allclose(np.asarray(g["data"], dtype=float), np.asarray(o["data"], dtype=float),
                                       rtol=1e-6)


@pytest.fixture(scope="module")
def rf():
    m, srv, target = _start("rf")
    yield m, srv, target
    srv.stop()


@pytest.fixture(scope="module")
def categorical():
    m, srv, target = _start("categorical")
    yield m, srv, target
    srv.stop()


@pytest.fixture(scope="module")
def regression():
    m, srv, target = _start("regression")
    yield m, srv, target
    srv.stop()


def test_health_and_metadata(rf):
    m, srv, target = rf
    live, ready, server_md, model_ready, model_md, versioned, wrong_version, unknown = _calls(target, [
        {"op": "live"}, {"op": "ready"}, {"op": "server_metadata"}, {"op": "model_ready"},
        {"op": "model_metadata"}, {"op": "model_metadata", "version": "1"},
        {"op": "model_metadata", "version": "7"}, {"op": "model_ready", "model": "nope"},
    ])
    assert live["live"] is True and ready["ready"] is True and model_ready["ready"] is True
    assert server_md["name"] == "kiln"
    _, rest_md = srv.request("GET", "/v2/models/bc")
    for md in (model_md, versioned):
        assert md["name"] == "bc" and md["versions"] == rest_md["versions"] and md["platform"] == rest_md["platform"]
        # protobuf's JSON form writes int64 as strings
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in md["inputs"]] == \
            [(t["name"], t["datatype"], t["shape"]) for t in rest_md["inputs"]]
        assert [t["name"] for t in md["outputs"]] == [t["name"] for t in rest_md["outputs"]]
    assert wrong_version["code"] == "NOT_FOUND" and "no version '7'" in wrong_version["message"]
    assert unknown["code"] == "NOT_FOUND"


def test_fp32_matrix_raw_and_typed_equal_rest(rf):
    m, srv, target = rf
    rows = np.asarray(m["X"][:5], dtype=np.float32)
    inputs = [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]
    rest = _rest(srv, inputs, "rest-1")
    raw, typed, labels_only = _calls(target, [
        {"op": "infer", "inputs": inputs, "id": "g-raw"},
        {"op": "infer", "inputs": inputs, "id": "g-typed", "typed": True},
        {"op": "infer", "inputs": inputs, "outputs": ["label"], "typed": True},
    ])
    assert raw["ok"] and raw["raw"] and raw["id"] == "g-raw" and raw["model_version"] == "1"
    assert typed["ok"] and not typed["raw"] and typed["id"] == "g-typed"
    _same(raw["outputs"], rest)
    _same(typed["outputs"], rest)
    assert list(labels_only["outputs"]) == ["label"]
    assert raw["outputs"]["label"]["data"] == [int(v) for v in m["pipeline"].predict(m["X"][:5])]


def test_fp64_and_int64_inputs(rf):
    m, srv, target = rf
    rows = np.asarray(m["X"][:4], dtype=np.float64)
    ints = np.rint(rows).astype(np.int64)
    fp64 = [{"name": "input", "datatype": "FP64", "shape": list(rows.shape), "data": rows.ravel().tolist()}]
    int64 = [{"name": "input", "datatype": "INT64", "shape": list(ints.shape), "data": ints.ravel().tolist()}]
    rest64, rest_int = _rest(srv, fp64, "a"), _rest(srv, int64, "b")
    results = _calls(target, [
        {"op": "infer", "inputs": fp64}, {"op": "infer", "inputs": fp64, "typed": True},
        {"op": "infer", "inputs": int64}, {"op": "infer", "inputs": int64, "typed": True},
    ])
    assert all(r["ok"] for r in results), results
    _same(results[0]["outputs"], rest64)
    _same(results[1]["outputs"], rest64)
    _same(results[2]["outputs"], rest_int)
    _same(results[3]["outputs"], rest_int)


def test_bytes_per_feature_inputs(categorical):
    m, srv, target = categorical
    X = m["X"].iloc[:6]
    inputs = [{"name": "size", "datatype": "FP64", "shape": [6], "data": X["size"].tolist()},
              {"name": "color", "datatype": "BYTES", "shape": [6, 1], "data": X["color"].tolist()},
              {"name": "weight", "datatype": "FP32", "shape": [6], "data": X["weight"].tolist()}]
    rest = _rest(srv, inputs, "c")
    raw, typed = _calls(target, [{"op": "infer", "inputs": inputs}, {"op": "infer", "inputs": inputs, "typed": True}])
    assert raw["ok"] and typed["ok"], (raw, typed)
    _same(raw["outputs"], rest)
    _same(typed["outputs"], rest)
    assert raw["outputs"]["label"]["datatype"] == "BYTES"
    assert raw["outputs"]["label"]["data"] == [str(v) for v in m["pipeline"].predict(X)]


def test_regression_fp64(regression):
    m, srv, target = regression
    rows = np.asarray(m["X"][:3], dtype=np.float64)
    inputs = [{"name": "input", "datatype": "FP64", "shape": list(rows.shape), "data": rows.ravel().tolist()}]
    rest = _rest(srv, inputs, "r")
    raw, typed = _calls(target, [{"op": "infer", "inputs": inputs}, {"op": "infer", "inputs": inputs, "typed": True}])
    _same(raw["outputs"], rest)
    _same(typed["outputs"], rest)
    np.testing.assert_allclose(raw["outputs"]["label"]["data"], m["pipeline"].predict(rows), rtol=1e-4)


def test_errors_map_to_grpc_codes_with_rest_messages(categorical):
    m, srv, target = categorical
    X = m["X"].iloc[:2]
    good = [{"name": "size", "datatype": "FP64", "shape": [2], "data": X["size"].tolist()},
            {"name": "color", "datatype": "BYTES", "shape": [2], "data": X["color"].tolist()},
            {"name": "weight", "datatype": "FP64", "shape": [2], "data": X["weight"].tolist()}]
    color_as_number = [good[0], {"name": "color", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}, good[2]]
    wrong_shape = [good[0], good[1], {**good[2], "shape": [3]}]
    wrong_field = [good[0], good[1], {**good[2], "field": "fp32_contents"}]
    unknown = [*good, {"name": "nope", "datatype": "FP64", "shape": [2], "data": [1.0, 2.0]}]
    results = _calls(target, [
        {"op": "infer", "inputs": good[:2]},  # missing feature
        {"op": "infer", "inputs": color_as_number, "typed": True},
        {"op": "infer", "inputs": wrong_shape, "typed": True},
        {"op": "infer", "inputs": wrong_field, "typed": True},
        {"op": "infer", "inputs": unknown},
        {"op": "infer", "inputs": good, "model": "other"},
        {"op": "infer", "inputs": good, "version": "9"},
    ])
    codes = [r.get("code") for r in results]
    assert codes == ["INVALID_ARGUMENT"] * 5 + ["NOT_FOUND"] * 2, results
    # the messages are REST's, from the same decoder
    for inputs, result in ((good[:2], results[0]), (unknown, results[4])):
        status, body = infer(srv, {"inputs": inputs})
        assert status == 422 and body["error"] == result["message"]
    assert "categorical" in results[1]["message"]
    assert "holds 3 values but contents.fp64_contents has 2" in results[2]["message"]
    assert "contents.fp64_contents, not contents.fp32_contents" in results[3]["message"]


def test_limits_are_rest_limits():
    m = model_version("categorical")
    port = free_port()
    srv = Server(str(m["dir"]), "bc", "--grpc-port", str(port), "--max-elements", "50", "--max-string-length", "8",
                 "--max-body-bytes", "4096").start()
    try:
        target = f"127.0.0.1:{port}"
        n = 20
        many = [{"name": "size", "datatype": "FP64", "shape": [n], "data": [1.0] * n},
                {"name": "color", "datatype": "BYTES", "shape": [n], "data": ["red"] * n},
                {"name": "weight", "datatype": "FP64", "shape": [n], "data": [1.0] * n}]
        long = [{**many[0], "shape": [1], "data": [1.0]},
                {"name": "color", "datatype": "BYTES", "shape": [1], "data": ["r" * 40]},
                {**many[2], "shape": [1], "data": [1.0]}]
        big = [{"name": "size", "datatype": "FP64", "shape": [1000], "data": [1.0] * 1000}]
        results = _calls(target, [{"op": "infer", "inputs": many}, {"op": "infer", "inputs": long, "typed": True},
                                  {"op": "infer", "inputs": big}])
        assert [r.get("code") for r in results] == ["RESOURCE_EXHAUSTED"] * 3, results
        assert "KILN_MAX_ELEMENTS" in results[0]["message"]
        assert "KILN_MAX_STRING_LENGTH" in results[1]["message"]
        _, text = srv.request("GET", "/metrics")
        assert 'kiln_inference_requests_total{code="413",model="bc",version="1"} 2.0' in text
    finally:
        srv.stop()


def test_grpc_traffic_counts_in_the_shared_metrics(rf):
    m, srv, target = rf
    _, before = srv.request("GET", "/metrics")
    rows = np.asarray(m["X"][:1], dtype=np.float32)
    inputs = [{"name": "input", "datatype": "FP32", "shape": [1, rows.shape[1]], "data": rows.ravel().tolist()}]
    _calls(target, [{"op": "infer", "inputs": inputs}] * 3)
    _, after = srv.request("GET", "/metrics")

    def ok(text: str) -> float:
        line = next((x for x in text.splitlines() if x.startswith('kiln_inference_requests_total{code="200"')), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    assert ok(after) - ok(before) == 3
    assert "kiln_prediction_label_total" in after


def test_grpc_with_worker_processes():
    m = model_version("rf")
    port = free_port()
    srv = Server(str(m["dir"]), "bc", "--grpc-port", str(port), "--workers", "2").start()
    try:
        rows = np.asarray(m["X"][:2], dtype=np.float32)
        inputs = [{"name": "input", "datatype": "FP32", "shape": list(rows.shape), "data": rows.ravel().tolist()}]
        results = _calls(f"127.0.0.1:{port}", [{"op": "infer", "inputs": inputs}] * 4)
        assert all(r["ok"] for r in results), results
    finally:
        assert srv.stop() == 0
