"""Other model shapes: categorical features (one ONNX input per column), missing-value rules,
regression, and the scikit-learn runtime for joblib artifacts (opt-in)."""

from __future__ import annotations

import numpy as np
import pytest
from server_support import Server, model_version, v2_matrix

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def categorical():
    info = model_version("categorical")
    srv = Server(info["dir"], "shapes").start()
    yield info, srv
    assert srv.stop() == 0


def _column_inputs(frame, datatypes=None):
    inputs = []
    for name in frame.columns:
        col = frame[name]
        stringy = col.dtype.kind in "OSU" or str(col.dtype) == "str"
        dt = (datatypes or {}).get(name) or ("BYTES" if stringy else "FP64")
        if dt == "BYTES":
            data = [str(v) for v in col]
        else:
            data = [float(k) for k in range(len(col))] if stringy else col.astype(float).tolist()
        inputs.append({"name": name, "shape": [len(col)], "datatype": dt, "data": data})
    return {"inputs": inputs}


def test_categorical_model_per_feature_tensors(categorical):
    info, srv = categorical
    frame, pipe = info["X"].iloc[:25], info["pipeline"]
    status, meta = srv.request("GET", "/v2/models/shapes")
    assert status == 200
    assert meta["inputs"] == [{"name": "size", "datatype": "FP32", "shape": [-1]},
                              {"name": "color", "datatype": "BYTES", "shape": [-1]},
                              {"name": "weight", "datatype": "FP32", "shape": [-1]}]
    status, body = srv.request("POST", "/v2/models/shapes/infer", _column_inputs(frame))
    assert status == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert out["label"]["datatype"] == "BYTES" and out["label"]["data"] == pipe.predict(frame).tolist()
    np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (25, 2)), pipe.predict_proba(frame),
                               atol=1e-5)


def test_categorical_model_v1_dicts_and_rows(categorical):
    info, srv = categorical
    frame, pipe = info["X"].iloc[30:36], info["pipeline"]
    records = frame.to_dict(orient="records")
    status, body = srv.request("POST", "/v1/models/shapes:predict", {"instances": records})
    assert status == 200 and body["predictions"] == pipe.predict(frame).tolist()
    rows = frame.values.tolist()
    status, body = srv.request("POST", "/v1/models/shapes:predict", {"instances": rows})
    assert status == 200 and body["predictions"] == pipe.predict(frame).tolist()


def test_categorical_wrong_datatypes(categorical):
    info, srv = categorical
    frame = info["X"].iloc[:2]
    status, resp = srv.request("POST", "/v2/models/shapes/infer", _column_inputs(frame, {"color": "FP32"}))
    assert status == 422 and "'color'" in resp["error"] and "categorical" in resp["error"]
    status, resp = srv.request("POST", "/v2/models/shapes/infer", _column_inputs(frame, {"size": "BYTES"}))
    assert status == 422 and "'size'" in resp["error"] and "numeric" in resp["error"]
    # A numeric matrix cannot carry the categorical column.
    status, resp = srv.request("POST", "/v2/models/shapes/infer", v2_matrix([[1.0, 2.0, 3.0]]))
    assert status == 422 and "'color'" in resp["error"]


def test_categorical_nan_refused_where_the_pipeline_cannot_impute(categorical):
    info, srv = categorical
    body = _column_inputs(info["X"].iloc[:3])
    body["inputs"][0]["data"][1] = None  # size, row 1
    status, resp = srv.request("POST", "/v2/models/shapes/infer", body)
    assert status == 422 and "'size'" in resp["error"] and "row(s) 1" in resp["error"]


