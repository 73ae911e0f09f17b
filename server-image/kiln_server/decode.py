"""Request payloads -> a batch the runtime takes, checked against the model's schema.

Open Inference Protocol V2 (`inputs`) and KServe V1 (`instances`). Every problem raises
ClientError with a status and a message that names the input, feature or row at fault.

Accepted V2 layouts:
* one tensor [N, n_features] (any name that is not a feature's), columns in features.names order;
* one tensor per feature, named as the feature, shape [N] or [N, 1].
`data` may be flat (row-major) or nested; its element count must match `shape`.
Numeric features take FP16/FP32/FP64, INT*/UINT* and BOOL tensors; categorical features take BYTES.
In FP tensors `null` (and NaN, when the client sends that non-standard literal) means missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from kiln_server.errors import ClientError
from kiln_server.schema import Schema

FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
NUMERIC_TYPES = FLOAT_TYPES | INT_TYPES | {"BOOL"}
DATATYPES = NUMERIC_TYPES | {"BYTES"}
_LIST_MAX = 8  # names listed in one message


@dataclass
class Batch:
    """Decoded rows: `x` is a matrix [n, F] or a list of F columns; plus what to answer with."""

    x: object
    n: int
    id: str | None = None
    outputs: tuple[str, ...] | None = None  # requested output names; None = all


def parse_json(body: bytes) -> dict:
    if not body:
        raise ClientError(400, "empty request body; send a JSON object")
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        obj = _lenient_json(body, exc)
    if not isinstance(obj, dict):
        raise ClientError(400, f"request body must be a JSON object, not {_json_type(obj)}")
    return obj


def _lenient_json(body: bytes, exc: Exception):
    """Python's json module writes NaN/Infinity literals; accept them (they are not standard JSON).

    Nothing else that orjson refuses gets through: nesting too deep for Python's parser and lone
    surrogates (``"\\ud800"``, which Python's parser lets into strings) are malformed JSON too.
    """
    if b"NaN" in body or b"Infinity" in body:
        import json

        try:
            obj = json.loads(body)
            _check_strings(obj)
            return obj
        except (ValueError, RecursionError):  # UnicodeDecodeError and UnicodeEncodeError are ValueErrors
            pass
    raise ClientError(400, f"malformed JSON: {exc}")


def _check_strings(obj) -> None:
    """Raise UnicodeEncodeError if a string (or key) anywhere in obj is not valid Unicode."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            v.encode("utf-8")
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())


def _json_type(value) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def _names(items) -> str:
    items = list(items)
    more = f" and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
    return ", ".join(repr(i) for i in items[:_LIST_MAX]) + more


# --- typed values ----------------------------------------------------------------------------


def _infer(data, what: str) -> np.ndarray:
    try:
        return np.asarray(data)
    except (ValueError, TypeError):
        raise ClientError(400, f"{what}: data is ragged (nested lists of unequal lengths)") from None
    except OverflowError:
        raise ClientError(422, f"{what}: data holds an integer too large for 64 bits") from None


def _objects_to_float(a: np.ndarray, what: str, float_dtype) -> np.ndarray:
    """An object array (numbers mixed with null, or worse) -> floats with NaN for null."""
    flat = a.reshape(-1)
    out = np.empty(flat.shape, dtype=float_dtype)
    for k, v in enumerate(flat.tolist()):
        if v is None:
            out[k] = np.nan
        elif isinstance(v, bool) or not isinstance(v, int | float):
            raise ClientError(422, f"{what}: element {k} is {_json_type(v)} ({v!r:.40}); expected a number")
        else:
            try:
                out[k] = v
            except OverflowError:
                raise ClientError(422, f"{what}: element {k} ({v}) is out of range") from None
    return out.reshape(a.shape)


def _bool_index(data, ndim: int) -> int | None:
    """Flat index of the first JSON boolean in data, nested `ndim` levels deep (regular), or None."""
    items = data
    for _ in range(ndim - 1):
        items = [v for row in items for v in row]
    return next((k for k, v in enumerate(items) if v is True or v is False), None)


def _refuse_bools(data, a: np.ndarray, datatype: str, what: str) -> None:
    """numpy turns booleans mixed with numbers into 1 and 0; a numeric tensor must not hold them."""
    k = _bool_index(data, a.ndim)
    if k is not None:
        raise ClientError(422, f"{what}: element {k} is a boolean; datatype {datatype} takes numbers")


