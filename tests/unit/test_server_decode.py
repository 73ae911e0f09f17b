"""Payload decoding and validation (pure: no model, no server)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from kiln_server.decode import Limits, decode_v1, decode_v2, parse_json, typed_values
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


# --- budgets and hostile payloads (issue #11) ------------------------------------------------------------------

SMALL = Limits(max_elements=100, max_string_length=8)


def matrix(data, shape, datatype="FP32", name="x") -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


@pytest.mark.parametrize("shape, words", [
    ([40, 3], ["'x'", "120 values", "100", "KILN_MAX_ELEMENTS"]),
    ([2 ** 62, 3], ["'x'", "KILN_MAX_ELEMENTS"]),
    ([10 ** 300, 0], ["'x'", "KILN_MAX_ELEMENTS"]),  # refused before a product of huge integers is made
])
def test_element_budget_is_checked_from_the_shape_before_the_data(shape, words):
    e = err(decode_v2, matrix([], shape), schema(), True, SMALL)
    assert e.status == 413
    assert all(w in e.message for w in words), e.message


def test_element_budget_is_per_request_over_all_inputs():
    inputs = [{"name": n, "shape": [40], "datatype": "FP32", "data": [1.0] * 40} for n in "abc"]
    e = err(decode_v2, {"inputs": inputs}, schema(), True, SMALL)
    assert e.status == 413 and "in all" in e.message and "'c'" in e.message
    assert decode_v2({"inputs": inputs}, schema(), True, Limits(max_elements=120)).n == 40
    e = err(decode_v1, {"instances": [[1, 2, 3]] * 34}, schema(), True, SMALL)
    assert e.status == 413 and "'instances'" in e.message and "KILN_MAX_ELEMENTS" in e.message


def test_strings_never_become_a_fixed_width_array():
    """One long string among many short ones: numpy would allocate (count x longest x 4) bytes."""
    data = ["x" * 1_000_000] + [""] * 99_999  # 400 GB as a numpy unicode array
    t0 = time.monotonic()
    e = err(decode_v2, matrix(data, [100_000]), schema(names=("x", "b", "c")), True, Limits())
    assert e.status == 422 and "'x'" in e.message and "strings" in e.message
    e = err(decode_v2, matrix(data, [1, 3]), schema(), True, Limits())  # shape first: nothing converted
    assert e.status == 400 and "[1, 3] holds 3 values but data has 100000" in e.message
    e = err(decode_v2, matrix(data, [25_000, 4], "BYTES"), schema(), True, Limits())
    assert e.status == 422 and "numeric" in e.message
    e = err(decode_v1, {"instances": [["x" * 1_000_000, "", ""]] + [["", "", ""]] * 30_000}, schema(), True, Limits())
    assert e.status == 422 and "strings" in e.message
    for v in (["1.5"] * 3, [["1.5", 2, 3]]):  # numbers as strings are refused, flat or nested
        e = err(decode_v2, matrix(v, [1, 3]), schema())
        assert e.status == 422 and "strings" in e.message
    assert time.monotonic() - t0 < 2.0
    assert all(len(m) < 300 for m in [e.message])


def test_bytes_elements_have_a_length_limit():
    s = schema(categorical=[False, True, False])
    body = {"inputs": [{"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
                       {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["red", "y" * 9]},
                       {"name": "c", "shape": [2], "datatype": "FP32", "data": [3, 4]}]}
    e = err(decode_v2, body, s, True, SMALL)
    assert e.status == 413
    assert all(w in e.message for w in ("'b'", "element 1", "9 characters", "KILN_MAX_STRING_LENGTH"))
    body["inputs"][1]["data"][1] = "y" * 8
    assert decode_v2(body, s, True, SMALL).x[1].tolist() == ["red", "y" * 8]
    e = err(decode_v1, {"instances": [{"a": 1, "b": "z" * 9, "c": 2}]}, s, True, SMALL)
    assert e.status == 413 and "'b'" in e.message


@pytest.mark.parametrize("body, status, words", [
    (matrix([1], [1] * 10, name="a"), 400, ["'a'", "10 dimensions", "at most 8"]),
    (matrix([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [1, 3]), 400, ["holds 3 values but data has 9", "[3, 3]"]),
    (matrix([[1, 2], [3, 4], [5, 6]], [2, 3]), 400, ["nested as [3, 2]", "[2, 3]"]),
    (matrix([[[1, 2, 3]]], [1, 3]), 400, ["nested as [1, 1, 3]"]),
    ({"inputs": [{"name": n, "shape": [1], "datatype": "FP32", "data": [1]} for n in map(str, range(30))]},
     422, ["30 tensors"]),
    ({**matrix([1, 2, 3], [1, 3]), "outputs": [{"name": "label"}] * 17}, 400, ["17 outputs"]),
])
def test_declarations_are_checked_in_constant_time(body, status, words):
    e = err(decode_v2, body, schema())
    assert e.status == status and all(w in e.message for w in words), e.message


def test_client_given_names_are_cut_short_in_messages():
    name = "n" * 100_000
    e = err(decode_v2, matrix([1, 2], [1, 2], name=name), schema())
    assert e.status == 422 and len(e.message) < 400 and "100000 characters" in e.message
    inputs = [{"name": f"{k}" * 5000, "shape": [1], "datatype": "FP32", "data": [1]} for k in range(10)]
    inputs.append({"name": "a", "shape": [1], "datatype": "FP32", "data": [1]})
    e = err(decode_v2, {"inputs": inputs}, schema())
    assert e.status == 422 and "unknown feature" in e.message and len(e.message) < 2000
    deep = [1]
    for _ in range(5000):  # a repr() of this would overflow the stack
        deep = [deep]
    e = err(decode_v2, {"inputs": [{"name": "a", "shape": [deep], "datatype": "FP32", "data": []}]}, schema())
    assert e.status == 400 and "an array of 1 item(s)" in e.message


def test_fast_paths_agree_with_the_slow_one():
    for data, datatype in [([1, 2.5, -3], "FP32"), ([1.0, None, 3.0], "FP64"), ([5, 6, 2 ** 63 + 1], "UINT64"),
                           ([5.0, 6.0, 7.0], "INT64"), ([[1, 2, 3]], "FP64"), ([True, False, True], "BOOL")]:
        shape = [1, 3]
        x = decode_v2(matrix(data, shape, datatype), schema(nan_ok=[True] * 3)).x
        assert x.shape == (1, 3) and x.dtype == np.float32 and x.flags.writeable
        flat = np.asarray(data, dtype=object).reshape(-1)
        expected = [np.nan if v is None else float(v) for v in flat]
        np.testing.assert_allclose(x.reshape(-1), np.asarray(expected, dtype=np.float32), equal_nan=True)
    e = err(decode_v2, matrix([1.0, True, 3.0], [1, 3]), schema())
    assert e.status == 422 and "element 1 is a boolean" in e.message
    e = err(decode_v2, matrix([1, 2, 10 ** 400], [1, 3], "FP32"), schema())
    assert e.status == 422 and "element 2" in e.message and "out of range" in e.message
