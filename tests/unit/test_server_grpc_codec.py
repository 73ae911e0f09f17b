"""kiln_server.grpc_server's pure parts: the committed stubs match the .proto, a ModelInferRequest becomes the
V2 body REST decodes (raw and typed), the answer's encoding, and the status-code mapping."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from kiln_server import grpc_predict_v2_pb2 as pb
from kiln_server import grpc_server
from kiln_server.decode import Limits, decode_v2
from kiln_server.errors import ClientError
from kiln_server.schema import Schema

REPO = Path(__file__).resolve().parents[2]
SERVER = REPO / "server-image"
PROTO = SERVER / "kiln_server" / "proto" / "kiln_server" / "grpc_predict_v2.proto"


def test_committed_stubs_are_generated_from_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{SERVER / 'kiln_server' / 'proto'}",
                    f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}", str(PROTO)], check=True)
    for name in ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py"):
        assert (tmp_path / "kiln_server" / name).read_text() == (SERVER / "kiln_server" / name).read_text(), (
            f"{name} is stale: regenerate it (see the command in {PROTO.name})")


def test_the_service_is_the_published_one():
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert pb.DESCRIPTOR.package == "inference"
    assert [m.name for m in service.methods] == ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                                                 "ModelMetadata", "ModelInfer"]
    fields = {f.name: f.number for f in pb.ModelInferRequest.DESCRIPTOR.fields}
    assert fields == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
                      "raw_input_contents": 7}
    contents = {f.name: f.number for f in pb.InferTensorContents.DESCRIPTOR.fields}
    assert contents["fp32_contents"] == 6 and contents["bytes_contents"] == 8


def _schema(categorical=(False, True)) -> Schema:
    return Schema(names=["a", "b"][:len(categorical)], categorical=list(categorical), task="classification",
                  classes=None, float_dtype=np.dtype(np.float32))


def _bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def test_raw_and_typed_requests_decode_alike():
    raw = pb.ModelInferRequest(model_name="m", id="x")
    raw.inputs.add(name="a", datatype="FP32", shape=[2])
    raw.inputs.add(name="b", datatype="BYTES", shape=[2, 1])
    raw.raw_input_contents.extend([np.array([1.5, 2.5], "<f4").tobytes(), _bytes(b"red", "grün".encode())])
    typed = pb.ModelInferRequest(model_name="m", id="x")
    t = typed.inputs.add(name="a", datatype="FP32", shape=[2])
    t.contents.fp32_contents.extend([1.5, 2.5])
    t = typed.inputs.add(name="b", datatype="BYTES", shape=[2, 1])
    t.contents.bytes_contents.extend([b"red", "grün".encode()])
    for req, is_raw in ((raw, True), (typed, False)):
        body, used_raw = grpc_server.to_v2_body(req, Limits())
        assert used_raw is is_raw
        assert body["id"] == "x" and body["inputs"][1]["data"] == ["red", "grün"]
        batch = decode_v2(body, _schema(), False, Limits())
        assert batch.n == 2 and batch.x[0].tolist() == [1.5, 2.5] and batch.x[1].tolist() == ["red", "grün"]


@pytest.mark.parametrize("mutate,status,words", [
    (lambda r: r.raw_input_contents.append(b"\0" * 8), 400, "raw_input_contents has 1 entries"),
    (lambda r: (r.raw_input_contents.extend([b"\0" * 4, _bytes(b"x")])), 400, "has 4 bytes"),
    (lambda r: (r.raw_input_contents.extend([b"\0" * 8, _bytes(b"xy")[:5]])), 400, "claims 2 bytes"),
    (lambda r: (r.raw_input_contents.extend([b"\0" * 8, _bytes(b"x", b"y", b"z")])), 400, "more than the 2"),
    (lambda r: (r.raw_input_contents.extend([b"\0" * 8, _bytes(b"\xff", b"y")])), 400, "not valid UTF-8"),
    (lambda r: (r.raw_input_contents.extend([b"\0" * 8, _bytes(b"x" * 100, b"y")])), 413, "KILN_MAX_STRING_LENGTH"),
])
def test_raw_contents_are_checked_before_use(mutate, status, words):
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="FP32", shape=[2])
    req.inputs.add(name="b", datatype="BYTES", shape=[2])
    mutate(req)
    with pytest.raises(ClientError) as err:
        grpc_server.to_v2_body(req, Limits(max_string_length=16))
    assert err.value.status == status and words in err.value.message


def test_element_budget_before_any_conversion():
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="FP32", shape=[1 << 40])
    with pytest.raises(ClientError) as err:
        grpc_server.to_v2_body(req, Limits(max_elements=100))
    assert err.value.status == 413 and "KILN_MAX_ELEMENTS" in err.value.message
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="FP32", shape=[60]).contents.fp32_contents.extend([0.0] * 60)
    req.inputs.add(name="b", datatype="FP32", shape=[60]).contents.fp32_contents.extend([0.0] * 60)
    with pytest.raises(ClientError) as err:
        grpc_server.to_v2_body(req, Limits(max_elements=100))
    assert err.value.status == 413


def test_fp16_needs_raw_and_unknown_datatypes_are_named():
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="FP16", shape=[1])
    with pytest.raises(ClientError, match="raw_input_contents"):
        grpc_server.to_v2_body(req, Limits())
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="a", datatype="COMPLEX", shape=[1])
    body, _ = grpc_server.to_v2_body(req, Limits())
    with pytest.raises(ClientError, match="unknown datatype 'COMPLEX'"):
        decode_v2(body, _schema((False,)), False, Limits())


def test_response_raw_and_typed():
    schema = _schema()
    schema.n_classes, schema.label_datatype, schema.proba_datatype = 2, "BYTES", "FP32"
    label = np.array(["yes", "no"], dtype=object)
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float32)
    typed = grpc_server.response("m", "3", "id1", schema, label, probs, None, raw=False)
    assert [o.name for o in typed.outputs] == ["label", "probabilities"] and typed.id == "id1"
    assert list(typed.outputs[0].contents.bytes_contents) == [b"yes", b"no"]
    assert list(typed.outputs[1].contents.fp32_contents) == [0.25, 0.75, 0.5, 0.5]
    assert list(typed.outputs[1].shape) == [2, 2]
    raw = grpc_server.response("m", "3", None, schema, label, probs, ("probabilities",), raw=True)
    assert [o.name for o in raw.outputs] == ["probabilities"] and not raw.outputs[0].HasField("contents")
    assert np.frombuffer(raw.raw_output_contents[0], "<f4").tolist() == [0.25, 0.75, 0.5, 0.5]
    raw = grpc_server.response("m", "3", None, schema, label, probs, ("label",), raw=True)
    assert raw.raw_output_contents[0] == _bytes(b"yes", b"no")


def test_codes_follow_the_http_statuses():
    assert grpc_server.CODES[400] == grpc_server.CODES[422] == grpc.StatusCode.INVALID_ARGUMENT
    assert grpc_server.CODES[404] == grpc.StatusCode.NOT_FOUND
    assert grpc_server.CODES[413] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert grpc_server.CODES[503] == grpc.StatusCode.UNAVAILABLE