def typed_values(data, datatype: str, what: str, float_dtype, bools: bool = True) -> np.ndarray:
    """Data of a tensor declared `datatype` -> an array: floats for numeric types, objects for BYTES.

    The values must be of the declared type: strings in an FP32 tensor or numbers in a BYTES
    tensor are refused (422), not silently converted. `bools=False` tells that the request
    holds no JSON `true`/`false` at all, which spares the search for booleans among numbers.
    """
    a = _infer(data, what)
    kind = a.dtype.kind
    if bools and kind in "fiu" and datatype != "BOOL":
        _refuse_bools(data, a, datatype, what)
    if datatype in FLOAT_TYPES:
        if kind in "fiu":
            return a.astype(float_dtype, copy=False)
        if kind == "O":
            return _objects_to_float(a, what, float_dtype)
        raise ClientError(422, f"{what}: datatype {datatype} but data holds {_kind_name(kind)}")
    if datatype in INT_TYPES:
        if kind in "iu":
            return a.astype(float_dtype)
        if kind == "f":
            if not np.all(np.isfinite(a)) or not np.all(a == np.trunc(a)):
                raise ClientError(422, f"{what}: datatype {datatype} but data holds non-integer numbers")
            return a.astype(float_dtype)
        if kind == "O":
            for k, v in enumerate(a.reshape(-1).tolist()):
                if v is None:
                    raise ClientError(422, f"{what}: element {k} is null; datatype {datatype} cannot hold "
                                      "missing values (use FP32)")
                if isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
                    raise ClientError(422, f"{what}: element {k} ({v}) does not fit in 64 bits")
        raise ClientError(422, f"{what}: datatype {datatype} but data holds {_kind_name(kind)}")
    if datatype == "BOOL":
        if kind == "b":
            return a.astype(float_dtype)
        raise ClientError(422, f"{what}: datatype BOOL but data holds {_kind_name(kind)}")
    # BYTES
    if kind == "U":
        return a.astype(object)
    if kind == "O":
        flat = a.reshape(-1).tolist()
        for k, v in enumerate(flat):
            if not isinstance(v, str):
                if v is None:
                    raise ClientError(422, f"{what}: element {k} is null; categorical values cannot be missing")
                raise ClientError(422, f"{what}: element {k} is {_json_type(v)}; BYTES data must be strings")
        return a
    raise ClientError(422, f"{what}: datatype BYTES but data holds {_kind_name(kind)}; BYTES data must be strings")


def _kind_name(kind: str) -> str:
    return {"b": "booleans", "U": "strings", "f": "floating-point numbers", "i": "integers", "u": "integers",
            "O": "mixed values", "V": "nothing usable"}.get(kind, "values of another type")


def _shape(inp: dict, what: str) -> list[int]:
    shape = inp.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ClientError(400, f"{what}: shape must be an array of integers, got {shape!r:.60}")
    if any(d < 0 for d in shape):
        raise ClientError(400, f"{what}: shape {shape} has a negative dimension")
    return shape


def _tensor(inp, i: int, float_dtype, bools: bool = True) -> tuple[str, str, list[int], np.ndarray]:
    if not isinstance(inp, dict):
        raise ClientError(400, f"inputs[{i}] must be an object with name, shape, datatype and data")
    name = inp.get("name")
    if not isinstance(name, str):
        raise ClientError(400, f"inputs[{i}].name must be a string")
    what = f"input {name!r}"
    datatype = inp.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ClientError(
            400, f"{what}: unknown datatype {datatype!r}; use one of {', '.join(sorted(DATATYPES))}"
        )
    shape = _shape(inp, what)
    if "data" not in inp:
        raise ClientError(400, f"{what}: no data")
    data = inp["data"]
    if not isinstance(data, list):
        data = [data]
    values = typed_values(data, datatype, what, float_dtype, bools)
    expected = math.prod(shape)
    if values.size != expected:
        raise ClientError(
            400, f"{what}: shape {shape} holds {expected} values but data has {values.size}"
        )
    if values.ndim > 1 and values.shape != tuple(shape):
        raise ClientError(400, f"{what}: data is nested as {list(values.shape)} but shape is {shape}; "
                          "send it flat or nested as the shape")
    return name, datatype, shape, values.reshape(-1)


def _check_kind(schema: Schema, j: int, datatype: str, what: str) -> None:
    if schema.categorical[j]:
        if datatype != "BYTES":
            raise ClientError(
                422, f"{what}: feature {schema.names[j]!r} is categorical; send it as BYTES (strings), "
                f"not {datatype}"
            )
    elif datatype not in NUMERIC_TYPES:
        raise ClientError(
            422, f"{what}: feature {schema.names[j]!r} is numeric; send FP32/FP64/INT64/INT32/BOOL, not {datatype}"
        )


