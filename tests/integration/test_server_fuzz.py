"""A seeded fuzzer against the server as a real process: bodies, headers and URLs.

Every case is sent on a raw socket (a client library would refuse most of them) with
`Connection: close`, while the answer is read concurrently, under a client timeout. Over the
whole run:

* no case is answered 5xx, and every 4xx carries a JSON `{"error": ...}`;
* no connection hangs: each is answered, or closed, before the client timeout (incomplete
  requests are answered 408 after --request-timeout-s, 1 s here);
* the requests generated valid are answered 200;
* the server's resident memory (VmRSS) grows by at most 100 MiB;
* afterwards it still answers health checks and predicts like the Pipeline.

The cases come from random.Random(KILN_FUZZ_SEED), so a failure replays: the message names the
seed, the case number and its category. Run with -s for the counts per category.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import string
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest
from server_support import Server, infer, model_version, proc_status, raw_exchange, v2_matrix

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("KILN_FUZZ_SEED", "1107"))
CLIENT_TIMEOUT = 8.0
REQUEST_TIMEOUT = 1.0  # the server's --request-timeout-s: incomplete requests end in 408 after it
THREADS = 8
MAX_BODY = 8 << 20  # the default --max-body-bytes
V2 = "/v2/models/bc/infer"
V1 = "/v1/models/bc:predict"
MiB = 1 << 20
DATATYPES = ["FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64",
             "BOOL", "BYTES"]


@dataclass
class Case:
    category: str
    raw: bytes
    method: str = "POST"
    valid: bool = False  # must be answered 200


def http(method: str, path: bytes | str, body: bytes = b"", headers: list[bytes] | None = None,
         version: bytes = b"HTTP/1.1", length: bool = True) -> bytes:
    path = path.encode() if isinstance(path, str) else path
    lines = [method.encode() + b" " + path + b" " + version, b"Host: kiln", b"Connection: close"]
    if length and (body or method in ("POST", "PUT")):
        lines.append(b"Content-Length: %d" % len(body))
    lines.extend(headers or [])
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def dumps(obj) -> bytes:
    return json.dumps(obj).encode()  # Python's json: NaN/Infinity become the bare (non-standard) tokens


class Fuzzer:
    def __init__(self, rng: random.Random, names: list[str], X: np.ndarray):
        self.rng = rng
        self.names = names
        self.F = len(names)
        self.X = X
        self.cases: list[Case] = []

    def add(self, category: str, raw: bytes, method: str = "POST", valid: bool = False) -> None:
        self.cases.append(Case(category, raw, method, valid))

    def post(self, category: str, body: bytes, path: str = V2, valid: bool = False) -> None:
        self.add(category, http("POST", path, body), valid=valid)

    # -- building blocks --
    def rows(self, k: int | None = None) -> list[list[float]]:
        k = k or self.rng.randint(1, 5)
        return [[float(v) for v in self.X[self.rng.randrange(len(self.X))]] for _ in range(k)]

    def matrix(self, rows=None, datatype=None, nested=None) -> dict:
        rows = rows or self.rows()
        nested = self.rng.random() < 0.5 if nested is None else nested
        return {"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])],
                            "datatype": datatype or self.rng.choice(["FP32", "FP64"]),
                            "data": rows if nested else [v for r in rows for v in r]}]}

    def per_feature(self, rows=None) -> dict:
        rows = rows or self.rows()
        inputs = [{"name": n, "shape": [len(rows)], "datatype": "FP64", "data": [r[j] for r in rows]}
                  for j, n in enumerate(self.names)]
        self.rng.shuffle(inputs)
        return {"inputs": inputs}

    def valid_body(self) -> tuple[dict, str]:
        kind = self.rng.randrange(4)
        if kind == 0:
            return self.matrix(), V2
        if kind == 1:
            return self.per_feature(), V2
        if kind == 2:
            return self.matrix([[float(round(v)) for v in r] for r in self.rows()], "INT64"), V2
        return {"instances": self.rows()}, V1

    def junk(self, n: int) -> str:
        return "".join(self.rng.choice(string.printable) for _ in range(n))

    def json_value(self, depth: int = 0):
        """A random JSON value: what a confused client could put anywhere."""
        r = self.rng.random()
        if depth > 4 or r < 0.45:
            return self.rng.choice([None, True, False, 0, -1, 1.5, 2 ** 63, -(2 ** 64), 1e308, float("nan"),
                                    float("inf"), "", "x", "FP32", "input", self.junk(self.rng.randint(1, 40))])
        if r < 0.75:
            return [self.json_value(depth + 1) for _ in range(self.rng.randint(0, 6))]
        return {self.junk(self.rng.randint(0, 8)): self.json_value(depth + 1) for _ in range(self.rng.randint(0, 5))}

    # -- bodies ---------------------------------------------------------------------------------------------
    def malformed_json(self, n: int) -> None:
        tokens = [b"]", b"}", b",", b":", b"'", b"/*", b"//", b"\\u", b"\\ud800", b"\"", b"\x00", b"nul", b"tru",
                  b"01", b"1.", b".5", b"+1", b"1e", b"--1", b"[,]", b"{,}", b"\xef\xbb\xbf"]
        for k in range(n):
            body, route = self.valid_body()
            raw = dumps(body)
            kind = k % 6
            if kind == 0:
                raw = raw[:self.rng.randrange(len(raw))]
            elif kind == 1:
                at = self.rng.randrange(len(raw))
                raw = raw[:at] + self.rng.choice(tokens) + raw[at:]
            elif kind == 2:
                raw = bytearray(raw)
                for _ in range(self.rng.randint(1, 5)):
                    raw[self.rng.randrange(len(raw))] = self.rng.randrange(256)
                raw = bytes(raw)
            elif kind == 3:
                raw = raw + self.rng.choice([b"x", b"{}", b"]", b"\x00", b" garbage", b"\n{\"inputs\": []}"])
            elif kind == 4:
                raw = self.rng.choice([b"", b" ", b"\n\t", b"null", b"true", b"1", b'"inputs"', b"[]", b"{}",
                                       b"[{}]", b"\xef\xbb\xbf{}", b"{'inputs': []}", b"{inputs: []}"])
            else:
                raw = raw.replace(b'"', b"'", self.rng.randint(1, 4))
            self.post("json:malformed", raw, route)

    def binary(self, n: int) -> None:
        seqs = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\xa1\xa1\xa1\xa1", b"\xc0\xaf", b"\x00"]
        for k in range(n):
            if k % 3 == 0:
                raw = self.rng.randbytes(self.rng.randint(1, 4096))
            elif k % 3 == 1:
                raw = b"\x1f\x8b\x08\x00" + self.rng.randbytes(self.rng.randint(0, 200))  # gzip, unannounced
            else:
                raw = dumps(self.matrix())
                raw = raw.replace(b'"input"', b'"in' + self.rng.choice(seqs) + b'put"', 1)
            self.post("binary", raw, self.rng.choice([V2, V1]))

    def shapes(self, n: int) -> None:
        odd = [[], [0], [-1, 30], [1, -30], [2 ** 63, 30], [2 ** 64, 30], [10 ** 30], [2 ** 31, 2 ** 31],
               [1.0, 30], ["1", 30], [True, 30], [[1], 30], None, {}, "1,30", 7, [1, 30, 1], [1, 1, 30],
               [1] * 20, [1] * 9, [0, 30], [1, 0], [30, 1], [float("nan"), 30], [float("inf"), 30]]
        for k in range(n):
            body = self.matrix()
            t = body["inputs"][0]
            rows = t["shape"][0]
            kind = k % 4
            if kind == 0:
                t["shape"] = self.rng.choice(odd)
            elif kind == 1:  # a plausible shape that disagrees with the data
                t["shape"] = [rows + self.rng.choice([-1, 1, 100]), self.F]
            elif kind == 2:  # data too short or too long for a right shape
                flat = [v for r in self.rows(rows) for v in r]
                t["data"] = flat[:self.rng.randrange(len(flat))] + [1.0] * self.rng.choice([0, 1, 31, 1000])
            else:  # a per-feature body with one tensor of another shape
                body = self.per_feature()
                self.rng.choice(body["inputs"])["shape"] = self.rng.choice(odd + [[rows, 2], [rows + 1]])
            self.post("body:shape", dumps(body))

    def datatypes(self, n: int) -> None:
        for k in range(n):
            body = self.matrix() if k % 2 else self.per_feature()
            t = self.rng.choice(body["inputs"])
            kind = k % 5
            if kind == 0:
                t["datatype"] = self.rng.choice(["fp32", "FLOAT", "", " FP32", "FP32\x00", "STRING", "INT128",
                                                 None, 32, [], {}, True, "x" * 1000])
            elif kind == 1:
                t["datatype"] = self.rng.choice(DATATYPES)
            elif kind == 2:  # strings or booleans in a numeric tensor
                flat = np.asarray(t["data"]).reshape(-1).tolist()
                t["shape"] = [len(flat)] if "input" != t["name"] else [len(flat) // self.F, self.F]
                t["data"] = [self.rng.choice([str(v), True, False, None, "nan", "1e5", "", " 1"]) for v in flat]
            elif kind == 3:
                t["datatype"] = self.rng.choice(["INT64", "INT8", "UINT8", "BOOL"])  # fractions, negatives
            else:
                t["datatype"] = "BYTES"
            self.post("body:datatype", dumps(body))

    def nesting(self, n: int) -> None:
        for k in range(n):
            d = self.rng.choice([3, 10, 100, 1000, 1023, 1025, 5000, 20000])
            kind = k % 6
            if kind == 0:
                raw = b'{"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ' + \
                      b"[" * d + b"1.0" + b"]" * d + b"}]}"
            elif kind == 1:
                raw = b'{"inputs": ' + b"[" * d + b"]" * d + b"}"
            elif kind == 2:
                raw = b'{"a":' * d + b"1" + b"}" * d
            elif kind == 3:  # a NaN sends the body through Python's json, which recurses
                raw = b'{"inputs": ' + b"[" * d + b"NaN" + b"]" * d + b"}"
            elif kind == 4:
                raw = dumps(self.matrix())[:-1] + b', "parameters": ' + b'{"p":' * d + b"0" + b"}" * d + b"}"
            else:
                raw = b'{"instances": ' + b"[" * d + b"Infinity" + b"]" * d + b"}"
            self.post("body:nesting", raw, V1 if kind == 5 else V2)

    def strings(self, n: int) -> None:
        sizes = [10_000, 100_000, 1 << 20, 3 << 20]
        for k in range(n):
            big = "s" * self.rng.choice(sizes)
            body = self.matrix()
            t = body["inputs"][0]
            kind = k % 8
            if kind == 0:
                t["data"] = [big] + [""] * self.rng.choice([29, 1000, 100_000])
                t["shape"] = [len(t["data"]) // 30 or 1, 30]
            elif kind == 1:
                t["name"] = big
            elif kind == 2:
                t["datatype"] = big
            elif kind == 3:
                body["id"] = big
            elif kind == 4:
                body["outputs"] = [{"name": big}]
            elif kind == 5:
                body[big] = 1
            elif kind == 6:
                t["datatype"] = "BYTES"
                t["data"] = [big] * 30
                t["shape"] = [1, 30]
            else:
                body = {"instances": [[big] + [""] * 29] * self.rng.choice([1, 100])}
            self.post("body:strings", dumps(body), V1 if "instances" in body else V2)

    def nonfinite(self, n: int) -> None:
        tokens = [float("nan"), float("inf"), float("-inf")]
        for k in range(n):
            kind = k % 6
            if kind <= 1:  # in a float tensor: NaN refused (the forest takes it), Infinity accepted
                body = self.matrix(datatype="FP32" if kind else "FP64")
                data = body["inputs"][0]["data"]
                row = data[0] if isinstance(data[0], list) else data
                row[self.rng.randrange(len(row))] = self.rng.choice(tokens)
                raw = dumps(body)
            elif kind == 2:
                body = self.matrix([[float(round(v)) for v in r] for r in self.rows()], "INT64", nested=False)
                body["inputs"][0]["data"][0] = self.rng.choice(tokens)
                raw = dumps(body)
            elif kind == 3:
                body = self.matrix()
                body["inputs"][0]["shape"][self.rng.randrange(2)] = self.rng.choice(tokens)
                raw = dumps(body)
            elif kind == 4:
                rows = self.rows()
                rows[0][0] = self.rng.choice(tokens)
                raw = dumps({"instances": rows, "id": self.rng.choice(tokens)})
            else:  # literals that are not JSON even for Python, or overflow
                raw = dumps(self.matrix(nested=False))
                at = raw.index(b'"data": [') + len(b'"data": [')
                token = self.rng.choice([b"1e999", b"-1e999", b"nan", b"inf", b"+Infinity", b"-NaN", b"Infinityy",
                                         b"NaN0", b"1e-400", b"-0"])
                raw = raw[:at] + token + b", " + raw[at:]
            self.post("body:nonfinite", raw, V1 if b"instances" in raw[:20] else V2)

    def numbers(self, n: int) -> None:
        values = [2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63) - 1, 10 ** 30, 1e308, -1e308, 3.4e38, 1e39, 5e-324, -0.0]
        for k in range(n):
            datatype = self.rng.choice(["FP32", "FP64", "INT64", "UINT64", "INT8", "FP16"])
            body = self.matrix(datatype=datatype, nested=bool(k % 2))
            data = body["inputs"][0]["data"]
            row = data[0] if isinstance(data[0], list) else data
            for _ in range(self.rng.randint(1, 4)):
                row[self.rng.randrange(len(row))] = self.rng.choice(values)
            self.post("body:numbers", dumps(body))

    def structure(self, n: int) -> None:
        for k in range(n):
            body, route = self.valid_body()
            if k % 3 == 0:
                body = self.json_value()
            elif k % 3 == 1:
                key = self.rng.choice(["inputs", "instances", "outputs", "id", "parameters"])
                body[key] = self.json_value()
            elif "inputs" in body:
                t = self.rng.choice(body["inputs"])
                t[self.rng.choice(["name", "shape", "datatype", "data", "parameters"])] = self.json_value()
            else:
                body["instances"][0] = self.json_value()
            self.post("body:structure", dumps(body), route)

    def v1(self, n: int) -> None:
        for k in range(n):
            rows = self.rows()
            kind = k % 6
            if kind == 0:
                body = {"instances": [r[:self.rng.randrange(self.F + 2)] for r in rows]}
            elif kind == 1:
                body = {"instances": [dict(zip(self.names, r, strict=True)) for r in rows]}
                self.rng.choice(body["instances"])[self.rng.choice(self.names)] = self.json_value()
            elif kind == 2:
                body = {"instances": [[[v] for v in r] for r in rows]}
            elif kind == 3:
                body = {"instances": [[0] * self.F] * self.rng.choice([35_000, 40_000])}  # past the element budget
            elif kind == 4:
                body = {"instances": self.json_value()}
            else:
                body = {"instances": rows + [self.json_value()]}
            self.post("body:v1", dumps(body), V1)

    def valid(self, n: int) -> None:
        for _ in range(n):
            body, route = self.valid_body()
            if route == V2 and self.rng.random() < 0.3:
                body["id"] = f"fuzz-{self.rng.randrange(10 ** 6)}"
            self.post("valid", dumps(body), route, valid=True)

    def oversized(self, n: int) -> None:
        for k in range(n):
            if k % 2:
                raw = b" " * (MAX_BODY + 1) + dumps(self.matrix())
            else:
                raw = dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32",
                                         "data": [0] * (MAX_BODY // 2)}]})
            self.post("body:oversized", raw)

    # -- headers ---------------------------------------------------------------------------------------------
    def big_headers(self, n: int) -> None:
        for k in range(n):
            if k % 2:
                size = self.rng.choice([1 << 10, 16 << 10, 31 << 10, 33 << 10, 256 << 10, 2 << 20])
                hdrs = [b"X-Big: " + b"h" * size]
            else:
                count = self.rng.choice([10, 99, 100, 101, 500, 5000])
                hdrs = [b"X-H%d: %d" % (i, i) for i in range(count)]
            self.add("headers:size", http("GET", "/v2/health/live", headers=hdrs), "GET")

    def content_length(self, n: int) -> None:
        body = dumps(self.matrix())
        values = [b"abc", b"-1", b"1.5", b" 5", b"0x10", b"", b"99999999999999999999", b"+5", b"5 5", b"1e3",
                  b"\xff", b"%d" % (len(body) - 10), b"%d" % (len(body) + 10), b"0"]
        for k in range(n):
            kind = k % 3
            if kind == 0:
                hdrs = [b"Content-Length: " + self.rng.choice(values)]
            elif kind == 1:
                hdrs = [b"Content-Length: %d" % len(body), b"Content-Length: %d" % self.rng.choice([len(body), 3])]
            else:
                hdrs = [b"Content-Length: %d" % len(body), b"Transfer-Encoding: chunked"]
            self.add("headers:content-length", http("POST", V2, body, hdrs, length=False))

    def chunked(self, n: int) -> None:
        for k in range(n):
            body = dumps(self.matrix())
            cut = self.rng.randrange(1, len(body))
            parts = [body[:cut], body[cut:]]
            kind = k % 12
            te = b"Transfer-Encoding: chunked"
            if kind == 0:  # valid
                chunks = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
            elif kind == 1:
                chunks = b"zz\r\n" + body + b"\r\n0\r\n\r\n"
            elif kind == 2:  # declares more than it sends: incomplete, 408
                chunks = b"%x\r\n%s\r\n" % (len(body) + 100, body)
            elif kind == 3:  # no last chunk: incomplete, 408
                chunks = b"%x\r\n%s\r\n" % (len(body), body)
            elif kind == 4:
                chunks = b"%x;ext=%s\r\n%s\r\n0\r\n\r\n" % (len(body), b"e" * self.rng.choice([10, 10_000, 100_000]),
                                                          body)
            elif kind == 5:
                chunks = b"%x\r\n%s\r\n0\r\nX-Trailer: %s\r\n\r\n" % (
                    len(body), body, b"t" * self.rng.choice([10, 100_000, 1 << 20]))
            elif kind == 6:
                chunks = b"".join(b"1\r\n%s\r\n" % body[i:i + 1] for i in range(len(body))) + b"0\r\n\r\n"
            elif kind == 7:
                chunks = b"-1\r\n" + body + b"\r\n0\r\n\r\n"
            elif kind == 8:
                chunks = b"%08x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            elif kind == 9:
                chunks = b"%x\n%s\n0\n\n" % (len(body), body)
            elif kind == 10:
                te = self.rng.choice([b"Transfer-Encoding: gzip, chunked", b"Transfer-Encoding: chunked, gzip",
                                      b"Transfer-Encoding: CHUNKED", b"Transfer-Encoding: identity",
                                      b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
                                      b"Transfer-Encoding:  chunked "])
                chunks = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            else:
                chunks = b"fffffffffffffffffffffff\r\n" + body
            self.add("headers:chunked", http("POST", V2, chunks, [te], length=False))

    def header_syntax(self, n: int) -> None:
        odd = [b"X Bad: 1", b"NoColon", b"X-Fold: a\r\n b", b"X-Nul: a\x00b", b"X-CR: a\rb", b": empty-name",
               b"X-Empty:", b"X-" + b"n" * 5000 + b": 1", b"X-Utf8: \xc3\xa9\xff", b"Host: a\r\nHost: b",
               b"Expect: 100-continue", b"Connection: upgrade\r\nUpgrade: websocket",
               b"Upgrade: h2c\r\nConnection: Upgrade",
               b"Content-Type: application/x-www-form-urlencoded", b"Content-Encoding: gzip", b"X-Tab:\ta\t",
               b"\x00: 1", b"X-Long-Name-" + b"z" * 40_000 + b": v"]
        for k in range(n):
            body = dumps(self.matrix()) if k % 2 else b""
            method = "POST" if body else "GET"
            raw = http(method, V2 if body else "/v2/health/ready", body, [self.rng.choice(odd)])
            if k % 5 == 4:
                raw = raw.replace(b"\r\n", b"\n")  # bare LF line endings
            self.add("headers:syntax", raw, method)

    def request_lines(self, n: int) -> None:
        methods = ["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "TRACE", "PATCH", "PROPFIND", "get", "G\x00T",
                   "CONNECT", "XYZZY", "PRI"]
        versions = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.1x", b"http/1.1", b"HTTP/1", b""]
        for k in range(n):
            method = self.rng.choice(methods)
            path = self.rng.choice(["/v2/health/live", V2, "/v2", "*", "kiln:80"])
            version = self.rng.choice(versions) if k % 2 else b"HTTP/1.1"
            body = dumps(self.matrix()) if method == "POST" else b""
            self.add("request-line", http(method, path, body, version=version), method.upper())

    # -- URLs --------------------------------------------------------------------------------------------------
    def urls(self, n: int) -> None:
        traversal = ["/../../etc/passwd", "/v2/models/../../../etc/passwd", "/v2/models/bc/../bc/infer",
                     "//v2//models//bc//infer", "/./v2/./models/bc/infer", "/v2/models/bc%2f..%2f..%2finfer",
                     "/..\\..\\windows\\win.ini", "/v2/models/bc/versions/../../infer", "/metrics/../v2",
                     "/v2/models/%2e%2e/%2e%2e/etc/passwd", "/v2/models/bc/versions/1/../../../infer",
                     "/v1/models/bc:predict/../../../etc", "/v1/models/..:predict"]
        forms = ["http://evil.example/v2/health/live", "https://x:1/v2", "*", "kiln:443", "", "?", "#frag",
                 "/v2/health/live?", "/v2/health/live#x", "/v2;params", "/v2/health/live?a=1&a=2&b",
                 "/v2/models/bc/infer?" + "q=" * 100]
        for k in range(n):
            kind = k % 6
            if kind == 0:
                size = self.rng.choice([1 << 10, 8000, 8 << 10, 9 << 10, 64 << 10, 1 << 20])
                path = "/v2/health/live?q=" + "a" * size
            elif kind == 1:
                path = "".join(c if self.rng.random() < 0.6 else f"%{ord(c):02X}" for c in V2)
                path += self.rng.choice(["", "%00", "%ff", "%zz", "%", "%%", "%2F", "%C3%A9", "%ED%A0%80"])
            elif kind == 2:
                path = self.rng.choice(["/v2/models/é/infer", "/v2/models/中文", "/v2/😀", "/v2/models/bc\x00/infer",
                                        "/v2/models/b c/infer", "/v2/\tmodels", "/v2/models/\u202ebc/infer"])
            elif kind == 3:
                path = self.rng.choice(traversal)
            elif kind == 4:
                path = self.rng.choice(forms)
            else:
                path = "/" + self.junk(self.rng.randint(1, 200))
            raw_path = path.encode("utf-8", "surrogatepass")
            if kind == 2 and self.rng.random() < 0.5:
                raw_path = raw_path.replace(b"/v2", b"/v2\xff\xc0\xaf", 1)  # invalid UTF-8 besides
            if self.rng.random() < 0.5:
                self.add("url", http("GET", raw_path), "GET")
            else:
                self.add("url", http("POST", raw_path, dumps(self.matrix())))

    def generate(self) -> list[Case]:
        self.valid(60)
        self.malformed_json(90)
        self.binary(36)
        self.shapes(80)
        self.datatypes(70)
        self.nesting(36)
        self.strings(40)
        self.nonfinite(60)
        self.numbers(40)
        self.structure(90)
        self.v1(54)
        self.oversized(6)
        self.big_headers(30)
        self.content_length(42)
        self.chunked(72)
        self.header_syntax(60)
        self.request_lines(56)
        self.urls(180)
        return self.cases


STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})[^\r\n]*\r\n")


def responses(data: bytes, method: str) -> list[tuple[int, bytes]]:
    """(status, body) of each response in data, in order (bodies by Content-Length; none for HEAD)."""
    out = []
    at = 0
    while at < len(data):
        m = STATUS.match(data, at)
        if m is None:
            break
        end = data.find(b"\r\n\r\n", m.end() - 2)
        if end < 0:
            break
        head = data[m.end():end].decode("latin-1").lower()
        length = next((int(line.split(":", 1)[1]) for line in head.split("\r\n")
                       if line.startswith("content-length:")), 0)
        if method == "HEAD":
            length = 0
        body = data[end + 4:end + 4 + length]
        out.append((int(m.group(1)), body))
        at = end + 4 + length
    return out


def check(case: Case, status: int | None, data: bytes, took: float) -> str | None:
    """A problem with this outcome, or None."""
    if took >= CLIENT_TIMEOUT * 0.95:
        return f"hung: no answer and not closed within {CLIENT_TIMEOUT:g} s"
    answers = responses(data, case.method)
    if not answers:
        return f"closed without an answer ({data[:80]!r})" if data else None
    for code, body in answers:
        if code >= 500:
            return f"{code}: {body[:200]!r}"
        if 400 <= code < 500 and case.method != "HEAD":
            try:
                ok = isinstance(json.loads(body).get("error"), str)
            except (ValueError, AttributeError):
                ok = False
            if not ok:
                return f"{code} without a JSON error: {body[:200]!r}"
    if case.valid and answers[0][0] != 200:
        return f"a valid request answered {answers[0][0]}: {answers[0][1][:200]!r}"
    return None


@pytest.fixture(scope="module")
def rf():
    return model_version("rf")


def test_fuzzed_bodies_headers_and_urls_get_no_5xx_no_hang_and_bounded_memory(rf, tmp_path):
    cases = Fuzzer(random.Random(SEED), rf["names"], rf["X"]).generate()
    assert len(cases) >= 1000
    assert len({c.raw for c in cases}) >= 950, "the fuzzer repeats itself"
    srv = Server(rf["dir"], "bc", "--request-timeout-s", str(REQUEST_TIMEOUT), "--keep-alive-timeout-s", "2",
                 log=tmp_path / "server.log").start()
    try:
        for _ in range(20):  # warm: the first requests allocate what every later one reuses
            assert infer(srv, v2_matrix(rf["X"][:5]))[0] == 200
        rss0 = proc_status(srv.proc.pid)["VmRSS"]
        t0 = time.monotonic()

        def run(i: int):
            case = cases[i]
            status, data, took = raw_exchange(srv.port, case.raw, timeout=CLIENT_TIMEOUT)
            return i, check(case, status, data, took), (responses(data, case.method) or [(None, b"")])[0][0], took

        failures = []
        codes: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        with ThreadPoolExecutor(THREADS) as pool:
            for i, problem, code, _ in pool.map(run, range(len(cases))):
                codes[cases[i].category][code] += 1
                if problem:
                    failures.append(f"#{i} {cases[i].category}: {problem}; sent {cases[i].raw[:160]!r}")
        took = time.monotonic() - t0
        st = proc_status(srv.proc.pid)
        print(f"\n{len(cases)} cases (seed {SEED}) in {took:.1f} s; VmRSS {rss0 / MiB:.0f} -> {st['VmRSS'] / MiB:.0f} "
              f"MiB (peak {st['VmHWM'] / MiB:.0f} MiB)")
        for category, counter in sorted(codes.items()):
            print(f"  {category:<24} {sum(counter.values()):4d}  {dict(sorted(counter.items(), key=str))}")
        assert not failures, f"{len(failures)} of {len(cases)} cases failed (seed {SEED}):\n" + "\n".join(failures[:40])
        assert st["VmRSS"] - rss0 <= 100 * MiB, f"VmRSS grew by {(st['VmRSS'] - rss0) / MiB:.0f} MiB"
        # Still up, ready, and predicting like the Pipeline.
        assert srv.proc.poll() is None
        assert srv.request("GET", "/v2/health/live") == (200, {"live": True})
        assert srv.request("GET", "/v2/health/ready") == (200, {"ready": True})
        X = rf["X"][:7]
        status, resp = infer(srv, v2_matrix(X, rid="after-fuzz"))
        assert status == 200 and resp["id"] == "after-fuzz", resp
        assert resp["outputs"][0]["data"] == rf["pipeline"].predict(X).tolist()
    finally:
        assert srv.stop() == 0
