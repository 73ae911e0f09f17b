"""Payload logging: request/response records written to S3 in compressed batches, off the request's path.

With --payload-log-uri (the operator sets it from a Kiln Deployment's spec.logging), a sampled share of the
successful inference requests, REST and gRPC alike, become records

    {"model", "version", "features": [input names], "time": ISO 8601 UTC, "id": request id,
     "protocol": "rest-v2"|"rest-v1"|"grpc", "latencyMs", "rows",
     "inputs": [[one value per feature, in `features` order], ...one per row],
     "outputs": {"label": [...], "probabilities": [[...]]}}

Rows, as KServe V1 `instances`, not one list per feature: the writer thread shares the server's CPU, and
a row-major array goes to JSON in one C call (see `encode`).

written as gzip JSON lines, one object per batch, at

    <uri>/v<version>/<YYYY>/<MM>/<DD>/<HH>/<YYYYMMDDTHHMMSS>-<host>-<pid>-<seq>.jsonl.gz

The request id is the V2 body's `id`, else the `x-request-id` header (gRPC: metadata), else a new one.

The request handler only appends the record's references (the decoded arrays, the answer) to a deque:
no serialisation, no I/O; one uncontended lock (REST and gRPC run on two threads). One daemon thread
per worker process turns records into JSON, compresses and uploads them every --payload-log-flush-s
seconds or --payload-log-batch records. Memory is bounded: at most --payload-log-queue records and
MAX_QUEUED_VALUES input values wait; past either, a record is dropped and counted
(kiln_payload_log_records_total{outcome="dropped"}), so a slow or stopped S3 costs records, never a
request's time. An upload that fails (after the client's short retries) is counted as `failed`.

Credentials: the logger's own S3 client uses KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY when
set (the operator gives serving pods a writable credential under those names only when logging is on; the
pod's AWS_* credentials stay read-only for artifacts), else the process's AWS_* credentials.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import threading
import time
from datetime import UTC, datetime

import numpy as np
import orjson

from kiln_contract import storage

try:  # ISA-L: the same gzip format, at its level 0 ~6x faster than zlib's level 1 (bench/README.md)
    from isal import igzip as _gzip

    GZIP_LEVEL = 0
except ImportError:  # pragma: no cover - isal is in the server extra; stdlib gzip otherwise
    import gzip as _gzip

    GZIP_LEVEL = 1

log = logging.getLogger("kiln_server.payload_log")

MAX_QUEUED_VALUES = 4 << 20  # input values held at most while waiting (≈ 32 MiB of float64)
WARN_EVERY_S = 60.0


def _client():
    import boto3
    from botocore.config import Config

    key = os.environ.get("KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID")
    secret = os.environ.get("KILN_PAYLOAD_LOG_AWS_SECRET_ACCESS_KEY")
    creds = {"aws_access_key_id": key, "aws_secret_access_key": secret} if key and secret else {}
    # Short timeouts and few retries: a slow store must not hold records (and memory) for minutes.
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2, "mode": "standard"},
                    connect_timeout=2, read_timeout=10)
    return boto3.session.Session().client("s3", config=config, **storage.s3_settings(), **creds)


def _values(v) -> list:
    """An array as a list: numbers as they are (orjson writes NaN as null), anything else as str."""
    v = np.asarray(v).reshape(-1)
    if v.dtype.kind in "biuf":
        return v.tolist()
    return [str(s) for s in v.tolist()]


class PayloadLog:
    def __init__(self, uri: str, model: str, version: str, names: list[str], metrics=None, *,
                 sample_rate: float = 1.0, queue_max: int = 10000, batch: int = 2000, flush_s: float = 5.0,
                 client_factory=_client):
        self.loc = storage.parse_s3(uri.rstrip("/") + "/")
        self.model, self.version = model, version
        self.names = names
        self.sample_rate = sample_rate
        self.queue_max = queue_max
        self.batch = batch
        self.flush_s = flush_s
        self.queue: collections.deque = collections.deque()
        # input values queued = added - removed; each counter has one writer (the loop; the writer thread)
        self.added = 0
        self.removed = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = False
        self.client_factory = client_factory
        self.client = None
        self.seq = 0
        self.host = socket.gethostname().split(".")[0][:63] or "host"
        self.pid = os.getpid()
        self.counts = {"written": 0, "dropped": 0, "failed": 0}
        self._last_warn = 0.0
        self._metric = None
        if metrics is not None:
            c = metrics.payload_records
            self._metric = {o: c.labels(model, version, o) for o in self.counts}
        self.thread = threading.Thread(target=self._run, name="kiln-payload-log", daemon=True)
        self.thread.start()

    @classmethod
    def from_config(cls, cfg, schema, metrics) -> PayloadLog:
        return cls(cfg.payload_log_uri, cfg.name, cfg.version, list(schema.names), metrics,
                   sample_rate=cfg.payload_log_sample_rate, queue_max=cfg.payload_log_queue,
                   batch=cfg.payload_log_batch, flush_s=cfg.payload_log_flush_s)

    # -- the request's side: O(1), no lock, no I/O --------------------------------------------------
    def offer(self, protocol: str, rid: str, x, n: int, label, probs, seconds: float) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        size = n * len(self.names)
        with self.lock:  # REST's loop and gRPC's thread both offer; uncontended, it costs ~0.1 µs
            if len(self.queue) >= self.queue_max or self.added - self.removed + size > MAX_QUEUED_VALUES or \
                    self.closed:
                self._count("dropped", 1)
                return
            self.added += size
            self.queue.append((time.time(), protocol, rid, x, n, label, probs, seconds, size))
        if len(self.queue) >= self.batch and not self.wake.is_set():
            self.wake.set()

    def _count(self, outcome: str, n: int) -> None:
        self.counts[outcome] += n
        if self._metric is not None:
            self._metric[outcome].inc(n)

    # -- the writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            self.wake.wait(self.flush_s)
            self.wake.clear()
            closing = self.closed
            while self.queue:
                self._write(self._take())
                if not closing and len(self.queue) < self.batch:
                    break  # wait for the next tick: a batch per tick keeps objects few and large
            if closing:
                return

    def _take(self) -> list:
        out = []
        q = self.queue
        while q and len(out) < self.batch:
            out.append(q.popleft())
        self.removed += sum(r[8] for r in out)
        return out

    def encode(self, records: list) -> bytes:
        """gzip JSON lines. This runs beside the event loop, on its CPU: at 100 % sampling every microsecond
        here is taken from serving (a 1-row request costs the server ~70 µs). So the arrays of a whole batch
        are concatenated and written by orjson in one call each, then cut at row boundaries (`_fast_lines`);
        per record only its few scalars are formatted. Models with categorical inputs (columns, not a matrix)
        take the per-record path."""
        head = b"{" + orjson.dumps({"model": self.model, "version": self.version, "features": self.names})[1:-1]
        fast = all(isinstance(r[3], np.ndarray) for r in records) and all(
            r[5].dtype == records[0][5].dtype for r in records) and all(
            (r[6] is None) == (records[0][6] is None) for r in records)
        lines = self._fast_lines(head, records) if fast else self._lines(head, records)
        return _gzip.compress(b"\n".join(lines) + b"\n", compresslevel=GZIP_LEVEL)

    @staticmethod
    def _stamps(records: list) -> list[bytes]:
        out = []
        second, prefix = None, b""
        for r in records:
            t = r[0]
            if int(t) != second:
                second = int(t)
                prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)).encode()
            out.append(b"%s.%06dZ" % (prefix, int(t % 1 * 1e6)))
        return out

    def _fast_lines(self, head: bytes, records: list) -> list[bytes]:
        opt = orjson.OPT_SERIALIZE_NUMPY
        x = np.concatenate([r[3] for r in records])
        rows_in = orjson.dumps(x if x.flags.c_contiguous else np.ascontiguousarray(x), option=opt)[2:-2].split(b"],[")
        labels = np.concatenate([r[5] for r in records])
        if labels.dtype.kind in "biuf":
            rows_label = orjson.dumps(labels, option=opt)[1:-1].split(b",")
        else:
            rows_label = [orjson.dumps(str(v)) for v in labels.tolist()]
        rows_proba = None
        if records[0][6] is not None:
            probs = np.ascontiguousarray(np.concatenate([r[6] for r in records]))
            rows_proba = orjson.dumps(probs, option=opt)[2:-2].split(b"],[")
        lines = []
        dumps = orjson.dumps
        o = 0
        for r, stamp in zip(records, self._stamps(records), strict=True):
            n = r[4]
            parts = [head, b',"time":"', stamp, b'","id":', dumps(r[2]), b',"protocol":"', r[1].encode(),
                     b'","latencyMs":', b"%.3f" % (r[7] * 1000), b',"rows":', b"%d" % n,
                     b',"inputs":[[', b"],[".join(rows_in[o:o + n]), b']],"outputs":{"label":[',
                     b",".join(rows_label[o:o + n]), b"]"]
            if rows_proba is not None:
                parts += [b',"probabilities":[[', b"],[".join(rows_proba[o:o + n]), b"]]"]
            parts.append(b"}}")
            lines.append(b"".join(parts))
            o += n
        return lines

    def _lines(self, head: bytes, records: list) -> list[bytes]:
        lines = []
        dumps, opt = orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
        for k, (r, stamp) in enumerate(zip(records, self._stamps(records), strict=True)):
            if k % 64 == 63:
                time.sleep(0)  # let the event loop have the GIL: a batch is encoded between requests, not instead
            _, protocol, rid, x, n, label, probs, seconds, _ = r
            if isinstance(x, np.ndarray):
                rows = x if x.flags.c_contiguous else np.ascontiguousarray(x)
            else:  # one array per feature (models with categorical features)
                rows = list(zip(*(_values(col) for col in x), strict=True))
            outputs = {"label": label if label.dtype.kind in "biuf" and label.flags.c_contiguous else _values(label)}
            if probs is not None:
                outputs["probabilities"] = probs if probs.flags.c_contiguous else np.ascontiguousarray(probs)
            body = dumps({"time": stamp.decode(), "id": rid, "protocol": protocol,
                          "latencyMs": round(seconds * 1000, 3), "rows": n, "inputs": rows, "outputs": outputs},
                         option=opt)
            lines.append(head + b"," + body[1:])
        return lines

    def key(self, t: float) -> str:
        self.seq += 1
        now = datetime.fromtimestamp(t, UTC)
        base = self.loc.key.rstrip("/")
        return (f"{base + '/' if base else ''}v{self.version}/{now:%Y/%m/%d/%H}/"
                f"{now:%Y%m%dT%H%M%S}-{self.host}-{self.pid}-{self.seq:06d}.jsonl.gz")

    def _write(self, records: list) -> None:
        if not records:
            return
        try:
            body = self.encode(records)
            if self.client is None:
                self.client = self.client_factory()
            self.client.put_object(Bucket=self.loc.bucket, Key=self.key(records[0][0]), Body=body,
                                   ContentType="application/x-ndjson", ContentEncoding="gzip")
        except Exception as exc:  # noqa: BLE001 - counted and logged; serving goes on
            self._count("failed", len(records))
            now = time.monotonic()
            if now - self._last_warn >= WARN_EVERY_S:
                self._last_warn = now
                log.warning("payload log: cannot write %d records to s3://%s/%s: %s", len(records),
                            self.loc.bucket, self.loc.key, exc)
            return
        self._count("written", len(records))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then stop the thread."""
        self.closed = True
        self.wake.set()
        self.thread.join(timeout)
