"""Request payloads -> a batch the runtime takes, checked against the model's schema.

Open Inference Protocol V2 (`inputs`) and KServe V1 (`instances`). Every problem raises
ClientError with a status and a message that names the input, feature or row at fault.

Accepted V2 layouts:
* one tensor [N, n_features] (any name that is not a feature's), columns in features.names order;
* one tensor per feature, named as the feature, shape [N] or [N, 1].
`data` may be flat (row-major) or nested; its element count must match `shape`.
Numeric features take FP16/FP32/FP64, INT*/UINT* and BOOL tensors; categorical features take BYTES.
In FP tensors `null` (and NaN, when the client sends that non-standard literal) means missing.

Nothing is allocated from a request before its size is known to be within `Limits`: the datatype,
the shape (rank, dimensions, element count against KILN_MAX_ELEMENTS) and how `data` is laid out
against the shape are checked first, each in O(rank). numpy is never asked to infer the type of
data that may hold strings: it would build a fixed-width string array of (elements x longest
string) characters, which a body of a few kilobytes can make terabytes large.
"""

from __future__ import annotations

import math
from array import array
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
_SHOW_MAX = 64  # characters of a client-given name quoted in a message
MAX_RANK = 8  # the models take [N], [N, 1] or [N, F]; deeper shapes are refused before any count is made
MAX_EXTRA_INPUTS = 16  # inputs beyond one per feature: enough to name the unknown ones, no more
MAX_OUTPUTS = 16  # requested outputs (a model has at most two; repeats are allowed)


@dataclass(frozen=True)
class Limits:
    """Per-request budgets (config: --max-elements, --max-string-length)."""

    max_elements: int = 1 << 20
    max_string_length: int = 4096


DEFAULT_LIMITS = Limits()


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


def show(value) -> str:
    """repr() of a client-given value for a message, cut short: never megabytes echoed back, never a
    deep structure walked (repr of JSON nested a thousand deep would overflow the stack)."""
    if isinstance(value, str):
        if len(value) > _SHOW_MAX:
            return repr(value[:_SHOW_MAX]) + f"… ({len(value)} characters)"
        return repr(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return repr(value) if value.bit_length() <= 128 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, list) and len(value) <= _LIST_MAX and not any(isinstance(v, list | dict) for v in value):
        return "[" + ", ".join(show(v) for v in value) + "]"
    if isinstance(value, list | dict):
        return f"{_json_type(value)} of {len(value)} item(s)"
    return type(value).__name__


def _names(items) -> str:
    items = list(items)
    more = f" and {len(items) - _LIST_MAX} more" if len(items) > _LIST_MAX else ""
    return ", ".join(show(i) for i in items[:_LIST_MAX]) + more


# --- typed values ----------------------------------------------------------------------------


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
        raise ClientError(422, f"{what}: element {k} is a boolean; datatype {datatype} takes numbers, not booleans")


def _first_path(data: list, max_depth: int) -> list[int]:
    """Lengths along data[0][0]…: how data is nested, if it is nested regularly. O(depth)."""
    dims = []
    x = data
    while isinstance(x, list) and len(dims) < max_depth:
        dims.append(len(x))
        if not x:
            break
        x = x[0]
    return dims


def _only_numbers(data, depth: int) -> bool:
    """True if data (nested `depth` deep) holds only numbers (and booleans): no string, null or container.

    sum() runs in C and refuses every other type; it costs less than numpy's own type discovery,
    and proves absent the strings without which numpy cannot build a fixed-width string array.
    """
    try:
        if depth == 1:
            sum(data)
        elif depth == 2:
            sum(map(sum, data))
        else:
            return False
    except (TypeError, OverflowError):
        return False
    return True


_NUMBERS_OR_NULL = frozenset({float, int, bool, type(None)})


