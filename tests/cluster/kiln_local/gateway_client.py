"""Clients for the gateway on the local cluster (the kiln-gateway process): predictions and a bounded load.

Used by the demo, the integration tests and the benchmarks alike.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field

from kiln_local.cluster import GATEWAY

HOST, PORT = GATEWAY.rsplit(":", 1)


def infer(ns: str, dep: str, model: str, rows: list[list[float]], timeout: float = 120,
          gateway: tuple[str, int] | None = None) -> tuple[int, dict]:
    """POST rows to a model through a gateway (the local cluster's unless given) over the V2 protocol."""
    host, port = gateway or (HOST, int(PORT))
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    body = json.dumps({"inputs": [{"name": "input", "shape": [len(rows), len(rows[0])], "datatype": "FP32",
                                   "data": rows}]})
    conn.request("POST", f"/{ns}/{dep}/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
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
                status, body = infer(self.ns, self.dep, self.model, [self.row], timeout=30)
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
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
