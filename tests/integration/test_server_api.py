"""The server's HTTP API, from the Open Inference Protocol V2 and KServe V1 specs, against a real process."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_support import Server, infer, model_version, v2_matrix

pytestmark = pytest.mark.integration

MAX_BODY = 1 << 20


@pytest.fixture(scope="module")
def rf():
    return model_version("rf")


@pytest.fixture(scope="module")
def server(rf):
    srv = Server(rf["dir"], "bc", "--max-body-bytes", str(MAX_BODY)).start()
    yield srv
    assert srv.stop() == 0


# --- health and metadata -----------------------------------------------------------------------


def test_health_live_and_ready(server):
    assert server.request("GET", "/v2/health/live") == (200, {"live": True})
    assert server.request("GET", "/v2/health/ready") == (200, {"ready": True})


def test_server_metadata(server):
    status, body = server.request("GET", "/v2")
    assert status == 200
    assert body["name"] == "kiln" and isinstance(body["version"], str) and body["extensions"] == []


def test_model_metadata_and_versions(server, rf):
    status, meta = server.request("GET", "/v2/models/bc")
    assert status == 200
    assert meta["name"] == "bc" and meta["versions"] == ["1"] and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "INT64", "shape": [-1]},
                               {"name": "probabilities", "datatype": "FP32", "shape": [-1, 2]}]
    assert meta["parameters"]["feature_names"] == rf["names"]
    assert meta["parameters"]["sha256"] == next(a["sha256"] for a in rf["card"]["artifacts"] if a["format"] == "onnx")
    assert server.request("GET", "/v2/models/bc/versions/1") == (200, meta)


def test_model_ready_with_and_without_version(server):
    assert server.request("GET", "/v2/models/bc/ready") == (200, {"name": "bc", "ready": True})
    assert server.request("GET", "/v2/models/bc/versions/1/ready") == (200, {"name": "bc", "ready": True})


def test_v1_model_status(server):
    assert server.request("GET", "/v1/models/bc") == (200, {"name": "bc", "ready": True})
    assert server.request("GET", "/v1/models") == (200, {"models": ["bc"]})


@pytest.mark.parametrize("path, needle", [
    ("/v2/models/nope", "'nope'"),
    ("/v2/models/nope/ready", "'nope'"),
    ("/v2/models/bc/versions/7", "version '7'"),
    ("/v2/models/bc/versions/7/ready", "version '7'"),
    ("/v1/models/nope", "'nope'"),
    ("/v3/anything", "no route"),
])
def test_unknown_model_version_or_route_is_404(server, path, needle):
    status, body = server.request("GET", path)
    assert status == 404 and needle in body["error"]


# --- inference ---------------------------------------------------------------------------------


def test_matrix_fp32_matches_the_pipeline_on_every_row(server, rf):
    X, pipe = rf["X"], rf["pipeline"]
    status, body = infer(server, v2_matrix(X, rid="req-42"))
    assert status == 200, body
    assert body["model_name"] == "bc" and body["model_version"] == "1" and body["id"] == "req-42"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["datatype"] == "INT64" and out["label"]["shape"] == [len(X)]
    assert out["label"]["data"] == pipe.predict(X).tolist()
    assert out["probabilities"]["datatype"] == "FP32" and out["probabilities"]["shape"] == [len(X), 2]
    probs = np.asarray(out["probabilities"]["data"]).reshape(len(X), 2)
    np.testing.assert_allclose(probs, pipe.predict_proba(X), atol=1e-5)


def test_nested_data_and_fp64_int64_datatypes(server, rf):
    X, pipe = rf["X"][:5], rf["pipeline"]
    nested = {"inputs": [{"name": "input", "shape": [5, 30], "datatype": "FP64", "data": X.tolist()}]}
    status, body = infer(server, nested)
    assert status == 200 and body["outputs"][0]["data"] == pipe.predict(X).tolist()
    # Integer tensors: the same answer as the same values sent as floats.
    Xi = np.round(rf["X"][:40]).astype(np.int64)
    status, as_int = infer(server, {"inputs": [{"name": "input", "shape": [40, 30], "datatype": "INT64",
                                                "data": Xi.reshape(-1).tolist()}]})
    status_f, as_float = infer(server, v2_matrix(Xi.astype(float)))
    assert status == status_f == 200
    assert as_int["outputs"] == as_float["outputs"]


@pytest.mark.parametrize("column_shape", ["flat", "column"])
def test_one_tensor_per_feature(server, rf, column_shape):
    X, pipe, names = rf["X"][10:14], rf["pipeline"], rf["names"]
    shape = [4] if column_shape == "flat" else [4, 1]
    inputs = [{"name": n, "shape": shape, "datatype": "FP32" if j % 2 else "FP64", "data": X[:, j].tolist()}
              for j, n in reversed(list(enumerate(names)))]  # order must not matter
    status, body = infer(server, {"inputs": inputs})
    assert status == 200, body
    assert body["outputs"][0]["data"] == pipe.predict(X).tolist()


def test_requested_outputs_only(server, rf):
    body = v2_matrix(rf["X"][:3])
    body["outputs"] = [{"name": "probabilities"}]
    status, resp = infer(server, body)
    assert status == 200 and [o["name"] for o in resp["outputs"]] == ["probabilities"]


def test_versioned_infer_path(server, rf):
    status, body = infer(server, v2_matrix(rf["X"][:2]), "/v2/models/bc/versions/1/infer")
    assert status == 200 and body["model_version"] == "1"


def test_v1_predict_rows_and_feature_dicts(server, rf):
    X, pipe, names = rf["X"][20:26], rf["pipeline"], rf["names"]
    status, body = infer(server, {"instances": X.tolist()}, "/v1/models/bc:predict")
    assert status == 200 and body == {"predictions": pipe.predict(X).tolist()}
    dicts = [dict(zip(names, row.tolist(), strict=True)) for row in X]
    status, body = infer(server, {"instances": dicts}, "/v1/models/bc:predict")
    assert status == 200 and body == {"predictions": pipe.predict(X).tolist()}


# --- bad input -----------------------------------------------------------------------------------

ROW = [1.0] * 30


def _features(n_rows=1, drop=None, extra=None, names=None):
    inputs = [{"name": n, "shape": [n_rows], "datatype": "FP32", "data": [1.0] * n_rows}
              for n in names if n != drop]
    if extra:
        inputs.append({"name": extra, "shape": [n_rows], "datatype": "FP32", "data": [1.0] * n_rows})
    return {"inputs": inputs}


BAD_V2 = [
    # (id, body, status, words the message must contain)
    ("malformed-json", b'{"inputs": [', 400, ["malformed JSON"]),
    ("empty-body", b"", 400, ["empty"]),
    ("not-an-object", b"[1, 2, 3]", 400, ["JSON object"]),
    ("no-inputs", {"id": "x"}, 400, ["'inputs'"]),
    ("too-few-columns", {"inputs": [{"name": "input", "shape": [1, 29], "datatype": "FP32", "data": ROW[:29]}]},
     422, ["29 columns", "30 features"]),
    ("shape-data-mismatch", {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": ROW}]},
     400, ["[2, 30]", "60 values", "30"]),
    ("bytes-for-numeric", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "BYTES",
                                       "data": ["a"] * 30}]}, 422, ["numeric", "BYTES"]),
    ("unknown-datatype", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FLOAT", "data": ROW}]},
     400, ["unknown datatype 'FLOAT'"]),
    ("strings-in-fp32", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                     "data": ["1.0"] * 30}]}, 422, ["FP32", "strings"]),
    ("fraction-in-int64", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "INT64",
                                       "data": [1.5] * 30}]}, 422, ["INT64", "non-integer"]),
    ("ragged", {"inputs": [{"name": "input", "shape": [2, 30], "datatype": "FP32", "data": [ROW, ROW[:29]]}]},
     400, ["ragged"]),
    ("negative-shape", {"inputs": [{"name": "input", "shape": [-1, 30], "datatype": "FP32", "data": ROW}]},
     400, ["negative"]),
    ("one-dimensional", {"inputs": [{"name": "input", "shape": [30], "datatype": "FP32", "data": ROW}]},
     422, ["'input' is not a feature", "[N, 30]"]),
    ("unknown-output", {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW}],
                        "outputs": [{"name": "scores"}]}, 400, ["unknown output 'scores'"]),
    ("no-rows", {"inputs": [{"name": "input", "shape": [0, 30], "datatype": "FP32", "data": []}]},
     400, ["no rows"]),
]


@pytest.mark.parametrize("case", BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_requests_get_4xx_naming_the_problem(server, case):
    _, body, status, words = case
    got, resp = infer(server, body)
    assert got == status, resp
    for word in words:
        assert word in resp["error"], resp


def test_unknown_and_missing_features_are_named(server, rf):
    names = rf["names"]
    status, resp = infer(server, _features(names=names, extra="mean radiusx"))
    assert status == 422 and "'mean radiusx'" in resp["error"] and "unknown feature" in resp["error"]
    status, resp = infer(server, _features(names=names, drop="worst area"))
    assert status == 422 and "missing feature" in resp["error"] and "'worst area'" in resp["error"]


def test_duplicate_feature_and_unequal_rows(server, rf):
    body = _features(names=rf["names"])
    body["inputs"].append(dict(body["inputs"][0]))
    status, resp = infer(server, body)
    assert status == 400 and "given twice" in resp["error"] and "'mean radius'" in resp["error"]
    body = _features(names=rf["names"])
    body["inputs"][3] = {**body["inputs"][3], "shape": [2], "data": [1.0, 2.0]}
    status, resp = infer(server, body)
    assert status == 422 and "rows" in resp["error"] and "'mean area'" in resp["error"]


def test_oversized_body_is_413(server):
    rows = [ROW] * 8000  # ~1.2 MB of JSON > the 1 MiB limit of this server
    body = json.dumps({"inputs": [{"name": "input", "shape": [8000, 30], "datatype": "FP32", "data": rows}]})
    assert len(body) > MAX_BODY
    status, resp = infer(server, body)
    assert status == 413 and str(MAX_BODY) in resp["error"] and "KILN_MAX_BODY_BYTES" in resp["error"]
    # Without Content-Length (chunked), the limit holds while the body streams in.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    chunks = (body[i:i + 65536].encode() for i in range(0, len(body), 65536))
    conn.request("POST", "/v2/models/bc/infer", body=chunks, encode_chunked=True,
                 headers={"Transfer-Encoding": "chunked"})
    resp = conn.getresponse()
    assert resp.status == 413 and str(MAX_BODY) in json.loads(resp.read())["error"]
    conn.close()
    assert server.request("GET", "/v2/health/live")[0] == 200


def test_unknown_model_or_version_on_infer_is_404(server):
    status, resp = infer(server, v2_matrix([ROW]), "/v2/models/other/infer")
    assert status == 404 and "'other'" in resp["error"]
    status, resp = infer(server, v2_matrix([ROW]), "/v2/models/bc/versions/9/infer")
    assert status == 404 and "'9'" in resp["error"]
    status, resp = infer(server, {"instances": [ROW]}, "/v1/models/other:predict")
    assert status == 404 and "'other'" in resp["error"]


def test_wrong_method_is_405(server):
    status, resp = server.request("GET", "/v2/models/bc/infer")
    assert status == 405 and "POST" in resp["error"]


@pytest.mark.parametrize("body, words", [
    ({"instances": [ROW[:29]]}, ["instances[0]", "29 values", "30 features"]),
    ({"instances": [{"mean radius": 1.0}]}, ["instances[0]", "missing feature", "'mean texture'"]),
    ({"instances": []}, ["'instances'"]),
    ({"instances": [1.0, 2.0]}, ["each instance"]),
    ({"instances": [["x"] * 30]}, ["strings"]),
])
def test_bad_v1_requests(server, body, words):
    status, resp = infer(server, body, "/v1/models/bc:predict")
    assert 400 <= status < 500, resp
    for word in words:
        assert word in resp["error"], resp


def test_nan_and_null_are_accepted_where_the_model_takes_them(server, rf):
    # The random forest handles missing values (scikit-learn trees do); the warm-up probe learnt that.
    row = list(rf["X"][0])
    row[0] = None
    status, body = infer(server, {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64",
                                              "data": row}]})
    assert status == 200, body
    row[0] = float("nan")  # Python's json writes the non-standard NaN literal
    status, body = infer(server, {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP64",
                                              "data": row}]})
    assert status == 200, body


def test_server_survives_bad_input(server, rf):
    for body in (b"\xff\xfe", b"{" * 10000, b'{"inputs": [{"name": "input", "data": {"a": 1}}]}'):
        status, _ = infer(server, body)
        assert 400 <= status < 500
    status, body = infer(server, v2_matrix(rf["X"][:1]))
    assert status == 200


# --- metrics -------------------------------------------------------------------------------------


def scrape(server) -> dict:
    status, text = server.request("GET", "/metrics")
    assert status == 200
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric(samples: dict, name: str, **labels) -> float:
    key = (name, tuple(sorted({"model": "bc", "version": "1", **labels}.items())))
    return samples.get(key, 0.0)


def test_metrics_move_by_the_traffic_sent(server, rf):
    before = scrape(server)
    X = rf["X"][:2]
    for _ in range(3):
        assert infer(server, v2_matrix(X))[0] == 200
    for _ in range(2):
        assert infer(server, v2_matrix(X[:, :29]))[0] == 422
    after = scrape(server)

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("kiln_inference_requests_total", code="200") == 3
    assert delta("kiln_inference_requests_total", code="422") == 2
    assert delta("kiln_inference_request_duration_seconds_count") == 5
    assert delta("kiln_inference_batch_size_count") == 3
    assert delta("kiln_inference_batch_size_sum") == 6
    assert metric(after, "kiln_inference_in_flight") == 0
    sha = next(a["sha256"] for a in rf["card"]["artifacts"] if a["format"] == "onnx")
    assert metric(after, "kiln_model_info", runtime="onnx", sha256=sha) == 1
    # Drift: six rows of 'mean radius' fell into the card's training bins.
    assert delta("kiln_feature_value_count", feature="mean radius") == 6
    assert delta("kiln_feature_value_sum", feature="mean radius") == pytest.approx(3 * X[:, 0].sum(), rel=1e-5)
    edges = rf["card"]["features"]["distributions"]["mean radius"]["histogram"]["edges"]
    le = edges[np.searchsorted(edges, X[0, 0])]
    from prometheus_client.utils import floatToGoString

    assert delta("kiln_feature_value_bucket", feature="mean radius", le=floatToGoString(le)) >= 3
    assert delta("kiln_feature_value_bucket", feature="mean radius", le="+Inf") == 6