def typed_values(data, datatype: str, what: str, float_dtype, bools: bool = True, dims: list[int] | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Data of a tensor declared `datatype` -> an array: floats for numeric types, objects for BYTES.

    The values must be of the declared type: strings in an FP32 tensor or numbers in a BYTES
    tensor are refused (422), not silently converted. `bools=False` tells that the request
    holds no JSON `true`/`false` at all, which spares the search for booleans among numbers.
    `dims`: how data is nested, when the caller has checked it against a shape; else taken
    from data[0][0]… and checked while converting. The array has shape `dims`.
    """
    if dims is None:
        dims = _first_path(data, 64)
    if datatype in FLOAT_TYPES or datatype in INT_TYPES:
        a = _numbers(data, dims, datatype, what, float_dtype, bools)
        if a is not None and a.shape == tuple(dims):
            return a
    return _typed_leaves(_leaves(data, dims, what), datatype, what, float_dtype, limits).reshape(dims)


def _numbers(data, dims: list[int], datatype: str, what: str, float_dtype, bools: bool) -> np.ndarray | None:
    """The fast paths, which allocate only numbers; None to take the slow path instead.

    Flat data and rows go through array.array, which converts in C and refuses strings, null and
    containers (TypeError) by itself, as numpy would not: given a float dtype, numpy parses "1.5".
    """
    floats = datatype in FLOAT_TYPES
    depth = len(dims)
    code, raw = ("d", np.float64) if floats else ("q", np.int64)
    try:
        if depth == 1:
            a = np.frombuffer(array(code, data), dtype=raw)
        elif depth == 2:
            width = dims[1]
            a = None
            if len(data) == 1:  # one row, the common request: spare the join
                row = array(code, data[0])
                if len(row) == width:
                    a = np.frombuffer(row, dtype=raw).reshape(1, width)
            else:
                rows = [array(code, r) for r in data]
                if all(map(width.__eq__, map(len, rows))):  # else ragged, which the slow path names
                    a = np.frombuffer(bytearray().join(rows), dtype=raw).reshape(len(rows), width)
        else:
            a = None
    except (TypeError, OverflowError, ValueError):  # null, a string…; a float in an INT tensor, or 2**63
        a = None
    if a is not None:
        if bools:
            _refuse_bools(data, a, datatype, what)
        return a.astype(float_dtype, copy=False)
    if not _only_numbers(data, depth):
        if floats and depth == 1 and set(map(type, data)) <= _NUMBERS_OR_NULL:
            a = np.asarray(data, dtype=float_dtype)  # null -> NaN (missing); no string is there to parse
            if bools:
                _refuse_bools(data, a, datatype, what)
            return a
        return None
    if floats:
        try:
            a = np.asarray(data, dtype=float_dtype)
        except (ValueError, TypeError, OverflowError):  # ragged, or an integer beyond the float range
            return None
        if bools:
            _refuse_bools(data, a, datatype, what)
        return a
    try:
        a = np.asarray(data)  # integers stay exact here: 2**70 must be refused, not rounded
    except (ValueError, TypeError, OverflowError):
        return None
    kind = a.dtype.kind
    if kind == "b":
        raise ClientError(422, f"{what}: datatype {datatype} but data holds booleans")
    if bools and kind in "fiu":
        _refuse_bools(data, a, datatype, what)
    if kind in "iu":
        return a.astype(float_dtype)
    if kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.trunc(a)):
            raise ClientError(422, f"{what}: datatype {datatype} but data holds non-integer numbers")
        return a.astype(float_dtype)
    return None  # objects: integers beyond 64 bits, which the slow path names


def _leaves(data, dims: list[int], what: str) -> list:
    """data's elements in row-major order, checking that it is nested exactly as dims (400 if not)."""
    items = [data]
    for d in dims:
        nxt: list = []
        for x in items:
            if not isinstance(x, list) or len(x) != d:
                raise ClientError(400, f"{what}: data is ragged (nested lists of unequal lengths)")
            nxt.extend(x)
        items = nxt
    return items


def _typed_leaves(flat: list, datatype: str, what: str, float_dtype, limits: Limits) -> np.ndarray:
    """The slow path: each element checked in Python, for a message that names the first bad one."""
    if datatype == "BYTES":
        return _strings(flat, what, limits)
    out = np.empty(len(flat), dtype=np.float64 if datatype == "BOOL" else float_dtype)
    for k, v in enumerate(flat):
        if datatype == "BOOL":
            if v is not True and v is not False:
                raise ClientError(422, f"{what}: element {k} is {_json_type(v)}; datatype BOOL takes true/false")
            out[k] = v
            continue
        if v is None:
            if datatype in INT_TYPES:
                raise ClientError(422, f"{what}: element {k} is null; datatype {datatype} cannot hold "
                                  "missing values (use FP32)")
            out[k] = np.nan
        elif isinstance(v, bool):
            raise ClientError(422, f"{what}: element {k} is a boolean; datatype {datatype} takes numbers, "
                              "not booleans")
        elif isinstance(v, str):
            raise ClientError(422, f"{what}: datatype {datatype} but data holds strings (element {k}: {show(v)})")
        elif isinstance(v, int):
            if datatype in INT_TYPES and not -(2**63) <= v < 2**64:
                raise ClientError(422, f"{what}: element {k} ({show(v)}) does not fit in 64 bits")
            try:
                out[k] = v
            except OverflowError:
                raise ClientError(422, f"{what}: element {k} ({show(v)}) is out of range") from None
        elif isinstance(v, float):
            if datatype in INT_TYPES and not (math.isfinite(v) and v == math.trunc(v)):
                raise ClientError(422, f"{what}: datatype {datatype} but data holds non-integer numbers "
                                  f"(element {k}: {v!r})")
            out[k] = v
        else:
            raise ClientError(422, f"{what}: element {k} is {_json_type(v)}; expected a number")
    return out.astype(float_dtype, copy=False)


def _strings(flat: list, what: str, limits: Limits) -> np.ndarray:
    """BYTES elements -> an object array of str, each within KILN_MAX_STRING_LENGTH."""
    longest = limits.max_string_length
    if not flat or (set(map(type, flat)) == {str} and max(map(len, flat)) <= longest):
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out
    for k, v in enumerate(flat):
        if not isinstance(v, str):
            if v is None:
                raise ClientError(422, f"{what}: element {k} is null; categorical values cannot be missing")
            raise ClientError(422, f"{what}: element {k} is {_json_type(v)}; BYTES data must be strings")
        if len(v) > longest:
            raise ClientError(413, f"{what}: element {k} is a string of {len(v)} characters; the limit is "
                              f"{longest} (KILN_MAX_STRING_LENGTH)")
    raise AssertionError("unreachable")  # pragma: no cover


# --- V2 tensors --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Head:
    """What an input declares, checked in O(rank) before its data is looked at."""

    name: str
    datatype: str
    shape: list[int]
    n: int  # elements the shape holds
    what: str


def _shape(inp: dict, what: str, limits: Limits) -> tuple[list[int], int]:
    shape = inp.get("shape")
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        if isinstance(shape, list):
            raise ClientError(400, f"{what}: shape has {len(shape)} dimensions; at most {MAX_RANK}")
        raise ClientError(400, f"{what}: shape must be an array of integers, got {show(shape)}")
    n = 1
    for d in shape:
        if type(d) is not int:  # not bool either
            raise ClientError(400, f"{what}: shape must be an array of integers, got {show(shape)}")
        if d < 0:
            raise ClientError(400, f"{what}: shape {shape} has a negative dimension")
        if d > limits.max_elements:  # before multiplying: no product of huge integers
            raise ClientError(413, f"{what}: shape {shape} has a dimension of {d}; a request may hold at most "
                              f"{limits.max_elements} values (KILN_MAX_ELEMENTS)")
        n *= d
    if n > limits.max_elements:
        raise ClientError(413, f"{what}: shape {shape} holds {n} values; a request may hold at most "
                          f"{limits.max_elements} (KILN_MAX_ELEMENTS)")
    return shape, n


def _head(inp, i: int, limits: Limits) -> _Head:
    if not isinstance(inp, dict):
        raise ClientError(400, f"inputs[{i}] must be an object with name, shape, datatype and data")
    name = inp.get("name")
    if not isinstance(name, str):
        raise ClientError(400, f"inputs[{i}].name must be a string")
    what = f"input {show(name)}"
    datatype = inp.get("datatype")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ClientError(
            400, f"{what}: unknown datatype {show(datatype)}; use one of {', '.join(sorted(DATATYPES))}"
        )
    shape, n = _shape(inp, what, limits)
    if "data" not in inp:
        raise ClientError(400, f"{what}: no data")
    return _Head(name, datatype, shape, n, what)


def _layout(data: list, h: _Head) -> list[int]:
    """How data is nested (flat, or as the shape), checked against the shape in O(rank)."""
    shape, n = h.shape, h.n
    if not data or not isinstance(data[0], list):
        if len(data) != n:
            raise ClientError(400, f"{h.what}: shape {shape} holds {n} values but data has {len(data)}")
        return [n]
    dims = _first_path(data, len(shape) + 1)
    if dims == shape:
        return dims
    if math.prod(dims) != n:
        raise ClientError(400, f"{h.what}: shape {shape} holds {n} values but data has {math.prod(dims)} "
                          f"(nested as {dims})")
    raise ClientError(400, f"{h.what}: data is nested as {dims} but shape is {shape}; "
                      "send it flat or nested as the shape")


def _values(inp: dict, h: _Head, float_dtype, bools: bool, limits: Limits) -> np.ndarray:
    data = inp["data"]
    if not isinstance(data, list):
        data = [data]
    dims = _layout(data, h)
    return typed_values(data, h.datatype, h.what, float_dtype, bools, dims, limits).reshape(-1)


class _Budget:
    """Elements over all the inputs of one request, against KILN_MAX_ELEMENTS."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.total = 0

    def take(self, h: _Head) -> None:
        self.total += h.n
        if self.total > self.limits.max_elements:
            raise ClientError(413, f"{h.what}: the request holds more than {self.limits.max_elements} values "
                              "in all (KILN_MAX_ELEMENTS); send fewer rows per request")


def _check_kind(schema: Schema, j: int, datatype: str, what: str) -> None:
    if schema.categorical[j]:
        if datatype != "BYTES":
            raise ClientError(
                422, f"{what}: feature {show(schema.names[j])} is categorical; send it as BYTES (strings), "
                f"not {datatype}"
            )
    elif datatype not in NUMERIC_TYPES:
        raise ClientError(
            422, f"{what}: feature {show(schema.names[j])} is numeric; send FP32/FP64/INT64/INT32/BOOL, "
            f"not {datatype}"
        )


# --- V2 --------------------------------------------------------------------------------------


def decode_v2(body: dict, schema: Schema, bools: bool = True, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """`bools=False`: the request text holds no `true`/`false` (see typed_values)."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ClientError(400, "'inputs' must be a non-empty array of tensors")
    if len(inputs) > schema.n_features + MAX_EXTRA_INPUTS:
        raise ClientError(422, f"'inputs' has {len(inputs)} tensors; the model takes one tensor of shape "
                          f"[N, {schema.n_features}] or one tensor per feature ({schema.n_features})")
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
        x, n = _matrix_input(first, schema, bools, limits)
    else:
        x, n = _feature_inputs(inputs, schema, fd, bools, limits)
    check_missing(x, schema)
    return Batch(x, n, rid, outputs)


def _is_feature(name, schema: Schema) -> bool:
    return isinstance(name, str) and name in schema.index


def _requested_outputs(requested, schema: Schema) -> tuple[str, ...] | None:
    if requested is None:
        return None
    if not isinstance(requested, list) or not all(isinstance(o, dict) for o in requested[:MAX_OUTPUTS + 1]):
        raise ClientError(400, "'outputs' must be an array of objects with a name")
    if len(requested) > MAX_OUTPUTS:
        raise ClientError(400, f"'outputs' lists {len(requested)} outputs; the model gives "
                          f"{', '.join(schema.output_names)}")
    names = []
    for o in requested:
        name = o.get("name")
        if name not in schema.output_names:
            raise ClientError(
                400, f"unknown output {show(name)}; the model gives {', '.join(schema.output_names)}"
            )
        if name not in names:
            names.append(name)
    return tuple(names) if names else None


def _matrix_input(inp: dict, schema: Schema, bools: bool = True, limits: Limits = DEFAULT_LIMITS):
    name = inp.get("name")
    F = schema.n_features
    if isinstance(name, str) and isinstance(inp.get("shape"), list) and len(inp["shape"]) != 2:
        raise ClientError(
            422,
            f"input {show(name)} is not a feature of this model; send one tensor of shape [N, {F}] "
            f"(columns: {_names(schema.names)}) or one tensor per feature",
        )
    if not schema.all_numeric and inp.get("datatype") != "BYTES":
        cats = [n for n, c in zip(schema.names, schema.categorical, strict=True) if c]
        raise ClientError(
            422, f"features {_names(cats)} are categorical: send a BYTES matrix or one tensor per feature"
        )
    h = _head(inp, 0, limits)
    what = h.what
    if h.datatype not in NUMERIC_TYPES and schema.all_numeric:
        raise ClientError(422, f"{what}: the model's features are numeric; send FP32 or FP64, not {h.datatype}")
    n, width = h.shape
    if width != F:
        raise ClientError(
            422, f"{what}: shape {h.shape} has {width} columns but the model takes {F} features"
        )
    if n == 0:
        raise ClientError(400, f"{what}: no rows (shape {h.shape})")
    m = _values(inp, h, schema.float_dtype, bools, limits).reshape(n, F)
    if schema.all_numeric:
        return m, n
    # A BYTES matrix for a model with categorical features: numeric columns must parse as numbers.
    cols = []
    for j in range(F):
        col = m[:, j]
        if schema.categorical[j]:
            cols.append(col)
        else:
            cols.append(_parse_numbers(col, f"{what} column {j} (feature {show(schema.names[j])})",
                                       schema.float_dtype))
    return cols, n


def _parse_numbers(col: np.ndarray, what: str, float_dtype) -> np.ndarray:
    try:
        return col.astype(float_dtype)
    except (ValueError, TypeError, OverflowError):
        raise ClientError(422, f"{what}: holds values that are not numbers") from None


def _feature_inputs(inputs: list, schema: Schema, fd, bools: bool = True, limits: Limits = DEFAULT_LIMITS):
    seen: dict[str, int] = {}
    columns: list = [None] * schema.n_features
    unknown = []
    n = None
    budget = _Budget(limits)
    for i, inp in enumerate(inputs):
        h = _head(inp, i, limits)
        name, shape, what = h.name, h.shape, h.what
        j = schema.index.get(name)
        if j is None:
            unknown.append(name)
            continue
        if name in seen:
            raise ClientError(400, f"{what} is given twice (inputs[{seen[name]}] and inputs[{i}])")
        seen[name] = i
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise ClientError(422, f"{what}: shape {shape}; a per-feature tensor has shape [N] or [N, 1]")
        _check_kind(schema, j, h.datatype, what)
        rows = shape[0]
        if n is None:
            n = rows
        elif rows != n:
            first = next(k for k in seen if k != name)
            raise ClientError(422, f"inputs differ in rows: {show(first)} has {n}, {show(name)} has {rows}")
        budget.take(h)
        columns[j] = _values(inp, h, fd, bools, limits)
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
        f"feature {show(names[0])} is missing (null/NaN) in row(s) {_names(int(r) for r in rows)}; "
        f"this model cannot take missing values for {_names(names)}",
    )