def test_logistic_regression_refuses_nan_naming_feature_and_row():
    info = model_version("logreg", ("onnx",))
    srv = Server(info["dir"], "lr").start()
    try:
        X = info["X"][:3].copy()
        ok, body = srv.request("POST", "/v2/models/lr/infer", v2_matrix(X))
        assert ok == 200 and body["outputs"][0]["data"] == info["pipeline"].predict(X).tolist()
        X[2, 5] = np.nan
        status, resp = srv.request("POST", "/v2/models/lr/infer", v2_matrix(X))
        assert status == 422, resp
        assert "'mean compactness'" in resp["error"] and "row(s) 2" in resp["error"]
        # +inf and -inf on two features of same-sign weights: no NaN in, NaN out. Still a 4xx, never a 500.
        coef = info["pipeline"].named_steps["model"].coef_[0]
        j, k = np.flatnonzero(coef > 0)[:2]
        X[2] = info["X"][2]
        X[1, j], X[1, k] = np.inf, -np.inf
        status, resp = srv.request("POST", "/v2/models/lr/infer", v2_matrix(X))
        assert status == 422 and "non-finite" in resp["error"] and "row(s) 1" in resp["error"], resp
    finally:
        assert srv.stop() == 0


def test_regression_label_is_a_float_vector():
    info = model_version("regression", ("onnx",))
    srv = Server(info["dir"], "diabetes").start()
    try:
        X = info["X"][:7]
        status, body = srv.request("POST", "/v2/models/diabetes/infer", v2_matrix(X))
        assert status == 200
        assert [o["name"] for o in body["outputs"]] == ["label"]
        out = body["outputs"][0]
        assert out["datatype"] == "FP32" and out["shape"] == [7]
        np.testing.assert_allclose(out["data"], info["pipeline"].predict(X), rtol=1e-4)
    finally:
        assert srv.stop() == 0


def test_sklearn_runtime_serves_joblib_with_opt_in():
    info = model_version("rf", ("joblib",))
    srv = Server(info["dir"], "bc", "--allow-unsafe-formats").start()
    try:
        status, meta = srv.request("GET", "/v2/models/bc")
        assert meta["platform"] == "scikit-learn" and meta["parameters"]["format"] == "joblib"
        X = info["X"][:50]
        status, body = srv.request("POST", "/v2/models/bc/infer", v2_matrix(X, datatype="FP64"))
        assert status == 200
        out = {o["name"]: o for o in body["outputs"]}
        assert out["label"]["data"] == info["pipeline"].predict(X).tolist()
        assert out["probabilities"]["datatype"] == "FP64"
        np.testing.assert_array_equal(np.reshape(out["probabilities"]["data"], (50, 2)),
                                      info["pipeline"].predict_proba(X))
    finally:
        assert srv.stop() == 0


def test_runtime_sklearn_chosen_by_env_over_onnx():
    info = model_version("rf")
    srv = Server(info["dir"], "bc", env={"KILN_RUNTIME": "sklearn", "KILN_ALLOW_UNSAFE_FORMATS": "true"}).start()
    try:
        status, meta = srv.request("GET", "/v2/models/bc")
        assert status == 200 and meta["platform"] == "scikit-learn"
    finally:
        assert srv.stop() == 0


def test_sklearn_runtime_with_categorical_features_uses_a_dataframe():
    info = model_version("categorical", ("joblib",))
    srv = Server(info["dir"], "shapes", "--allow-unsafe-formats").start()
    try:
        frame, pipe = info["X"].iloc[:12], info["pipeline"]
        status, body = srv.request("POST", "/v2/models/shapes/infer", _column_inputs(frame))
        assert status == 200, body
        out = {o["name"]: o for o in body["outputs"]}
        assert out["label"]["data"] == pipe.predict(frame).tolist()
        np.testing.assert_allclose(np.reshape(out["probabilities"]["data"], (12, 2)), pipe.predict_proba(frame))
        status, body = srv.request("POST", "/v1/models/shapes:predict", {"instances": frame.to_dict("records")})
        assert status == 200 and body["predictions"] == pipe.predict(frame).tolist()
    finally:
        assert srv.stop() == 0
