"""The server against hostile bodies and against SIGTERM under load, as a real process.

1. Bad bodies, generated from a seed (random.Random(KILN_FUZZ_SEED)): malformed JSON, wrong types
   at every level, unknown datatypes, shapes that disagree with the data, bad dimensions, wrong
   feature counts and names, non-numeric and non-finite values, mutations of valid bodies,
   oversized bodies, and KServe V1 `instances` variants. Every one must be answered 4xx with a
   JSON `{"error": "..."}`, and the server must stay up and keep predicting like the Pipeline.
2. SIGTERM under steady load, a new connection per request: every request is either answered 200
   with the right prediction or refused at connect; anything else is an in-flight request dropped.

The model is the logistic regression Pipeline (StandardScaler + LogisticRegression): it cannot
take missing values, so NaN is a bad value for it (the forest takes NaN).
Run with -s to see the counts.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import random
import signal
import socket
import string
import subprocess
import threading
import time

import numpy as np
import pytest
from server_support import Server, infer, model_version, v2_matrix

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("KILN_FUZZ_SEED", "20240607"))
MAX_BODY = 64 << 10
V2 = "/v2/models/bc/infer"
V1 = "/v1/models/bc:predict"


@pytest.fixture(scope="module")
def logreg():
    return model_version("logreg")


@pytest.fixture(scope="module")
def server(logreg):
    srv = Server(logreg["dir"], "bc", "--max-body-bytes", str(MAX_BODY)).start()
    yield srv
    assert srv.stop() == 0


# --- the generator of bad bodies -------------------------------------------------------------------

# Values of a JSON type other than the one expected, to put at every level of a request.
WRONG = {"int": 7, "float": 1.5, "str": "x", "true": True, "null": None, "empty-list": [], "empty-object": {},
         "list": [1], "object": {"a": 1}}
# For each place: the wrong values that make the request bad there (those the protocol accepts are left out:
# any string is a valid tensor name, a number is a valid id, no outputs or [] means all outputs, ...).
WRONG_AT = {
    "body": list(WRONG),
    "inputs": list(WRONG),
    "tensor": list(WRONG),
    "name": ["int", "float", "true", "null", "empty-list", "empty-object", "list", "object"],
    "datatype": list(WRONG),
    "shape": list(WRONG),
    "shape-dim": ["float", "str", "true", "null", "empty-list", "empty-object", "list", "object"],
    "data": list(WRONG),
    "data-element": ["str", "true", "empty-list", "empty-object", "list", "object"],
    "outputs": ["int", "float", "str", "true", "empty-object", "list", "object"],
    "output-name": ["int", "float", "str", "true", "null", "empty-list", "list"],
    "id": ["true", "empty-list", "empty-object", "list", "object"],
}
UNKNOWN_DATATYPES = ["FLOAT", "fp32", "Fp64", "FP8", "BF16", "INT128", "STRING", "", "FP32 ", " FP32", "float32",
                     "DOUBLE", "UINT", "TF32"]


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()  # Python's json: NaN/Infinity floats become the bare tokens


class Bodies:
    """Bad request bodies for the breast-cancer logistic regression, drawn from one random.Random."""

    def __init__(self, rng: random.Random, names: list[str], X: np.ndarray):
        self.rng = rng
        self.names = names
        self.F = len(names)
        self.X = X
        self.cases: list[tuple[str, str, bytes]] = []  # (category, route, body)

    def add(self, category: str, body, route: str = V2) -> None:
        self.cases.append((category, route, body if isinstance(body, bytes) else dumps(body)))

    # -- valid bodies to start from --
    def rows(self, k: int | None = None) -> list[list[float]]:
        k = k or self.rng.randint(1, 4)
        return [[float(v) for v in self.X[self.rng.randrange(len(self.X))]] for _ in range(k)]

    def matrix(self, rows=None, datatype=None) -> dict:
        rows = rows or self.rows()
        nested = self.rng.random() < 0.5
        return {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])],
                            "datatype": datatype or self.rng.choice(["FP32", "FP64"]),
                            "data": rows if nested else [v for r in rows for v in r]}]}

    def per_feature(self, rows=None) -> dict:
        rows = rows or self.rows()
        column = self.rng.random() < 0.5
        inputs = [{"name": n, "shape": [len(rows), 1] if column else [len(rows)],
                   "datatype": self.rng.choice(["FP32", "FP64"]), "data": [r[j] for r in rows]}
                  for j, n in enumerate(self.names)]
        self.rng.shuffle(inputs)
        return {"inputs": inputs}

    def valid(self) -> dict:
        body = self.matrix() if self.rng.random() < 0.6 else self.per_feature()
        if self.rng.random() < 0.3:
            body["id"] = f"req-{self.rng.randrange(10**6)}"
        return body

    def tensor(self, body: dict) -> dict:
        return self.rng.choice(body["inputs"])

    def junk_name(self) -> str:
        name = self.rng.choice(self.names)
        return self.rng.choice([name.upper(), name + " ", name.replace(" ", "_"), name[:-1],
                                "".join(self.rng.choice(string.ascii_lowercase) for _ in range(8))])

    # -- the categories --
    def truncated(self, n: int) -> None:
        for _ in range(n):
            raw = dumps(self.valid())
            self.add("truncated-json", raw[:self.rng.randrange(len(raw))])

    def random_bytes(self, n: int) -> None:
        for _ in range(n):
            if self.rng.random() < 0.5:
                raw = self.rng.randbytes(self.rng.randint(1, 300))
            else:
                raw = "".join(self.rng.choice(string.printable) for _ in range(self.rng.randint(1, 300))).encode()
            self.add("random-bytes", raw)

    def invalid_utf8(self, n: int) -> None:
        seqs = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xa0\xa1", b"\xe2\x28\xa1", b"\xf0\x28\x8c\x28", b"\xc0\xaf",
                b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1\xa1"]
        for _ in range(n):
            raw = dumps(self.valid())
            if self.rng.random() < 0.5:  # inside the tensor name
                raw = raw.replace(b'"name": "', b'"name": "' + self.rng.choice(seqs), 1)
            else:
                at = self.rng.randrange(len(raw))
                raw = raw[:at] + self.rng.choice(seqs) + raw[at:]
            self.add("invalid-utf8", raw)
        # A lone surrogate escape is valid JSON text but not valid Unicode; with a NaN token elsewhere
        # the body takes the lenient (Python json) path, which lets it through.
        body = dumps(self.matrix())
        self.add("invalid-utf8", body[:-1] + b', "id": "\\ud800"}')
        self.add("invalid-utf8", body[:-1] + b', "id": "\\udc00x", "parameters": {"p": NaN}}')
        self.add("invalid-utf8", body.replace(b'"name": "input"', b'"name": "\\ud800"', 1)[:-1]
                 + b', "parameters": {"p": NaN}}')

    def deep_nesting(self, n: int) -> None:
        for _ in range(n):
            d = self.rng.choice([100, 1000, 1100, 5000, 30000])
            kind = self.rng.randrange(6)
            if kind == 0:
                raw = b"[" * d
            elif kind == 1:
                raw = b"[" * d + b"]" * d
            elif kind == 2:
                raw = b'{"a":' * d + b"1" + b"}" * d
            elif kind == 3:  # NaN makes the server retry with Python's json, which recurses
                raw = b'{"inputs": ' + b"[" * d + b"NaN" + b"]" * d + b"}"
            elif kind == 4:
                raw = b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ' + \
                    b"[" * min(d, 1000) + b"1.0" + b"]" * min(d, 1000) + b"}]}"
            else:
                raw = b'{"instances": ' + b"[" * d + b"Infinity" + b"]" * d + b"}"
            self.add("deep-nesting", raw, V1 if kind == 5 else V2)

    def wrong_types(self, n: int) -> None:
        places = list(WRONG_AT)
        for k in range(n):
            place = places[k % len(places)]
            body = self.valid()
            t = self.tensor(body)
            choices = WRONG_AT[place]
            if np.size(t["data"]) == 1:  # a tensor of one value: [1] is its shape, 7 or [7] its data
                if place in ("data", "data-element"):
                    choices = [c for c in choices if c not in ("int", "float", "list")]
                elif place == "shape":
                    choices = [c for c in choices if c != "list"]
            wrong = WRONG[self.rng.choice(choices)]
            if place == "body":
                body = wrong
            elif place == "inputs":
                body["inputs"] = wrong
            elif place == "tensor":
                body["inputs"][self.rng.randrange(len(body["inputs"]))] = wrong
            elif place in ("name", "datatype", "shape", "data"):
                t[place] = wrong
            elif place == "shape-dim":
                t["shape"][self.rng.randrange(len(t["shape"]))] = wrong
            elif place == "data-element":
                data = t["data"]
                row = data[self.rng.randrange(len(data))] if isinstance(data[0], list) else data
                row[self.rng.randrange(len(row))] = wrong
            elif place == "outputs":
                body["outputs"] = wrong
            elif place == "output-name":
                body["outputs"] = [{"name": "label"}, {"name": wrong}]
            else:
                body["id"] = wrong
            self.add(f"wrong-type:{place}", body)

    def unknown_datatypes(self, n: int) -> None:
        for _ in range(n):
            body = self.valid()
            self.tensor(body)["datatype"] = self.rng.choice(UNKNOWN_DATATYPES)
            self.add("unknown-datatype", body)

    def shape_mismatch(self, n: int) -> None:
        for _ in range(n):
            body = self.matrix()
            t = body["inputs"][0]
            k = t["shape"][0]
            kind = self.rng.randrange(6)
            if kind == 0:
                t["shape"][0] = k + self.rng.randint(1, 5)
            elif kind == 1:
                t["data"] = [v for r in self.rows(k) for v in r] + [1.0] * self.rng.randint(1, 29)
            elif kind == 2:
                t["data"] = [v for r in self.rows(k) for v in r][:-self.rng.randint(1, 29)]
            elif kind == 3:
                t["shape"] = [k * self.F]
            elif kind == 4:
                t["shape"] = self.rng.choice([[], [k, self.F, 1], [1, k, self.F]])
            else:
                body = self.per_feature()
                t = self.tensor(body)
                t["data"] = t["data"] + [1.0]
            self.add("shape-mismatch", body)

    def bad_dims(self, n: int) -> None:
        dims = [-1, -30, -(2**63), 2**62, 2**63 - 1, 2**64, 10**30, 0]
        for _ in range(n):
            body = self.matrix()
            t = body["inputs"][0]
            d = self.rng.choice(dims)
            if d == 0:
                if self.rng.random() < 0.5:
                    t["shape"], t["data"] = [0, self.F], []
                else:
                    t["shape"][self.rng.randrange(2)] = 0
            else:
                t["shape"][self.rng.randrange(2)] = d
            self.add("bad-dims", body)
        body = self.per_feature()
        for t in body["inputs"]:
            t["shape"], t["data"] = [0], []
        self.add("bad-dims", body)

    def feature_counts(self, n: int) -> None:
        for _ in range(n):
            k = self.rng.randint(1, 3)
            m = self.rng.choice([1, 2, 10, 29, 31, 32, 60])
            rows = [[float(v) for v in self.X[self.rng.randrange(len(self.X))][:m]] + [1.0] * max(0, m - self.F)
                    for _ in range(k)]
            self.add("feature-count", self.matrix(rows))

    def feature_names(self, n: int) -> None:
        for k in range(n):
            body = self.per_feature()
            inputs = body["inputs"]
            kind = k % 4
            if kind == 0:  # unknown names in place of known ones
                for t in self.rng.sample(inputs, self.rng.randint(1, 3)):
                    t["name"] = self.junk_name()
                category = "unknown-feature"
            elif kind == 1:  # an extra tensor of an unknown name
                inputs.append({**inputs[0], "name": self.junk_name()})
                category = "unknown-feature"
            elif kind == 2:  # a feature twice
                if self.rng.random() < 0.5:
                    inputs.append(dict(self.rng.choice(inputs)))
                else:
                    a, b = self.rng.sample(inputs, 2)
                    a["name"] = b["name"]
                category = "duplicate-feature"
            else:  # features left out
                for t in self.rng.sample(inputs, self.rng.randint(1, self.F - 2)):
                    inputs.remove(t)
                category = "missing-feature"
            self.add(category, body)

    def non_numeric(self, n: int) -> None:
        values = ["1.0", "abc", "", "NaN", "inf", True, False, {"v": 1}, [], [1.0, 2.0]]
        for k in range(n):
            kind = k % 5
            if kind <= 1:
                body = self.valid()
                t = self.tensor(body)
                data = t["data"]
                nested = isinstance(data[0], list)
                for _ in range(self.rng.randint(1, 3)):
                    row = data[self.rng.randrange(len(data))] if nested else data
                    row[self.rng.randrange(len(row))] = self.rng.choice(values)
            elif kind == 2:  # fractions in an integer tensor
                body = self.matrix(datatype=self.rng.choice(["INT64", "INT32", "UINT8"]))
            elif kind == 3:  # numbers in a BYTES or BOOL tensor, strings in a numeric one
                body = self.matrix(datatype=self.rng.choice(["BYTES", "BOOL"]))
            else:
                body = self.matrix()
                t = body["inputs"][0]
                t["data"] = [str(v) for v in np.asarray(t["data"]).reshape(-1).tolist()]
            self.add("non-numeric", body)

    def non_finite(self, n: int) -> None:
        for k in range(n):
            kind = k % 5
            if kind == 1:  # whole numbers in an integer tensor: only the token is wrong
                body = self.matrix([[float(round(v)) for v in r] for r in self.rows()],
                                   self.rng.choice(["INT64", "INT32"]))
            else:
                body = self.matrix()
            t = body["inputs"][0]
            flat = isinstance(t["data"][0], float)
            if kind in (0, 1):  # NaN the model cannot take; a NaN or Infinity in an integer tensor
                token = float("nan") if kind == 0 else self.rng.choice([float("nan"), float("inf"), float("-inf")])
                for _ in range(self.rng.randint(1, 3)):
                    row = t["data"] if flat else t["data"][self.rng.randrange(len(t["data"]))]
                    row[self.rng.randrange(len(row))] = token
                self.add("nan-infinity", body)
            elif kind == 2:  # null, a missing value, where the model cannot take one
                row = t["data"] if flat else t["data"][0]
                row[self.rng.randrange(len(row))] = None
                self.add("nan-infinity", body)
            elif kind == 3:  # non-finite dimensions
                t["shape"][self.rng.randrange(2)] = self.rng.choice([float("nan"), float("inf"), float("-inf")])
                self.add("nan-infinity", body)
            else:  # tokens that are not JSON even for Python
                raw = dumps(body)
                token = self.rng.choice([b"-NaN", b"nan", b"inf", b"+Infinity", b"Infinityy", b"NaN0", b"1e999e"])
                at = raw.index(b'"data": ') + len(b'"data": ') + (0 if flat else 1)
                self.add("nan-infinity", raw[:at] + b"[" + token + b", " + raw[at + 1:])

    def mutations(self, n: int) -> None:
        keys = ["name", "shape", "datatype", "data"]
        renames = {"inputs": ["Inputs", "input", "inputs ", "instances", "tensors"],
                   "name": ["Name", "names", "id"], "shape": ["dims", "Shape", "size"],
                   "datatype": ["dtype", "type", "DataType"], "data": ["contents", "values", "Data"]}
        for k in range(n):
            body = self.valid()
            kind = k % 4
            if kind == 0:  # drop a required key
                key = self.rng.choice(["inputs", *keys])
                if key == "inputs":
                    del body["inputs"]
                else:
                    del self.tensor(body)[key]
                self.add("mutation:drop-key", body)
            elif kind == 1:  # rename a required key
                key = self.rng.choice(["inputs", *keys])
                holder = body if key == "inputs" else self.tensor(body)
                holder[self.rng.choice(renames[key])] = holder.pop(key)
                self.add("mutation:rename-key", body)
            elif kind == 2:  # a key given twice in the text, the last time with a bad value (last one wins)
                if self.rng.random() < 0.4:
                    raw = dumps(body)[:-1] + b', "inputs": ' + self.rng.choice([b"{}", b"5", b"[]", b'"x"']) + b"}"
                else:
                    body = self.matrix()
                    t = body["inputs"][0]
                    bad = {"name": b"7", "shape": b"[1, 2, 3]", "datatype": b'"FP3"', "data": b'"x"'}
                    key = self.rng.choice(keys)
                    tensor = dumps(t)[:-1] + b', "' + key.encode() + b'": ' + bad[key] + b"}"
                    raw = b'{"inputs": [' + tensor + b"]}"
                self.add("mutation:duplicate-key", raw)
            else:  # two values swapped inside a tensor
                t = self.tensor(body)
                a, b = self.rng.sample(keys, 2)
                t[a], t[b] = t[b], t[a]
                self.add("mutation:swap-values", body)

    def oversized(self, n: int) -> None:
        for k in range(n):
            kind = k % 5
            if kind == 0:  # a valid request with too many rows
                raw = dumps(self.matrix(self.rows(self.rng.randint(450, 800))))
            elif kind == 1:
                raw = self.rng.randbytes(MAX_BODY + self.rng.randint(1, 50000))
            elif kind == 2:
                raw = b" " * (MAX_BODY + 1) + dumps(self.matrix())
            elif kind == 3:
                body = self.matrix()
                body["id"] = "x" * (MAX_BODY + self.rng.randint(0, 1000))
                raw = dumps(body)
            else:
                raw = dumps({"instances": self.rows(self.rng.randint(450, 800))})
            assert len(raw) > MAX_BODY
            self.add("oversized", raw, V1 if kind == 4 else V2)

    def v1(self, n: int) -> None:
        for k in range(n):
            rows = self.rows()
            kind = k % 12
            if kind == 0:
                body = {"instances": WRONG[self.rng.choice(["int", "float", "str", "true", "null", "empty-list",
                                                            "empty-object", "object"])]}
            elif kind == 1:
                body = self.rng.choice([{"inputs": rows}, {"instance": rows}, {"data": rows}, rows])
            elif kind == 2:  # rows of the wrong length
                body = {"instances": [r[:self.rng.choice([0, 1, 29])] for r in rows] + [r + [1.0] for r in rows]}
            elif kind == 3:  # rows that are not rows
                body = {"instances": self.rng.choice([[1.0, 2.0], ["a"], [None], [rows[0], {"a": 1}], [True]])}
            elif kind == 4:  # a non-number in a row
                rows[0][self.rng.randrange(self.F)] = self.rng.choice(["1.0", "x", {}, True, False, [1.0], []])
                body = {"instances": rows}
            elif kind == 5:  # a row of single-element lists: the same count, one dimension too many
                body = {"instances": [[[v] for v in r] for r in rows]}
            elif kind == 6:  # NaN or null where the model cannot take it
                rows[-1][self.rng.randrange(self.F)] = self.rng.choice([float("nan"), None])
                body = {"instances": rows}
            elif kind == 7:  # feature dicts: unknown, missing or extra names
                dicts = [dict(zip(self.names, r, strict=True)) for r in rows]
                d = dicts[self.rng.randrange(len(dicts))]
                choice = self.rng.randrange(3)
                if choice == 0:
                    d[self.junk_name()] = d.pop(self.rng.choice(self.names))
                elif choice == 1:
                    del d[self.rng.choice(self.names)]
                else:
                    d[self.junk_name()] = 1.0
                body = {"instances": dicts}
            elif kind == 8:  # feature dicts with a value of the wrong type
                dicts = [dict(zip(self.names, r, strict=True)) for r in rows]
                d = dicts[self.rng.randrange(len(dicts))]
                d[self.rng.choice(self.names)] = self.rng.choice(["1.0", [1.0], [1.0, 2.0], {"v": 1}, True, None])
                body = {"instances": dicts}
            elif kind == 9:
                raw = dumps({"instances": rows})
                self.add("v1", raw[:self.rng.randrange(len(raw))], V1)
                continue
            elif kind == 10:
                last = self.rng.choice([b"{}", b"[]", b"1"])
                raw = dumps({"instances": rows})[:-1] + b', "instances": ' + last + b"}"
                self.add("v1", raw, V1)
                continue
            else:  # a V2 body on the V1 route
                body = self.matrix()
            self.add("v1", body, V1)

    def generate(self) -> list[tuple[str, str, bytes]]:
        self.truncated(25)
        self.random_bytes(12)
        self.invalid_utf8(10)
        self.deep_nesting(12)
        self.wrong_types(48)
        self.unknown_datatypes(14)
        self.shape_mismatch(18)
        self.bad_dims(16)
        self.feature_counts(10)
        self.feature_names(20)
        self.non_numeric(25)
        self.non_finite(20)
        self.mutations(40)
        self.oversized(10)
        self.v1(48)
        return self.cases


def test_generator_starts_from_valid_bodies(server, logreg):
    """The bad bodies are mutations of valid ones: those valid ones are answered like the Pipeline."""
    gen = Bodies(random.Random(SEED), logreg["names"], logreg["X"])
    pipe = logreg["pipeline"]
    for _ in range(10):
        rows = gen.rows()
        for body in (gen.matrix(rows), gen.per_feature(rows)):
            status, resp = infer(server, body)
            assert status == 200, resp
            assert resp["outputs"][0]["data"] == pipe.predict(np.asarray(rows)).tolist()
    status, resp = infer(server, {"instances": rows}, V1)
    assert status == 200 and resp["predictions"] == pipe.predict(np.asarray(rows)).tolist()


def test_generated_bad_bodies_get_only_4xx_and_the_server_stays_up(server, logreg):
    cases = Bodies(random.Random(SEED), logreg["names"], logreg["X"]).generate()
    assert len(cases) >= 200
    assert len({body for _, _, body in cases}) >= 200, "the generator repeats itself"
    failures = []
    codes: collections.Counter = collections.Counter()
    by_category: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for i, (category, route, body) in enumerate(cases):
        try:
            status, resp = infer(server, body, route)
        except (OSError, http.client.HTTPException) as exc:  # reset, closed, empty reply, timeout
            failures.append(f"#{i} {category}: no answer ({type(exc).__name__}: {exc}); body {body[:160]!r}")
            codes["no answer"] += 1
            continue
        codes[status] += 1
        by_category[category.split(":")[0]][status] += 1
        good = (400 <= status < 500 and isinstance(resp, dict) and isinstance(resp.get("error"), str)
                and resp["error"].strip())
        if not good:
            failures.append(f"#{i} {category}: {status} {str(resp)[:200]}; body {body[:160]!r}")
    print(f"\n{len(cases)} bad bodies (seed {SEED}): status codes {dict(sorted(codes.items(), key=str))}")
    for category, counter in sorted(by_category.items()):
        print(f"  {category:<18} {sum(counter.values()):4d}  {dict(sorted(counter.items()))}")
    assert not failures, f"{len(failures)} of {len(cases)} bad bodies not answered 4xx + error:\n" + \
        "\n".join(failures[:40])
    assert {400, 413, 422} <= set(codes), codes
    # Still up, ready, and predicting like the Pipeline.
    assert server.proc.poll() is None
    assert server.request("GET", "/v2/health/ready") == (200, {"ready": True})
    X = logreg["X"][:5]
    status, resp = infer(server, v2_matrix(X, rid="after"))
    assert status == 200 and resp["id"] == "after", resp
    assert resp["outputs"][0]["data"] == logreg["pipeline"].predict(X).tolist()
    assert np.allclose(np.asarray(resp["outputs"][1]["data"]).reshape(5, 2), logreg["pipeline"].predict_proba(X),
                       atol=1e-5)
    status, resp = infer(server, {"instances": X.tolist()}, V1)
    assert status == 200 and resp["predictions"] == logreg["pipeline"].predict(X).tolist()


# --- SIGTERM under load ------------------------------------------------------------------------------

CLIENTS = 8


def _load(port: int, bodies: list[tuple[bytes, list]], stop: threading.Event, out: list) -> None:
    """Requests on a new connection each, until stop: (sent at, done at, outcome, detail)."""
    k = 0
    while not stop.is_set():
        body, expected = bodies[k % len(bodies)]
        k += 1
        t0 = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.connect()
        except ConnectionRefusedError:
            out.append((t0, time.monotonic(), "refused", ""))
            time.sleep(0.005)
            continue
        except OSError as exc:  # a connect that neither succeeds nor is refused
            out.append((t0, time.monotonic(), "dropped", f"connect: {type(exc).__name__}: {exc}"))
            continue
        try:
            conn.request("POST", V2, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                out.append((t0, time.monotonic(), "dropped", f"{resp.status} {data[:200]!r}"))
            elif json.loads(data)["outputs"][0]["data"] != expected:
                out.append((t0, time.monotonic(), "dropped", f"wrong prediction {data[:200]!r}"))
            else:
                out.append((t0, time.monotonic(), "answered", ""))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            out.append((t0, time.monotonic(), "dropped", f"{type(exc).__name__}: {exc}"))
        finally:
            conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_under_load_drops_no_request_in_flight(workers):
    info = model_version("rf")
    pipe, X = info["pipeline"], info["X"]
    bodies = []
    for k in range(8):
        rows = X[k * 3:k * 3 + 1 + k % 3]
        bodies.append((json.dumps(v2_matrix(rows)).encode(), pipe.predict(rows).tolist()))
    srv = Server(info["dir"], "bc", "--workers", str(workers)).start(timeout=60)
    stop = threading.Event()
    results: list[list] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_load, args=(srv.port, bodies, stop, results[i]), daemon=True)
               for i in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        sent_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        try:
            code = srv.proc.wait(30)
        except subprocess.TimeoutExpired:
            code = None
        exited_at = time.monotonic()
        time.sleep(0.3)  # the clients meet the closed port after the exit
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        rc = srv.stop()
    outcomes = [r for rs in results for r in rs]
    count = collections.Counter(o for _, _, o, _ in outcomes)
    answered_after = sum(1 for _, done, o, _ in outcomes if o == "answered" and done > sent_at)
    in_flight_at_signal = sum(1 for t0, done, o, _ in outcomes if o == "answered" and t0 < sent_at < done)
    dropped = [f"{'after' if t0 > sent_at else 'before'} SIGTERM +{t0 - sent_at:.3f}s: {detail}"
               for t0, _, o, detail in outcomes if o == "dropped"]
    last = max((done for _, done, o, _ in outcomes if o == "answered"), default=sent_at) - sent_at
    print(f"\nworkers={workers}: {len(outcomes)} requests, {dict(count)}; answered after SIGTERM {answered_after} "
          f"({in_flight_at_signal} of them in flight when it was sent), the last at +{last:.3f} s; "
          f"exit {code} at +{exited_at - sent_at:.3f} s")
    assert not dropped, f"{len(dropped)} requests dropped:\n" + "\n".join(dropped[:20])
    assert count["answered"] > 100, count  # there was load
    assert answered_after > 0, "no request was answered after SIGTERM: the drain was not under load"
    assert count["refused"] > 0, "the clients never saw the port closed"
    assert code == 0 and rc == 0


def test_sigterm_serves_a_request_on_an_idle_connection_then_closes_silent_ones():
    """Connections with no request in progress at SIGTERM: a request arriving soon after is still answered
    (with Connection: close); a connection that stays silent is closed, and the server exits without
    waiting for it."""
    info = model_version("rf")
    X = info["X"][:2]
    body = json.dumps(v2_matrix(X)).encode()
    srv = Server(info["dir"], "bc").start()
    keep_alive = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    silent = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        keep_alive.request("POST", V2, body=body)
        first = keep_alive.getresponse()
        assert first.status == 200 and first.getheader("connection") != "close"
        first.read()
        time.sleep(0.1)  # both connections accepted and idle
        sent_at = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.25)  # the server is draining: the listening socket is closed by now
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=0.5).close()
        keep_alive.request("POST", V2, body=body)
        second = keep_alive.getresponse()
        answer = json.loads(second.read())
        assert second.status == 200 and second.getheader("connection") == "close"
        assert answer["outputs"][0]["data"] == info["pipeline"].predict(X).tolist()
        assert silent.recv(1) == b""  # closed by the server, unanswered: it never asked anything
        assert srv.proc.wait(10) == 0
        assert time.monotonic() - sent_at < 5
    finally:
        keep_alive.close()
        silent.close()
        srv.stop()
