"""Response bodies of the Open Inference Protocol V2 and KServe V1."""

from __future__ import annotations

import numpy as np
import orjson

from kiln_server.schema import Schema

_OPTS = orjson.OPT_SERIALIZE_NUMPY


def dumps(obj) -> bytes:
    return orjson.dumps(obj, option=_OPTS)


def _data(arr: np.ndarray):
    """Flat, row-major tensor data that orjson can write straight from the array."""
    if arr.dtype.kind in "biuf":
        return np.ascontiguousarray(arr).reshape(-1)
    return [str(v) for v in arr.reshape(-1).tolist()]


def v2_tensors(schema: Schema, label, probs, requested: tuple[str, ...] | None) -> list[tuple]:
    """The V2 output tensors, (name, datatype, shape, array), in the order answered: every transport's (JSON
    over REST, protobuf over gRPC) one rule for which outputs a request gets and how they are typed."""
    wanted = requested or schema.output_names
    n = len(label)
    outputs = []
    for out in wanted:
        if out == "label":
            outputs.append(("label", schema.label_datatype, [n], label))
        elif probs is not None:
            outputs.append(("probabilities", schema.proba_datatype, [n, int(probs.shape[1])], probs))
    return outputs


def v2_response(name: str, version: str, rid: str | None, schema: Schema, label, probs,
                requested: tuple[str, ...] | None) -> bytes:
    outputs = [{"name": o, "datatype": dt, "shape": shape, "data": _data(arr)}
               for o, dt, shape, arr in v2_tensors(schema, label, probs, requested)]
    body = {"model_name": name, "model_version": version, "outputs": outputs}
    if rid is not None:
        body["id"] = rid
    return dumps(body)


def v1_response(label) -> bytes:
    if label.dtype.kind in "biuf":
        return dumps({"predictions": np.ascontiguousarray(label)})
    return dumps({"predictions": [str(v) for v in label.tolist()]})


def model_metadata(name: str, version: str, platform: str, schema: Schema, extra: dict) -> dict:
    return {
        "name": name,
        "versions": [version],
        "platform": platform,
        "inputs": schema.input_metadata(),
        "outputs": schema.output_metadata(),
        "parameters": {
            "feature_names": schema.names,
            "categorical_features": [n for n, c in zip(schema.names, schema.categorical, strict=True) if c],
            "task": schema.task,
            **({"onnx_input_names": dict(schema.onnx_inputs)} if schema.onnx_inputs else {}),
            **({"classes": [c.item() if isinstance(c, np.generic) else c for c in schema.classes]}
               if schema.classes is not None else {}),
            **extra,
        },
    }