# --- V2 --------------------------------------------------------------------------------------


def decode_v2(body: dict, schema: Schema, bools: bool = True) -> Batch:
    """`bools=False`: the request text holds no `true`/`false` (see typed_values)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(400, "'inputs' must be a non-empty array of tensors")
    outputs = _requested_outputs(body.get("outputs"), schema)
    rid = body.get("id")
    if rid is not None and not isinstance(rid, str):
        if isinstance(rid, int | float) and not isinstance(rid, bool):
            rid = str(rid)
        else:
            raise ClientError(400, "'id' must be a string")
    fd = schema.float_dtype
    first = inputs[0]
    if len(inputs) == 1 and isinstance(first, dict) and not _is_feature(first.get("name"), schema):
        x, n = _matrix_input(first, schema, bools)
    else:
        x, n = _feature_inputs(inputs, schema, fd, bools)
    check_missing(x, schema)
    return Batch(x, n, rid, outputs)


def _is_feature(name, schema: Schema) -> bool:
    return isinstance(name, str) and name in schema.index


def _requested_outputs(requested, schema: Schema) -> tuple[str, ...] | None:
    if requested is None:
        return None
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested):
        raise ClientError(400, "'outputs' must be an array of objects with a name")
    names = []
    for o in requested:
        name = o.get("name")
        if name not in schema.output_names:
            raise ClientError(
                400, f"unknown output {name!r}; the model gives {', '.join(schema.output_names)}"
            )
        if name not in names:
            names.append(name)
    return tuple(names) if names else None


def _matrix_input(inp: dict, schema: Schema, bools: bool = True):
    name = inp.get("name")
    F = schema.n_features
    if isinstance(name, str) and isinstance(inp.get("shape"), list) and len(inp["shape"]) != 2:
        raise ClientError(
            422,
            f"input {name!r} is not a feature of this model; send one tensor of shape [N, {F}] "
            f"(columns: {_names(schema.names)}) or one tensor per feature",
        )
    if not schema.all_numeric and inp.get("datatype") != "BYTES":
        cats = [n for n, c in zip(schema.names, schema.categorical, strict=True) if c]
        raise ClientError(
            422, f"features {_names(cats)} are categorical: send a BYTES matrix or one tensor per feature"
        )
    name, datatype, shape, values = _tensor(inp, 0, schema.float_dtype, bools)
    what = f"input {name!r}"
    if datatype not in NUMERIC_TYPES and schema.all_numeric:
        raise ClientError(422, f"{what}: the model's features are numeric; send FP32 or FP64, not {datatype}")
    n, width = shape
    if width != F:
        raise ClientError(
            422, f"{what}: shape {shape} has {width} columns but the model takes {F} features"
        )
    if n == 0:
        raise ClientError(400, f"{what}: no rows (shape {shape})")
    m = values.reshape(n, F)
    if schema.all_numeric:
        return m, n
    # A BYTES matrix for a model with categorical features: numeric columns must parse as numbers.
    cols = []
    for j in range(F):
        col = m[:, j]
        if schema.categorical[j]:
            cols.append(col)
        else:
            cols.append(_parse_numbers(col, f"{what} column {j} (feature {schema.names[j]!r})", schema.float_dtype))
    return cols, n


def _parse_numbers(col: np.ndarray, what: str, float_dtype) -> np.ndarray:
    try:
        return col.astype(float_dtype)
    except (ValueError, TypeError):
        raise ClientError(422, f"{what}: holds values that are not numbers") from None


def _feature_inputs(inputs: list, schema: Schema, fd, bools: bool = True):
    seen: dict[str, int] = {}
    columns: list = [None] * schema.n_features
    unknown = []
    n = None
    for i, inp in enumerate(inputs):
        name, datatype, shape, values = _tensor(inp, i, fd, bools)
        j = schema.index.get(name)
        if j is None:
            unknown.append(name)
            continue
        what = f"input {name!r}"
        if name in seen:
            raise ClientError(400, f"{what} is given twice (inputs[{seen[name]}] and inputs[{i}])")
        seen[name] = i
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ClientError(422, f"{what}: shape {shape}; a per-feature tensor has shape [N] or [N, 1]")
        _check_kind(schema, j, datatype, what)
        rows = shape[0]
        if n is None:
            n = rows
        elif rows != n:
            first = next(k for k in seen if k != name)
            raise ClientError(422, f"inputs differ in rows: {first!r} has {n}, {name!r} has {rows}")
        columns[j] = values
    if unknown:
        raise ClientError(
            422, f"unknown feature(s) {_names(unknown)}; the model's features are {_names(schema.names)}"
        )
    missing = [schema.names[j] for j, c in enumerate(columns) if c is None]
    if missing:
        raise ClientError(422, f"missing feature(s) {_names(missing)}")
    if not n:
        raise ClientError(400, "no rows: every input has 0 elements")
    if schema.all_numeric:
        return np.column_stack(columns).astype(fd, copy=False), n
    return columns, n


def check_missing(x, schema: Schema) -> None:
    """Refuse NaN in features the model cannot take missing (learnt at warm-up)."""
    if isinstance(x, np.ndarray):
        nan = np.isnan(x)
        if not nan.any():
            return
        bad_cols = np.flatnonzero(nan.any(axis=0) & ~schema.nan_ok)
        if not len(bad_cols):
            return
        j = int(bad_cols[0])
        rows = np.flatnonzero(nan[:, j])
    else:
        j = None
        for k, col in enumerate(x):
            if col.dtype.kind == "f" and not schema.nan_ok[k]:
                nan = np.isnan(col)
                if nan.any():
                    j, rows = k, np.flatnonzero(nan)
                    break
        if j is None:
            return
        bad_cols = [j]
    names = [schema.names[int(c)] for c in bad_cols]
    raise ClientError(
        422,
        f"feature {names[0]!r} is missing (null/NaN) in row(s) {_names(int(r) for r in rows)}; "
        f"this model cannot take missing values for {_names(names)}",
    )


# --- KServe V1 -------------------------------------------------------------------------------


def decode_v1(body: dict, schema: Schema, bools: bool = True) -> Batch:
    """`bools=False`: the request text holds no `true`/`false` (see typed_values)."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ClientError(400, "'instances' must be a non-empty array of rows")
    F = schema.n_features
    fd = schema.float_dtype
    if all(isinstance(r, dict) for r in instances):
        x = _v1_dicts(instances, schema, bools)
    elif all(isinstance(r, list) for r in instances):
        bad = next((k for k, r in enumerate(instances) if len(r) != F), None)
        if bad is not None:
            raise ClientError(
                422, f"instances[{bad}] has {len(instances[bad])} values but the model takes {F} features"
            )
        if schema.all_numeric:
            x = typed_values(instances, "FP64", "instances", fd, bools)
            if x.ndim != 2:
                raise ClientError(
                    422, f"instances hold arrays inside rows; each instance must be a flat array of {F} values"
                )
        else:
            x = _v1_columns([list(c) for c in zip(*instances, strict=True)], schema, bools)
    else:
        raise ClientError(
            422, f"each instance must be an array of {F} values or an object keyed by feature name"
        )
    check_missing(x, schema)
    return Batch(x, len(instances))


