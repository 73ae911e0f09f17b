"""Payload logging: request/response records written to S3 as Parquet, in batches, off the request's path.

With --payload-log-uri (the operator sets it from a Kiln Deployment's spec.logging), a sampled share of the
successful inference requests, REST and gRPC alike, are recorded. Each object is one Parquet file (Snappy,
or the codec --payload-log-compression names; a row group per chunk of CHUNK_RECORDS records) with one row
per input row of a request — the table a data scientist wants back:

    time              timestamp[us, UTC]  when the answer was ready
    id                string              the request id (V2 body `id`, else `x-request-id` / gRPC metadata,
                                          else a new one); a request of n rows gives n rows with one id
    row               int32               the row's index within its request (0..n-1)
    protocol          string              rest-v2 | rest-v1 | grpc
    latency_ms        float64             the request's time in the server
    model, version    string
    input:<feature>   one column per input, under the user's column name (numbers, or strings for categories)
    output:label      the predicted label or value
    output:probability:<class>   classifiers only, one column per class

`pandas.read_parquet`, DuckDB, Spark and Athena read it as it is. The file's key/value metadata repeats
model, version and the feature order (`kiln.model`, `kiln.version`, `kiln.features`, JSON).

Objects are written at

    <uri>/v<version>/<YYYY>/<MM>/<DD>/<HH>/<YYYYMMDDTHHMMSS>-<host>-<pid>-<seq>.parquet

Why Parquet and not JSON lines: the writer shares the server's CPU, so at 100 % sampling its cost per record
is taken from serving. Formatting every float as text cost ~30 ns a value (a 64-row request of 30 features:
~60 µs, a fifth of the request); columns of a whole batch go to Parquet as contiguous arrays (a few ns a
value, bench/README.md "gRPC and payload logging").

The request handler only appends the record's references (the decoded arrays, the answer) to a deque:
no serialisation, no I/O; one uncontended lock (REST and gRPC run on two threads). One daemon thread
per worker process encodes and uploads every --payload-log-flush-s seconds, or sooner once
--payload-log-batch records or BATCH_VALUES input values wait. Memory is bounded: at most
--payload-log-queue records and MAX_QUEUED_VALUES input values wait; past either, a record is dropped and
counted (kiln_payload_log_records_total{outcome="dropped"}), so a slow or stopped S3 costs records, never a
request's time. An upload that fails (after the client's short retries) is counted as `failed`.

Credentials: the logger's own S3 client uses KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY when
set (the operator gives serving pods a writable credential under those names only when logging is on; the
pod's AWS_* credentials stay read-only for artifacts), else the process's AWS_* credentials.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import random
import socket
import threading
import time
from datetime import UTC, datetime

import numpy as np

from kiln_contract import storage
from kiln_server.config import PAYLOAD_LOG_CODECS

log = logging.getLogger("kiln_server.payload_log")

# Each object costs the writer ~3 ms however small it is (Parquet's per-file work, the PUT): objects of
# millions of values keep that below 2 µs a 64-row request (bench/README.md "gRPC and payload logging").
BATCH_VALUES = 2 << 20  # an object is written once this many input values wait (16 MiB of float64)
CHUNK_RECORDS = 1000  # records per row group
CHUNK_VALUES = 1 << 19  # input values per row group (4 MiB of float64)
MAX_QUEUED_VALUES = 6 << 20  # input values held at most while waiting (48 MiB of float64); more are dropped
WARN_EVERY_S = 60.0
CONTENT_TYPE = "application/vnd.apache.parquet"


def _client():
    import boto3
    from botocore.config import Config

    key = os.environ.get("KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID")
    secret = os.environ.get("KILN_PAYLOAD_LOG_AWS_SECRET_ACCESS_KEY")
    creds = {"aws_access_key_id": key, "aws_secret_access_key": secret} if key and secret else {}
    # Short timeouts and few retries: a slow store must not hold records (and memory) for minutes. No body
    # checksum unless the store demands one, and no SHA-256 of the body in the signature (botocore signs
    # the body over plain HTTP unless told not to): over a 16 MB object they cost the serving CPU ~12 ms
    # (a third of the writer's time). The request itself stays signed (credentials, key, length); the
    # body's integrity on the wire is TCP's, or TLS's where the store is https.
    config = Config(s3={"addressing_style": "path", "payload_signing_enabled": False},
                    retries={"max_attempts": 2, "mode": "standard"},
                    connect_timeout=2, read_timeout=10, request_checksum_calculation="when_required")
    return boto3.session.Session().client("s3", config=config, **storage.s3_settings(), **creds)


class PayloadLog:
    def __init__(self, uri: str, model: str, version: str, names: list[str], metrics=None, *,
                 classes: list | None = None, sample_rate: float = 1.0, queue_max: int = 20000,
                 batch: int = 10000, flush_s: float = 5.0, compression: str = "snappy", client_factory=_client):
        # pyarrow only where logging is on: importing it costs a server start ~0.2 s
        import pyarrow
        import pyarrow.parquet

        self.pa, self.pq = pyarrow, pyarrow.parquet
        self.loc = storage.parse_s3(uri.rstrip("/") + "/")
        self.model, self.version = model, version
        self.names = names
        self.classes = [str(c) for c in classes] if classes else None
        self.sample_rate = sample_rate
        self.queue_max = queue_max
        self.batch = batch
        self.flush_s = flush_s
        # Snappy by default: where values do not repeat it costs little more than none; where they do it costs the
        # writer 2-3x the rest of encoding for about half the size (bench/bench_payload_encode.py).
        if compression not in PAYLOAD_LOG_CODECS:
            raise ValueError(f"payload-log compression {compression!r} is not one of {', '.join(PAYLOAD_LOG_CODECS)}")
        self.compression = compression
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
        self._file_meta = {"kiln.model": model, "kiln.version": version, "kiln.features": json.dumps(names)}
        self.thread = threading.Thread(target=self._run, name="kiln-payload-log", daemon=True)
        self.thread.start()

    @classmethod
    def from_config(cls, cfg, schema, metrics) -> PayloadLog:
        return cls(cfg.payload_log_uri, cfg.name, cfg.version, list(schema.names), metrics,
                   classes=schema.classes if schema.is_classifier else None,
                   sample_rate=cfg.payload_log_sample_rate, queue_max=cfg.payload_log_queue,
                   batch=cfg.payload_log_batch, flush_s=cfg.payload_log_flush_s,
                   compression=cfg.payload_log_compression)

    # -- the request's side: O(1), no I/O ---------------------------------------------------------------
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
        if (len(self.queue) >= self.batch or self.added - self.removed >= BATCH_VALUES) and not self.wake.is_set():
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
                if not closing and len(self.queue) < self.batch and self.added - self.removed < BATCH_VALUES:
                    break  # wait for the next tick: a batch per tick keeps objects few and large
            if closing:
                return

    def _take(self) -> list:
        out = []
        q = self.queue
        values = 0
        while q and len(out) < self.batch and values < BATCH_VALUES:
            r = q.popleft()
            values += r[8]
            out.append(r)
        self.removed += values
        return out

    def encode(self, records: list) -> bytes:
        """One Parquet file of the records, one row per input row, a row group per chunk of records.

        Per record only its scalars are touched in Python (one transposition of a chunk by zip); inputs and
        outputs of a chunk are concatenated by numpy and handed to Arrow as contiguous columns. Chunks keep
        each C call short — the writer holds the GIL through it, and a request waits for the GIL — and a
        chunk's transposition within the cache."""
        sink = io.BytesIO()
        writer = None
        dtype = _batch_dtype([r[3] for r in records])
        start = 0
        while start < len(records):
            end, values = start, 0
            while end < len(records) and end - start < CHUNK_RECORDS and values < CHUNK_VALUES:
                values += records[end][8]
                end += 1
            table = self._table(records[start:end], dtype)
            if writer is None:
                # Statistics on time only: the one column a reader filters by; the rest would be CPU for nothing.
                dictionary = ["id", "protocol", "model", "version"] + [
                    f.name for f in table.schema if f.name.startswith("input:") and self.pa.types.is_string(f.type)]
                writer = self.pq.ParquetWriter(sink, table.schema, compression=self.compression,
                                               use_dictionary=dictionary, write_statistics=["time"], store_schema=True)
            elif table.schema != writer.schema:
                table = table.cast(writer.schema)  # e.g. an int label column where an earlier chunk had float
            writer.write_table(table)
            start = end
        if writer is not None:
            writer.close()
        return sink.getvalue()

    def _table(self, records: list, dtype):
        pa = self.pa
        times, protocols, ids, xs, ns, labels, probs, seconds, _ = zip(*records, strict=True)
        counts = np.fromiter(ns, dtype=np.int64, count=len(ns))
        total = int(counts.sum())
        owner = np.repeat(np.arange(len(records), dtype=np.int32), counts)  # row → its record
        starts = np.cumsum(counts) - counts
        fields, arrays = [], []

        def add(name, array, nullable=False):
            fields.append(pa.field(name, array.type, nullable=nullable))
            arrays.append(array)

        stamp = (np.fromiter(times, dtype=np.float64, count=len(times)) * 1e6).astype(np.int64)
        add("time", pa.array(stamp[owner], pa.timestamp("us", tz="UTC")))
        add("id", pa.DictionaryArray.from_arrays(owner, pa.array(ids, pa.string())))
        add("row", pa.array((np.arange(total, dtype=np.int64) - np.repeat(starts, counts)).astype(np.int32)))
        kinds = sorted(set(protocols))
        kind_index = {k: i for i, k in enumerate(kinds)}
        per_record = np.fromiter(map(kind_index.__getitem__, protocols), dtype=np.int32, count=len(protocols))
        add("protocol", pa.DictionaryArray.from_arrays(per_record[owner], pa.array(kinds, pa.string())))
        add("latency_ms", pa.array(np.fromiter(seconds, dtype=np.float64, count=len(seconds))[owner] * 1000))
        zeros = np.zeros(total, dtype=np.int32)
        add("model", pa.DictionaryArray.from_arrays(zeros, pa.array([self.model], pa.string())))
        add("version", pa.DictionaryArray.from_arrays(zeros, pa.array([self.version], pa.string())))
        # Nullability by type alone, so every chunk of a file has one schema: NaN is a number, not a null.
        for name, column in zip(self.names, self._input_columns(xs, total, dtype), strict=True):
            add("input:" + name, _arrow(pa, column), nullable=not _numeric(column))
        label = np.concatenate(labels)
        add("output:label", _arrow(pa, label), nullable=not _numeric(label))
        if type(None) not in set(map(type, probs)):
            columns = np.ascontiguousarray(np.concatenate(probs, axis=0).T)
            classes = self.classes if self.classes and len(self.classes) == len(columns) else \
                [str(k) for k in range(len(columns))]
            for cls, col in zip(classes, columns, strict=True):
                add("output:probability:" + cls, pa.array(col))
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=self._file_meta))

    def _input_columns(self, xs, total: int, dtype) -> list:
        """The batch's inputs as one array per feature. A matrix batch (all-numeric models) is transposed
        request by request (each small enough for the cache) — a transposition of the concatenation would
        stride through megabytes per column."""
        if dtype is not None:
            out = np.empty((len(self.names), total), dtype=dtype)  # C order
            return list(np.concatenate([x.T for x in xs], axis=1, out=out))
        return [np.concatenate([x[:, j] if isinstance(x, np.ndarray) else np.asarray(x[j]) for x in xs])
                for j in range(len(self.names))]

    def key(self, t: float) -> str:
        self.seq += 1
        now = datetime.fromtimestamp(t, UTC)
        base = self.loc.key.rstrip("/")
        return (f"{base + '/' if base else ''}v{self.version}/{now:%Y/%m/%d/%H}/"
                f"{now:%Y%m%dT%H%M%S}-{self.host}-{self.pid}-{self.seq:06d}.parquet")

    def _write(self, records: list) -> None:
        if not records:
            return
        try:
            body = self.encode(records)
            if self.client is None:
                self.client = self.client_factory()
            self.client.put_object(Bucket=self.loc.bucket, Key=self.key(records[0][0]), Body=body,
                                   ContentType=CONTENT_TYPE)
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


def _dtype(x: np.ndarray) -> np.dtype:
    return x.dtype


def _batch_dtype(xs: list):
    """The one dtype of a batch's input matrices (all-numeric models; float32 and float64 requests mix), or
    None when inputs come as one array per feature (models with categorical inputs)."""
    if set(map(type, xs)) != {np.ndarray}:
        return None
    return np.result_type(*set(map(_dtype, xs)))


def _numeric(column: np.ndarray) -> bool:
    return column.dtype.kind in "biuf"


def _arrow(pa, column: np.ndarray):
    """A numeric column as it is (NaN stays NaN); anything else as strings, None as null."""
    if _numeric(column):
        return pa.array(np.ascontiguousarray(column))
    return pa.array([v if isinstance(v, str) else None if v is None or v != v else str(v)  # NaN: missing
                     for v in column.tolist()], pa.string())
