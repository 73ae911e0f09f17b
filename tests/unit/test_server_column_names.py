"""The server speaks the user's column names (any characters) and takes JSON booleans for features
trained from boolean columns; ONNX input names stay in the card (pure: no model, no server)."""

from __future__ import annotations

import numpy as np
import pytest

from kiln_server.decode import decode_v1, decode_v2
from kiln_server.errors import ClientError
from kiln_server.protocol import model_metadata
from kiln_server.schema import Schema, booleans_from_card

NAMES = ["température °C", "a/b", "city name", "member?", "x" * 200]


def schema(booleans=frozenset(), onnx_inputs=None) -> Schema:
    return Schema(names=list(NAMES), categorical=[False, False, True, False, False], task="classification",
                  classes=[0, 1], float_dtype=np.dtype(np.float64), n_classes=2, booleans=frozenset(booleans),
                  onnx_inputs=onnx_inputs or {})


def test_v2_tensors_and_v1_dicts_use_the_users_names():
    s = schema()
    body = {"inputs": [{"name": n, "shape": [2], "datatype": "BYTES" if n == "city name" else "FP64",
                        "data": ["Roma", "Milano"] if n == "city name" else [1.5, None]} for n in NAMES]}
    batch = decode_v2(body, s)
    assert batch.n == 2 and list(batch.x[2]) == ["Roma", "Milano"] and np.isnan(batch.x[1][1])
    v1 = decode_v1({"instances": [{n: ("Roma" if n == "city name" else 2.0) for n in NAMES}]}, s)
    assert v1.n == 1 and v1.x[0][0] == 2.0


def test_json_booleans_are_numbers_only_for_boolean_features():
    row = {n: ("Roma" if n == "city name" else 1.0) for n in NAMES}
    row["member?"] = True
    got = decode_v1({"instances": [row]}, schema(booleans={"member?"}))
    assert got.x[3][0] == 1.0
    got = decode_v1({"instances": [[1.0, 2.0, "Roma", False, 3.0]]}, schema(booleans={"member?"}))
    assert got.x[3][0] == 0.0
    with pytest.raises(ClientError) as exc:  # a feature that was not a boolean column still refuses them
        decode_v1({"instances": [{**row, "a/b": True}]}, schema(booleans={"member?"}))
    assert exc.value.status == 422


def test_metadata_lists_the_onnx_name_mapping_only_where_names_differ():
    meta = model_metadata("m", "1", "onnxruntime_onnx", schema(onnx_inputs={"a/b": "c1_a_b"}), {})
    assert [i["name"] for i in meta["inputs"]] == NAMES
    assert meta["parameters"]["onnx_input_names"] == {"a/b": "c1_a_b"}
    assert "onnx_input_names" not in model_metadata("m", "1", "x", schema(), {})["parameters"]


def test_booleans_from_card():
    assert booleans_from_card({"features": {"booleans": ["member?"]}}) == {"member?"}
    assert booleans_from_card({}) == frozenset()