# --- KServe V1 -------------------------------------------------------------------------------


def decode_v1(body: dict, schema: Schema, bools: bool = True, limits: Limits = DEFAULT_LIMITS) -> Batch:
    """`bools=False`: the request text holds no `true`/`false` (see typed_values)."""
    instances = body.get("instances")
    if not isinstance(instances, list) or not instances:
        raise ClientError(400, "'instances' must be a non-empty array of rows")
    F = schema.n_features
    fd = schema.float_dtype
    if len(instances) * F > limits.max_elements:
        raise ClientError(413, f"'instances' holds {len(instances)} rows of {F} features; a request may hold at "
                          f"most {limits.max_elements} values (KILN_MAX_ELEMENTS)")
    if all(isinstance(r, dict) for r in instances):
        x = _v1_dicts(instances, schema, bools, limits)
    elif all(isinstance(r, list) for r in instances):
        bad = next((k for k, r in enumerate(instances) if len(r) != F), None)
        if bad is None and schema.booleans:
            flags = [n in schema.booleans for n in schema.names]
            instances = [[float(v) if f and (v is True or v is False) else v for v, f in zip(r, flags, strict=True)]
                         for r in instances]
        if bad is not None:
            raise ClientError(
                422, f"instances[{bad}] has {len(instances[bad])} values but the model takes {F} features"
            )
        if schema.all_numeric:
            try:
                x = typed_values(instances, "FP64", "instances", fd, bools, [len(instances), F], limits)
            except ClientError:
                if any(isinstance(v, list) for r in instances for v in r):
                    raise ClientError(422, f"instances hold arrays inside rows; each instance must be a flat "
                                      f"array of {F} values") from None
                raise
        else:
            x = _v1_columns([_bools_as_numbers(list(c), n, schema)
                             for c, n in zip(zip(*instances, strict=True), schema.names, strict=True)],
                            schema, bools, limits)
    else:
        raise ClientError(
            422, f"each instance must be an array of {F} values or an object keyed by feature name"
        )
    check_missing(x, schema)
    return Batch(x, len(instances))


