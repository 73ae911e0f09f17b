"""Payload logging: request/response records written to S3 as Parquet, in batches, off the request's path.

With --payload-log-uri (the operator sets it from a Kiln Deployment's spec.logging), a sampled share of the
successful inference requests, REST and gRPC alike, are recorded. Each object is one Parquet file (Snappy,
or the codec --payload-log-compression names; a row group per chunk of at most CHUNK_VALUES input values)
with one row per input row of a request — the table a data scientist wants back:

    time              timestamp[us, UTC]  when the answer was ready
    id                string              the request id (V2 body `id`, else `x-request-id` / gRPC metadata,
                                          else <a prefix per process>-<n>), at most 256 bytes of UTF-8; a
                                          request of n rows gives n rows with one id
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

The request handler makes one call, PayloadLog.record (kiln_server._payload_chunks, in C: why, in its
comment and docs/design-decisions.md): sampling, the clocks, the id and a copy of the record's numbers into a
chunk; no I/O, and nothing of the request kept. One daemon thread per worker process encodes each chunk (a row
group) into the object being written as soon as the chunk is full, and uploads the object once it holds
--payload-log-batch records or BATCH_VALUES input values, or --payload-log-flush-s seconds after its first record
(at low traffic, whatever waits is written every --payload-log-flush-s seconds). Memory is bounded: at most
--payload-log-queue records and MAX_QUEUED_VALUES input values wait; past either, a record is dropped and
counted (kiln_payload_log_records_total{outcome="dropped"}, synced from the store every second by the server's
loop), so a slow or stopped S3 costs records, never a request's time. An upload that fails (after the client's
short retries) is counted as `failed`.

The sample rate (--payload-log-sample-rate, or the file --payload-log-sample-rate-file names, followed while
serving: kiln_server.sample_rate_file) is read by the store once per record; kiln_payload_log_sample_rate says
which rate the process has. When it goes to 0, what waits is written at once.

Credentials: the logger's own S3 client uses KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID / _SECRET_ACCESS_KEY when
set (the operator gives serving pods a writable credential under those names only when logging is on; the
pod's AWS_* credentials stay read-only for artifacts), else the process's AWS_* credentials.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import numpy as np

from kiln_contract import storage
from kiln_server import sample_rate_file as sample_rate_file_
from kiln_server.config import PAYLOAD_LOG_BATCH, PAYLOAD_LOG_CODECS, PAYLOAD_LOG_QUEUE

log = logging.getLogger("kiln_server.payload_log")

# Each object costs the writer ~3 ms however small it is (Parquet's per-file work, the PUT), and every object
# the writer works through beside the serving loop costs that loop more: objects of 4 M values took the logging
# cost of a 64-row REST request from ~22 to ~14 us against objects of 2 M (bench/README.md, "Session 7").
BATCH_VALUES = 4 << 20  # an object is written once this many input values wait (32 MiB of float64)
CHUNK_RECORDS_MAX = 1 << 16  # records per chunk (a row group) at most; --payload-log-batch when smaller
CHUNK_VALUES = 2 << 20  # input values per chunk (16 MiB of float64), a row group: the writer's per-chunk work (a
# table, a row group) costs ~0.5 ms alone and ~1 ms beside the serving loop; in the server, chunks of 2 M values
# cost a 64-row request ~1.3 us less of the writer's time than 1 M, 512 K ~2 us more (bench/README.md, "Session 10")
WRITE_BATCH_ROWS = 1 << 18  # Parquet's write batch: a chunk's rows or more, for models of 8 features or more
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


# a record's scalars in a chunk (the C struct Record)
RECORD = np.dtype([("time", "<f8"), ("seconds", "<f8"), ("seq", "<i8"), ("nrows", "<i4"), ("protocol", "u1"),
                   ("has_id", "u1"), ("pad", "V2")])
PROTOCOLS = ("rest-v2", "rest-v1", "grpc")  # a record's protocol, stored as its index here


def _chunks():
    """The record store (C): without it a record costs the request several per cent at 100 % sampling."""
    try:
        from kiln_server import _payload_chunks
    except ImportError as exc:
        raise RuntimeError("payload logging needs kiln_server._payload_chunks, the compiled part of the server: "
                           "install Kiln with a C compiler present (pip install -e . builds it; the server "
                           f"image does) ({exc})") from None
    return _payload_chunks


class PayloadLog:
    def __init__(self, uri: str, model: str, version: str, names: list[str], metrics=None, *,
                 classes: list | None = None, sample_rate: float = 1.0, queue_max: int = PAYLOAD_LOG_QUEUE,
                 batch: int = PAYLOAD_LOG_BATCH, flush_s: float = 5.0, compression: str = "snappy",
                 client_factory=_client, writer: bool = True, sample_rate_file: str = ""):
        # pyarrow only where logging is on: importing it costs a server start ~0.2 s
        import pyarrow
        import pyarrow.parquet

        self.native = _chunks()
        self.pa, self.pq = pyarrow, pyarrow.parquet
        self.loc = storage.parse_s3(uri.rstrip("/") + "/")
        self.model, self.version = model, version
        self.names = names
        self.classes = [str(c) for c in classes] if classes else None
        self.batch = batch
        # rows an object (and a wake-up) holds at most: BATCH_VALUES input values
        self.batch_rows = max(1, BATCH_VALUES // max(1, len(names)))
        self.flush_s = flush_s
        # Snappy by default: where values do not repeat it costs little more than none; where they do it costs the
        # writer 2-3x the rest of encoding for about half the size (bench/bench_payload_encode.py).
        if compression not in PAYLOAD_LOG_CODECS:
            raise ValueError(f"payload-log compression {compression!r} is not one of {', '.join(PAYLOAD_LOG_CODECS)}")
        self.compression = compression
        self.wake = threading.Event()
        features = max(1, len(names))
        chunk_rows = max(1, min(CHUNK_VALUES, BATCH_VALUES) // features)  # an object holds whole chunks
        # The record store (C). The first record sets its layout (the model's dtypes); a later one that differs is
        # converted (refit) or dropped. Sampling, ids, times and the drop count all happen in its offer().
        self.chunk_rows, self.chunk_records = chunk_rows, max(1, min(batch, CHUNK_RECORDS_MAX))
        # The writer is woken once a chunk is full (more waits than one chunk holds, so one is sealed) and encodes
        # it at once into the object being written (_run: why).
        self.store = self.native.Store(
            chunk_rows=chunk_rows, chunk_records=self.chunk_records,
            max_chunks=max(1, MAX_QUEUED_VALUES // (chunk_rows * features)), max_records=queue_max,
            wake_records=self.chunk_records + 1, wake_rows=chunk_rows + 1, sample_rate=sample_rate,
            wake=self.wake.set, seed=random.getrandbits(64), pool=-(-BATCH_VALUES // (chunk_rows * features)) + 1)
        # pool: empty chunks kept for reuse (the writer gives each back once encoded), an object's worth and one
        # more. Fewer, and requests fault in fresh pages of memory (~1 us a page here). Memory then holds at most
        # MAX_QUEUED_VALUES waiting, the object being written (encoded), and the pool's empty chunks.
        # What a request's handler calls, once per answered request (kiln_server.app, kiln_server.grpc_server):
        #   record(protocol, id, headers, x, n, label, probs, t0) -> 0, or FIT: then refit(...) with the same
        # protocol: an index of PROTOCOLS; id: the body's or None; headers: ASGI headers or gRPC metadata (an
        # x-request-id there names the record when the body did not); t0: time.perf_counter() at the start.
        self.record = self.store.offer
        self.id_prefix = uuid.uuid4().hex[:12]  # a record without an id is named <prefix>-<seq>
        self._scratch: list = []  # the writer's column buffers, reused chunk after chunk (Chunk.columns)
        self.closed = False
        self.client_factory = client_factory
        self.client = None
        self.seq = 0
        self.host = socket.gethostname().split(".")[0][:63] or "host"
        self.pid = os.getpid()
        self._counts = {"written": 0, "dropped": 0, "failed": 0}
        self._refit_dropped = 0
        self._reported_dropped = 0
        self._last_warn = 0.0
        self._metric = self._rate_metric = None
        if metrics is not None:
            c = metrics.payload_records
            self._metric = {o: c.labels(model, version, o) for o in self._counts}
            self._rate_metric = metrics.payload_sample_rate
            self._rate_metric.set(sample_rate)
        self._flush_now = False  # the writer writes what waits at once (the rate went to 0)
        self.rate_file = sample_rate_file_.RateFile(sample_rate_file) if sample_rate_file else None
        if self.rate_file is not None:
            self.follow_rate()  # the file was read at start (config); this records what it was
        self._file_meta = {"kiln.model": model, "kiln.version": version, "kiln.features": json.dumps(names)}
        self._timestamp = pyarrow.timestamp("us", tz="UTC")
        self._model_dictionary = pyarrow.array([model], pyarrow.string())
        self._version_dictionary = pyarrow.array([version], pyarrow.string())
        self._zeros = np.zeros(0, dtype=np.int32)
        self._schema_key, self._schema_cached = None, None
        # writer=False: no writer thread; the caller takes the store's chunks and encodes them (bench, tests)
        self.thread = threading.Thread(target=self._run, name="kiln-payload-log", daemon=True) if writer else None
        if self.thread is not None:
            self.thread.start()

    @classmethod
    def from_config(cls, cfg, schema, metrics) -> PayloadLog:
        return cls(cfg.payload_log_uri, cfg.name, cfg.version, list(schema.names), metrics,
                   classes=schema.classes if schema.is_classifier else None,
                   sample_rate=cfg.payload_log_sample_rate, queue_max=cfg.payload_log_queue,
                   batch=cfg.payload_log_batch, flush_s=cfg.payload_log_flush_s,
                   compression=cfg.payload_log_compression, sample_rate_file=cfg.payload_log_sample_rate_file)

    # -- the sample rate ----------------------------------------------------------------------------------
    @property
    def sample_rate(self) -> float:
        return self.store.sample_rate

    @sample_rate.setter
    def sample_rate(self, rate: float) -> None:
        """A new share of requests recorded, from the next record on. At 0 what waits is written at once: nothing
        more will come to fill it."""
        self.store.sample_rate = rate
        if self._rate_metric is not None:
            self._rate_metric.set(rate)
        if rate == 0.0:
            self._flush_now = True
            self.wake.set()

    def follow_rate(self) -> None:
        """The rate file's new rate, if it changed (the server's loop calls this every second). A file that holds no
        rate keeps the rate as it was, and says so in the log."""
        if self.rate_file is None:
            return
        try:
            rate = self.rate_file.changed()
        except (OSError, ValueError) as exc:
            self._warn(f"payload log: the sample rate stays {self.sample_rate}: {exc}")
            return
        if rate is not None and rate != self.sample_rate:
            log.info("payload log: sample rate %s -> %s (%s)", self.sample_rate, rate, self.rate_file.path)
            self.sample_rate = rate

    # -- the request's side -------------------------------------------------------------------------------
    def offer(self, protocol: str, rid: str | None, x, n: int, label, probs, seconds: float, headers=None) -> None:
        """record() for callers that hold a protocol's name and the request's time (tests, tools)."""
        code = PROTOCOLS.index(protocol)
        t0 = time.perf_counter() - seconds
        if self.record(code, rid, headers, x, n, label, probs, t0):
            self.refit(code, rid, headers, x, n, label, probs, t0)

    def refit(self, protocol: int, rid, headers, x, n: int, label, probs, t0: float) -> None:
        """A record whose arrays differ from the layout (another dtype, not contiguous): converted when numpy can do
        that within the kind (float64 into a float32 model's columns), else dropped and counted."""
        layout, x_parts = self.store.layout, self.store.x_parts
        try:
            if isinstance(x, list | tuple):
                if len(x) != x_parts:
                    raise ValueError(f"x has {len(x)} columns, the log {x_parts}")
                x = [_fit(c, part) for c, part in zip(x, layout, strict=False)]
            else:
                x = _fit(x, layout[0])
            label = _fit(label, layout[x_parts])
            if probs is not None and len(layout) > x_parts + 1:
                probs = _fit(probs, layout[x_parts + 1])
            if not self.record(protocol, rid, headers, x, n, label, probs, t0):
                return
            reason = "its arrays do not fit the log's columns"
        except (TypeError, ValueError) as exc:
            reason = str(exc)
        self._refit_dropped += 1
        self._warn(f"payload log: a record was dropped: {reason} (the first record set them: {layout})")

    @property
    def counts(self) -> dict:
        """Records written, dropped (the store's bound, or not fitting) and failed (the upload), so far."""
        self.sync_dropped()
        return dict(self._counts)

    def sync_dropped(self) -> None:
        """The store's count of dropped records into counts and the metric. The server's loop calls it every second
        (kiln_server.app), and close() once more: one caller at a time."""
        total = self.store.dropped + self._refit_dropped
        if total != self._reported_dropped:
            self._count("dropped", total - self._reported_dropped)
            self._reported_dropped = total

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warn >= WARN_EVERY_S:
            self._last_warn = now
            log.warning("%s", message)

    @property
    def waiting(self) -> int:
        """Records offered and not yet taken by the writer."""
        return self.store.waiting[0]

    def _count(self, outcome: str, n: int) -> None:
        self._counts[outcome] += n
        if self._metric is not None:
            self._metric[outcome].inc(n)

    # -- the writer thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        """Each chunk is encoded (a row group) into the object being written as soon as it is full, while what the
        requests wrote into it is still in the CPU's cache, and given back for the requests to fill again; the
        object is uploaded once it holds `batch` records or BATCH_VALUES input values, `flush_s` after its first
        record, or at close. Waiting for a whole object's chunks before encoding them read them back from memory
        and kept more of them: the writer's work beside the serving loop cost the loop more."""
        store, obj = self.store, None
        while True:
            woken = self.wake.wait(self.flush_s if obj is None else max(0.0, obj.due - time.monotonic()))
            self.wake.clear()
            closing, flush_now, self._flush_now = self.closed, self._flush_now, False
            # on time (flush_s with nothing or an object due), at close, or when sampling stopped: everything
            # waiting, the chunk being filled too; else full chunks only
            flush = closing or flush_now or not woken or (obj is not None and time.monotonic() >= obj.due)
            while True:
                records, rows, _ = store.waiting
                if not records or not flush and records <= self.chunk_records and rows <= self.chunk_rows:
                    break
                chunks = store.take(self.chunk_records, self.chunk_rows, flush)
                if not chunks:
                    break  # the full chunk is not sealed yet: the next record seals it and wakes the writer
                for chunk in chunks:
                    obj = self._add(obj, chunk)
                    store.recycle(chunk)
                    if obj is not None and (obj.records >= self.batch or obj.rows >= self.batch_rows):
                        self._put(obj)
                        obj = None
            if obj is not None and flush:
                self._put(obj)
                obj = None
            if closing:
                return

    def encode(self, chunks: list) -> bytes:
        """One Parquet file of the chunks, one row per input row, a row group per chunk (what the writer thread
        makes of them, a chunk at a time)."""
        obj = None
        for chunk in chunks:
            obj = self._encode(obj, chunk)
        return obj.finish() if obj is not None else b""

    def _encode(self, obj: _Object | None, chunk) -> _Object | None:
        """The chunk as the next row group of obj (a new object when None). Chunk.columns gives each part's values
        column by column, as Arrow takes them, and the records' scalars are arrays: per record nothing is touched
        in Python."""
        if not chunk.records:
            return obj
        table = self._table(chunk)
        if obj is None:
            first = float(np.frombuffer(chunk.scalars, RECORD, 1)["time"][0])  # a copy: no view stays
            obj = _Object(self, table.schema, first)
        elif table.schema != obj.writer.schema:
            table = table.cast(obj.writer.schema)  # e.g. an int label column where an earlier chunk had float
        obj.writer.write_table(table)
        obj.records += chunk.records
        obj.rows += chunk.rows
        return obj

    def _add(self, obj: _Object | None, chunk) -> _Object | None:
        """_encode, counting the object's records (and this chunk's) as failed when it cannot be encoded."""
        try:
            return self._encode(obj, chunk)
        except Exception as exc:  # noqa: BLE001 - counted and logged; serving goes on
            lost = chunk.records + (obj.records if obj is not None else 0)
            self._count("failed", lost)
            self._warn(f"payload log: cannot encode {lost} records: {type(exc).__name__}: {exc}")
            return None

    def _table(self, chunk):
        pa = self.pa
        records, total = chunk.records, chunk.rows
        scalars = np.frombuffer(chunk.scalars, RECORD, records)
        counts = scalars["nrows"]
        # A record's scalars repeated over its rows: np.repeat, not indexing by owner (numpy's fancy indexing costs
        # the writer several times more), and dictionary indices unchecked (safe=False): they are made here.
        owner = np.repeat(np.arange(records, dtype=np.int32), counts)  # row -> its record
        starts = (np.cumsum(counts) - counts).astype(np.int32)
        names, arrays = [], []

        def add(name, array):
            names.append(name)
            arrays.append(array)

        dictionary = pa.DictionaryArray.from_arrays
        add("time", pa.array(np.repeat((scalars["time"] * 1e6).astype(np.int64), counts), self._timestamp))
        add("id", dictionary(owner, self._ids(chunk, scalars), safe=False))
        add("row", pa.array(np.arange(total, dtype=np.int32) - np.repeat(starts, counts)))
        protocol = scalars["protocol"].astype(np.int32)
        kinds = sorted(set(protocol.tolist()))
        index = np.zeros(len(PROTOCOLS), dtype=np.int32)
        index[kinds] = np.arange(len(kinds), dtype=np.int32)
        add("protocol", dictionary(np.repeat(index[protocol], counts),
                                   pa.array([PROTOCOLS[k] for k in kinds], pa.string()), safe=False))
        add("latency_ms", pa.array(np.repeat(scalars["seconds"] * 1000, counts)))
        del scalars  # a view of the chunk: the store refills a chunk only when none is left
        if len(self._zeros) < total:
            self._zeros = np.zeros(total, dtype=np.int32)
        zeros = self._zeros[:total]  # never written: every chunk's model and version indices
        add("model", dictionary(zeros, self._model_dictionary, safe=False))
        add("version", dictionary(zeros, self._version_dictionary, safe=False))
        layout, x_parts = self.store.layout, self.store.x_parts
        parts = [_columns(data, part, total) for data, part in zip(chunk.columns(self._scratch), layout, strict=True)]
        inputs = [column for part in parts[:x_parts] for column in part]
        rest = parts[x_parts:]
        for name, column in zip(self.names, inputs, strict=True):
            add("input:" + name, _arrow(pa, column))
        add("output:label", _arrow(pa, rest[0][0]))
        if len(rest) > 1:
            columns = rest[1]
            classes = self.classes if self.classes and len(self.classes) == len(columns) else \
                [str(k) for k in range(len(columns))]
            for cls, col in zip(classes, columns, strict=True):
                add("output:probability:" + cls, pa.array(col))
        return pa.Table.from_arrays(arrays, schema=self._schema(names, arrays))

    def _schema(self, names: list, arrays: list):
        """The table's schema, made once for a layout: chunk after chunk, the columns' names and types repeat."""
        key = (tuple(names), tuple(a.type for a in arrays))
        if key != self._schema_key:
            pa = self.pa
            # Nullability by type alone, so every chunk of a file has one schema: NaN is a number, not a null;
            # strings (categories, string labels) may be missing. The bookkeeping columns never are.
            fields = [pa.field(name, a.type, nullable=name.startswith(("input:", "output:label")) and
                               pa.types.is_string(a.type))
                      for name, a in zip(names, arrays, strict=True)]
            self._schema_key, self._schema_cached = key, pa.schema(fields, metadata=self._file_meta)
        return self._schema_cached

    def _ids(self, chunk, scalars):
        """The records' ids: the store's UTF-8 as Arrow strings, and <prefix>-<seq> for a record that had none."""
        pa, records = self.pa, len(scalars)
        offsets = np.frombuffer(chunk.id_offsets, np.int32, records + 1).copy()
        data = bytes(memoryview(chunk.id_bytes)[:int(offsets[-1])])
        ids = pa.StringArray.from_buffers(records, pa.py_buffer(offsets), pa.py_buffer(data))
        missing = scalars["has_id"] == 0
        if not missing.any():
            return ids
        import pyarrow.compute as pc

        named = pc.binary_join_element_wise(self.id_prefix, pc.cast(pa.array(scalars["seq"]), pa.string()), "-")
        return pc.if_else(pa.array(missing), named, ids)

    def key(self, t: float) -> str:
        self.seq += 1
        now = datetime.fromtimestamp(t, UTC)
        base = self.loc.key.rstrip("/")
        return (f"{base + '/' if base else ''}v{self.version}/{now:%Y/%m/%d/%H}/"
                f"{now:%Y%m%dT%H%M%S}-{self.host}-{self.pid}-{self.seq:06d}.parquet")

    def _put(self, obj: _Object) -> None:
        try:
            body = obj.finish()
            if self.client is None:
                self.client = self.client_factory()
            self.client.put_object(Bucket=self.loc.bucket, Key=self.key(obj.first), Body=body,
                                   ContentType=CONTENT_TYPE)
        except Exception as exc:  # noqa: BLE001 - counted and logged; serving goes on
            self._count("failed", obj.records)
            self._warn(f"payload log: cannot write {obj.records} records to s3://{self.loc.bucket}/{self.loc.key}: "
                       f"{exc}")
            return
        self._count("written", obj.records)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued (within `timeout`), then stop the thread."""
        self.closed = True
        self.store.close()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout)
        self.sync_dropped()


class _Object:
    """One Parquet object being written, a row group at a time (PayloadLog._run)."""

    def __init__(self, plog: PayloadLog, schema, first: float):
        # Statistics on time only: the one column a reader filters by; the rest would be CPU for nothing. A column
        # chunk in one write batch (Parquet's default is 1024 values): the same file, and the writer's per-batch
        # work once per column, not 17 times (-0.5 us a 64-row request, 1/7 of writing).
        dictionary = ["id", "protocol", "model", "version"] + [
            f.name for f in schema if f.name.startswith("input:") and plog.pa.types.is_string(f.type)]
        self.sink = io.BytesIO()
        self.writer = plog.pq.ParquetWriter(self.sink, schema, compression=plog.compression,
                                            use_dictionary=dictionary, write_statistics=["time"], store_schema=True,
                                            write_batch_size=WRITE_BATCH_ROWS)
        self.first = first  # the time of its first record: the object's key
        self.due = time.monotonic() + plog.flush_s - max(0.0, time.time() - first)  # flush_s after that record
        self.records = self.rows = 0

    def finish(self) -> bytes:
        self.writer.close()
        return self.sink.getvalue()


def _dtype(part) -> np.dtype:
    kind, _, itemsize, _ = part
    return np.dtype(f"{kind}{itemsize}") if kind != "b" else np.dtype(np.bool_)


def _columns(data, part, total: int) -> list:
    """A part of a chunk as columns: from Chunk.columns' bytearray (width columns of `total` values), or the kept
    arrays joined."""
    kind, width, _, _ = part
    if kind != "O":
        return list(np.frombuffer(data, _dtype(part), width * total).reshape(width, total))  # data may be longer
    joined = np.concatenate([np.asarray(a) for a in data]) if data else np.empty(0, dtype=object)
    return [joined] if joined.ndim == 1 else list(joined.T)


def _fit(a, part):
    """a as the part's dtype and C order, when numpy can cast it within the kind; else TypeError."""
    if part[0] == "O":
        return a
    return np.ascontiguousarray(np.asarray(a).astype(_dtype(part), casting="same_kind", copy=False))


def _numeric(column: np.ndarray) -> bool:
    return column.dtype.kind in "biuf"


def _arrow(pa, column: np.ndarray):
    """A numeric column as it is (NaN stays NaN); anything else as strings, None as null."""
    if _numeric(column):
        return pa.array(np.ascontiguousarray(column))
    return pa.array([v if isinstance(v, str) else None if v is None or v != v else str(v)  # NaN: missing
                     for v in column.tolist()], pa.string())
