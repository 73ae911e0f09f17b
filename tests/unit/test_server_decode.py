"""Payload decoding and validation (pure: no model, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from kiln_server.decode import decode_v1, decode_v2, parse_json, typed_values
from kiln_server.errors import ClientError
from kiln_server.schema import Schema


def schema(names=("a", "b", "c"), categorical=None, nan_ok=None, float_dtype=np.float32) -> Schema:
    s = Schema(names=list(names), categorical=list(categorical or [False] * len(names)),
               task="classification", classes=[0, 1], float_dtype=np.dtype(float_dtype), n_classes=2)
    if nan_ok is not None:
        s.nan_ok = np.asarray(nan_ok, dtype=bool)
    return s


def err(fn, *args) -> ClientError:
    with pytest.raises(ClientError) as info:
        fn(*args)
    return info.value


def test_matrix_flat_and_nested_give_the_same_rows():
    flat = decode_v2({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]},
                     schema())
    nested = decode_v2({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP64",
                                    "data": [[1, 2, 3], [4, 5, 6]]}]}, schema())
    assert flat.n == nested.n == 2
    assert flat.x.dtype == np.float32
    np.testing.assert_array_equal(flat.x, [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(flat.x, nested.x)


def test_per_feature_tensors_in_any_order_and_shape():
    body = {"id": "r1", "inputs": [
        {"name": "c", "shape": [2, 1], "datatype": "INT64", "data": [[5], [6]]},
        {"name": "a", "shape": [2], "datatype": "FP64", "data": [1.5, 2.5]},
        {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]},
    ]}
    batch = decode_v2(body, schema())
    np.testing.assert_array_equal(batch.x, [[1.5, 1, 5], [2.5, 0, 6]])
    assert batch.id == "r1" and batch.outputs is None


def test_requested_outputs_are_checked():
    body = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
            "outputs": [{"name": "probabilities"}]}
    assert decode_v2(body, schema()).outputs == ("probabilities",)
    body["outputs"] = [{"name": "logits"}]
    e = err(decode_v2, body, schema())
    assert e.status == 400 and "'logits'" in e.message


@pytest.mark.parametrize("data, datatype, status, words", [
    (["1.0"], "FP32", 422, ["strings"]),
    ([True], "FP32", 422, ["booleans"]),
    ([1.5], "INT32", 422, ["non-integer"]),
    ([None], "INT64", 422, ["null"]),
    ([1], "BYTES", 422, ["strings"]),
    ([1.0], "BOOL", 422, ["BOOL"]),
    ([[1, 2], [3]], "FP32", 400, ["ragged"]),
    ([2 ** 70], "INT64", 422, ["64 bits"]),
    ([1, None], "INT64", 422, ["element 1", "null"]),
    ([{"a": 1}], "FP64", 422, ["element 0"]),
])
def test_values_must_match_the_declared_datatype(data, datatype, status, words):
    e = err(typed_values, data, datatype, "input 'x'", np.float32)
    assert e.status == status
    assert "input 'x'" in e.message or status == 400
    for w in words:
        assert w in e.message


def test_null_and_nan_are_missing_in_float_tensors():
    out = typed_values([1.0, None, float("nan")], "FP64", "x", np.float64)
    assert out[0] == 1.0 and np.isnan(out[1]) and np.isnan(out[2])


def test_nan_refused_only_where_the_model_cannot_take_it():
    body = {"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP32",
                        "data": [1, 2, 3, 4, None, 6, 7, 8, 9]}]}
    assert decode_v2(body, schema(nan_ok=[False, True, False])).n == 3
    e = err(decode_v2, body, schema(nan_ok=[True, False, True]))
    assert e.status == 422 and "'b'" in e.message and "row(s) 1" in e.message


def test_matrix_width_and_dimension_errors():
    e = err(decode_v2, {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}, schema())
    assert e.status == 422 and "2 columns" in e.message and "3 features" in e.message
    e = err(decode_v2, {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}, schema())
    assert e.status == 422 and "'x' is not a feature" in e.message
    e = err(decode_v2, {"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3]}]},
            schema())
    assert e.status == 400 and "6 values" in e.message


def test_feature_set_errors_name_the_features():
    def tensor(name):
        return {"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}

    e = err(decode_v2, {"inputs": [tensor("a"), tensor("b"), tensor("c"), tensor("d")]}, schema())
    assert e.status == 422 and "unknown feature(s) 'd'" in e.message
    e = err(decode_v2, {"inputs": [tensor("a"), tensor("c")]}, schema())
    assert e.status == 422 and "missing feature(s) 'b'" in e.message
    e = err(decode_v2, {"inputs": [tensor("a"), tensor("a"), tensor("b")]}, schema())
    assert e.status == 400 and "twice" in e.message


def test_categorical_features_take_bytes_only():
    s = schema(categorical=[False, True, False])
    body = {"inputs": [
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["red", "blue"]},
        {"name": "c", "shape": [2], "datatype": "FP32", "data": [3, 4]},
    ]}
    batch = decode_v2(body, s)
    assert isinstance(batch.x, list) and batch.x[1].tolist() == ["red", "blue"]
    body["inputs"][1] = {"name": "b", "shape": [2], "datatype": "INT64", "data": [1, 2]}
    e = err(decode_v2, body, s)
    assert e.status == 422 and "'b' is categorical" in e.message
    matrix = {"inputs": [{"name": "x", "shape": [1, 3], "datatype": "BYTES", "data": ["1.5", "red", "2"]}]}
    cols = decode_v2(matrix, s).x
    assert cols[0].tolist() == [1.5] and cols[1].tolist() == ["red"] and cols[2].tolist() == [2.0]


def test_v1_rows_and_dicts():
    rows = decode_v1({"instances": [[1, 2, 3], [4, 5, 6]]}, schema())
    dicts = decode_v1({"instances": [{"c": 3, "b": 2, "a": 1}, {"a": 4, "b": 5, "c": 6}]}, schema())
    np.testing.assert_array_equal(rows.x, dicts.x)
    e = err(decode_v1, {"instances": [{"a": 1, "b": 2, "z": 3}]}, schema())
    assert e.status == 422 and "'z'" in e.message
    e = err(decode_v1, {"instances": [[1, 2]]}, schema())
    assert e.status == 422 and "instances[0]" in e.message


@pytest.mark.parametrize("body, words", [
    (b"", ["empty"]),
    (b"{", ["malformed JSON"]),
    (b"[1]", ["JSON object"]),
    (b"\xff", ["malformed JSON"]),
])
def test_parse_json_errors(body, words):
    e = err(parse_json, body)
    assert e.status == 400 and all(w in e.message for w in words)


def test_parse_json_accepts_python_nan_literals():
    assert np.isnan(parse_json(b'{"x": NaN}')["x"])