def _v1_dicts(rows: list[dict], schema: Schema, bools: bool = True, limits: Limits = DEFAULT_LIMITS):
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
    cols = [_bools_as_numbers([r[n] for r in rows], n, schema) for n in schema.names]
    if schema.all_numeric:
        m = np.empty((len(rows), schema.n_features), dtype=schema.float_dtype)
        for j, c in enumerate(cols):
            m[:, j] = _v1_column(c, "FP64", f"feature {show(schema.names[j])}", schema.float_dtype, bools, limits)
        return m
    return _v1_columns(cols, schema, bools, limits)


def _bools_as_numbers(values: list, name: str, schema: Schema) -> list:
    """A boolean feature's JSON true/false as 1.0/0.0 (what the model was trained on); others as they are."""
    if name not in schema.booleans:
        return values
    return [float(v) if v is True or v is False else v for v in values]


def _v1_columns(cols: list[list], schema: Schema, bools: bool = True, limits: Limits = DEFAULT_LIMITS):
    out = []
    for j, c in enumerate(cols):
        what = f"feature {show(schema.names[j])}"
        out.append(_v1_column(c, "BYTES" if schema.categorical[j] else "FP64", what, schema.float_dtype, bools,
                              limits))
    return out


def _v1_column(values: list, datatype: str, what: str, float_dtype, bools: bool,
               limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """One feature's values over the instances: one value per instance, not an array."""
    try:
        return typed_values(values, datatype, what, float_dtype, bools, [len(values)], limits)
    except ClientError:
        if any(isinstance(v, list) for v in values):
            raise ClientError(422, f"{what}: a value is an array; an instance gives one value per feature") from None
        raise