def _v1_dicts(rows: list[dict], schema: Schema, bools: bool = True):
    names = schema.index
    for k, r in enumerate(rows):
        if len(r) != len(names) or any(key not in names for key in r):
            unknown = [key for key in r if key not in names]
            if unknown:
                raise ClientError(
                    422, f"instances[{k}]: unknown feature(s) {_names(unknown)}; the model's features are "
                    f"{_names(schema.names)}"
                )
            missing = [n for n in schema.names if n not in r]
            raise ClientError(422, f"instances[{k}]: missing feature(s) {_names(missing)}")
    cols = [[r[n] for r in rows] for n in schema.names]
    if schema.all_numeric:
        m = np.empty((len(rows), schema.n_features), dtype=schema.float_dtype)
        for j, c in enumerate(cols):
            m[:, j] = _v1_column(c, "FP64", f"feature {schema.names[j]!r}", schema.float_dtype, bools)
        return m
    return _v1_columns(cols, schema, bools)


def _v1_columns(cols: list[list], schema: Schema, bools: bool = True):
    out = []
    for j, c in enumerate(cols):
        what = f"feature {schema.names[j]!r}"
        out.append(_v1_column(c, "BYTES" if schema.categorical[j] else "FP64", what, schema.float_dtype, bools))
    return out


def _v1_column(values: list, datatype: str, what: str, float_dtype, bools: bool) -> np.ndarray:
    """One feature's values over the instances: one value per instance, not an array."""
    col = typed_values(values, datatype, what, float_dtype, bools)
    if col.ndim != 1:
        raise ClientError(422, f"{what}: a value is an array; an instance gives one value per feature")
    return col
