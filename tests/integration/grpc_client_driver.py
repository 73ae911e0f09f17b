"""Calls a Kiln server over gRPC with NVIDIA's tritonclient, in tritonclient's own venv (tests/grpc_client_tool.py).

    python grpc_client_driver.py HOST:PORT MODEL < scenario.json   → results JSON on stdout

The scenario is {"calls": [...]}, each call one of
    {"op": "live" | "ready" | "server_metadata"}
    {"op": "model_ready" | "model_metadata", "model"?: name, "version"?: v}
    {"op": "infer", "inputs": [{name, datatype, shape, data}], "outputs"?: [names], "id"?: str,
     "typed"?: false, "model"?: name, "version"?: v, "headers"?: {k: v}}
`typed: false` (the default) sends raw_input_contents through tritonclient's InferenceServerClient.infer, as
Triton's users do; `typed: true` builds the ModelInferRequest with typed `contents` from tritonclient's
own generated protobuf module and calls its GRPCInferenceServiceStub. Every result is
{"ok": true, ...} or {"ok": false, "code": "INVALID_ARGUMENT", "message": ...}.
Nothing here imports Kiln: only the published protocol and a third-party client.
"""

from __future__ import annotations

import json
import sys

import grpc
import numpy as np
import tritonclient.grpc as tc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

NP = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32, "BOOL": np.bool_,
      "BYTES": np.object_}
TYPED = {"FP32": "fp32_contents", "FP64": "fp64_contents", "INT64": "int64_contents", "INT32": "int_contents",
         "BOOL": "bool_contents", "BYTES": "bytes_contents"}


def _jsonable(arr) -> list:
    flat = np.asarray(arr).reshape(-1)
    if flat.dtype == np.object_ or flat.dtype.kind == "S":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in flat.tolist()]
    return flat.tolist()


def _error(exc) -> dict:
    if isinstance(exc, InferenceServerException):
        code = str(exc.status() or "").replace("StatusCode.", "")
        return {"ok": False, "code": code, "message": exc.message()}
    if isinstance(exc, grpc.RpcError):
        return {"ok": False, "code": exc.code().name, "message": exc.details()}
    raise exc


def infer_raw(client, model: str, call: dict) -> dict:
    inputs = []
    for t in call["inputs"]:
        inp = tc.InferInput(t["name"], t["shape"], t["datatype"])
        data = np.asarray(t["data"], dtype=NP[t["datatype"]]).reshape(t["shape"])
        if t["datatype"] == "BYTES":
            data = np.array([s.encode() for s in np.asarray(t["data"]).reshape(-1)], dtype=np.object_).reshape(
                t["shape"])
        inp.set_data_from_numpy(data)
        inputs.append(inp)
    outputs = [tc.InferRequestedOutput(o) for o in call.get("outputs") or []] or None
    result = client.infer(call.get("model", model), inputs, model_version=call.get("version", ""),
                          outputs=outputs, request_id=call.get("id", ""), headers=call.get("headers"))
    resp = result.get_response()
    out = {}
    for o in resp.outputs:
        out[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": _jsonable(result.as_numpy(o.name))}
    return {"ok": True, "id": resp.id, "model_name": resp.model_name, "model_version": resp.model_version,
            "raw": len(resp.raw_output_contents) > 0, "outputs": out}


def infer_typed(stub, model: str, call: dict) -> dict:
    req = service_pb2.ModelInferRequest(model_name=call.get("model", model), model_version=call.get("version", ""),
                                        id=call.get("id", ""))
    for t in call["inputs"]:
        inp = req.inputs.add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
        field = t.get("field") or TYPED[t["datatype"]]
        flat = np.asarray(t["data"], dtype=object).reshape(-1).tolist()
        if t["datatype"] == "BYTES":
            flat = [s.encode() for s in flat]
        getattr(inp.contents, field).extend(flat)
    for o in call.get("outputs") or []:
        req.outputs.add(name=o)
    try:
        resp = stub.ModelInfer(req, timeout=60)
    except grpc.RpcError as exc:
        return _error(exc)
    out = {}
    for o in resp.outputs:
        field = TYPED.get(o.datatype)
        data = list(getattr(o.contents, field)) if field else []
        if o.datatype == "BYTES":
            data = [b.decode() for b in data]
        out[o.name] = {"datatype": o.datatype, "shape": list(o.shape), "data": data}
    return {"ok": True, "id": resp.id, "model_name": resp.model_name, "model_version": resp.model_version,
            "raw": len(resp.raw_output_contents) > 0, "outputs": out}


def main() -> int:
    target, model = sys.argv[1], sys.argv[2]
    scenario = json.load(sys.stdin)
    client = tc.InferenceServerClient(url=target)
    channel = grpc.insecure_channel(target)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    results = []
    for call in scenario["calls"]:
        op = call["op"]
        try:
            if op == "live":
                results.append({"ok": True, "live": client.is_server_live()})
            elif op == "ready":
                results.append({"ok": True, "ready": client.is_server_ready()})
            elif op == "server_metadata":
                md = client.get_server_metadata(as_json=True)
                results.append({"ok": True, **md})
            elif op == "model_ready":
                results.append({"ok": True, "ready": client.is_model_ready(call.get("model", model),
                                                                            call.get("version", ""))})
            elif op == "model_metadata":
                md = client.get_model_metadata(call.get("model", model), call.get("version", ""), as_json=True)
                results.append({"ok": True, **md})
            elif op == "infer":
                results.append(infer_typed(stub, model, call) if call.get("typed") else infer_raw(client, model, call))
            else:
                raise ValueError(op)
        except (InferenceServerException, grpc.RpcError) as exc:
            results.append(_error(exc))
    client.close()
    channel.close()
    json.dump({"results": results}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
