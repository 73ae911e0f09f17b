"""Clients for the gateway on the local cluster (the kiln-gateway process): predictions and a bounded load.

Used by the demo, the integration tests and the benchmarks alike. The gateway checks every request's bearer token
as in production; these clients send the token of the ServiceAccount default/kiln-tester, which may predict in every
namespace (kiln_local.cluster.tester_token), unless given another.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from kiln_local.cluster import GATEWAY, tester_token

HOST, PORT = GATEWAY.rsplit(":", 1)


def auth_headers(token: str | None = None) -> dict[str, str]:
    """The Authorization header for token: None is the kiln-tester's token, "" sends none (an anonymous client)."""
    token = tester_token() if token is None else token
    return {"Authorization": f"Bearer {token}"} if token else {}


def infer(ns: str, dep: str, model: str, rows: list[list[float]], timeout: float = 120,
          gateway: tuple[str, int] | None = None, token: str | None = None) -> tuple[int, dict]:
    """POST rows to a model through a gateway (the local cluster's unless given) over the V2 protocol, with token
    (see auth_headers)."""
    host, port = gateway or (HOST, int(PORT))
    headers = {"Content-Type": "application/json", **auth_headers(token)}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": rows}]})
    conn.request("POST", f"/{ns}/{dep}/v2/models/{model}/infer", body, headers)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    try:
        return resp.status, json.loads(data)
    except ValueError:
        return resp.status, {"raw": data.decode(errors="replace")}


@dataclass
class Load:
    """`workers` clients sending one row at a time, each pausing `pause` s, until stopped (or `limit` s)."""

    ns: str
    dep: str
    model: str
    row: list[float]
    workers: int = 2
    pause: float = 0.02
    limit: float = 300
    token: str | None = None  # as infer's: None is the kiln-tester's
    ok: int = 0
    failures: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                status, body = infer(self.ns, self.dep, self.model, [self.row], timeout=30, token=self.token)
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                status, body = 0, {"error": repr(exc)}
            with self._lock:
                self.latencies.append(time.perf_counter() - t0)
                if status == 200:
                    self.ok += 1
                    v = body.get("model_version")
                    self.versions[v] = self.versions.get(v, 0) + 1
                else:
                    self.failures.append((status, body))
            if self.pause:
                time.sleep(self.pause)

    def set_workers(self, n: int) -> None:
        """Change the number of concurrent clients while running (a load step)."""
        while len(self._threads) < n:
            t = threading.Thread(target=self._run, daemon=True)
            self._threads.append(t)
            t.start()

    def __enter__(self) -> Load:
        if self.token is None:
            self.token = tester_token()  # before the clock starts: no worker pays for minting it
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
