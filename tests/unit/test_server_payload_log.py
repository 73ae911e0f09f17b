"""kiln_server.payload_log with a stand-in S3 client: records encoded as Parquet (one row per input row),
batched per object; a client that hangs or fails never blocks offer(), and what cannot wait is dropped and
counted."""

from __future__ import annotations

import io
import json
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow.parquet as pq
import pytest

from kiln_server import payload_log
from kiln_server.payload_log import PayloadLog


class FakeS3:
    def __init__(self, hang: threading.Event | None = None, fail: bool = False):
        self.objects: dict[str, bytes] = {}
        self.hang = hang
        self.fail = fail

    hanging = False

    def put_object(self, Bucket, Key, Body, **kw):
        if self.hang is not None:
            self.hanging = True
            self.hang.wait(30)
        if self.fail:
            raise OSError("store down")
        assert kw["ContentType"] == "application/vnd.apache.parquet"
        self.objects[f"{Bucket}/{Key}"] = Body


def _log(client, names=("a", "b"), **kw) -> PayloadLog:
    return PayloadLog("s3://b/logs/dep", "m", "3", list(names), None, client_factory=lambda: client, **kw)


def _rows(s3: FakeS3) -> list[dict]:
    return [row for body in s3.objects.values() for row in pq.read_table(io.BytesIO(body)).to_pylist()]


def test_records_are_written_in_batches_and_read_back():
    s3 = FakeS3()
    plog = _log(s3, batch=3, flush_s=0.05, classes=["no", "yes"])
    for i in range(7):
        plog.offer("grpc", f"r{i}", np.array([[i, 0.5], [i, 1.5]], dtype=np.float32), 2,
                   np.array(["yes", "no"], dtype=object), np.array([[0.2, 0.8], [0.6, 0.4]]), 0.001)
    plog.close()
    assert all(k.startswith("b/logs/dep/v3/") and k.endswith(".parquet") for k in s3.objects)
    assert len(s3.objects) >= 3  # batches of at most 3 records
    body = next(iter(s3.objects.values()))
    meta = pq.read_schema(io.BytesIO(body)).metadata
    assert json.loads(meta[b"kiln.features"]) == ["a", "b"] and meta[b"kiln.version"] == b"3"
    rows = _rows(s3)
    assert len(rows) == 14
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    assert sorted(by_id) == [f"r{i}" for i in range(7)]
    first, second = sorted(by_id["r4"], key=lambda r: r["row"])
    assert (first["row"], second["row"]) == (0, 1)
    assert first["input:a"] == 4.0 and first["input:b"] == 0.5 and second["input:b"] == 1.5
    assert first["output:label"] == "yes" and second["output:label"] == "no"
    assert first["output:probability:yes"] == 0.8 and second["output:probability:no"] == 0.6
    assert first["model"] == "m" and first["version"] == "3" and first["protocol"] == "grpc"
    assert first["latency_ms"] == pytest.approx(1.0, abs=0.5) and first["time"].tzinfo is not None
    assert plog.counts == {"written": 7, "dropped": 0, "failed": 0}


def test_categorical_columns_keep_their_types_and_missing_values():
    s3 = FakeS3()
    plog = _log(s3, names=("size", "color"), flush_s=0.05)
    plog.offer("rest-v2", "cols", [np.array([1.0, np.nan, 3.0]), np.array(["x", None, float("nan")], dtype=object)],
               3, np.array([1, 0, 1]), None, 0.002)
    plog.close()
    rows = sorted(_rows(s3), key=lambda r: r["row"])
    table = pq.read_table(io.BytesIO(next(iter(s3.objects.values()))))
    assert str(table.schema.field("input:size").type) == "double"
    assert str(table.schema.field("input:color").type) == "string"
    # strings may be missing; numbers are never null (NaN is a value) and the bookkeeping columns always set
    assert [table.schema.field(c).nullable for c in ("input:color", "input:size", "output:label", "time", "id")] == [
        True, False, False, False, False]
    assert rows[0]["input:color"] == "x" and rows[1]["input:color"] is None and rows[2]["input:color"] is None
    assert rows[0]["input:size"] == 1.0 and np.isnan(rows[1]["input:size"])
    assert [r["output:label"] for r in rows] == [1, 0, 1]
    assert not any(k.startswith("output:probability") for k in rows[0])


def _offered(plog: PayloadLog, records: list) -> list:
    """The store's chunks after offering records (protocol, id, x, n, label, probs, seconds); the writer thread
    sleeps meanwhile (flush_s is long), so the chunks are taken here."""
    for protocol, rid, x, n, label, probs, seconds in records:
        plog.offer(protocol, rid, x, n, label, probs, seconds)
    return plog.store.take(1 << 30, 1 << 30)


def test_one_batch_encodes_what_one_record_at_a_time_encodes():
    """The chunk's row bookkeeping (which record a row belongs to, its index in it) against the plain case."""
    rng = np.random.default_rng(0)
    records = []
    for i, n in enumerate((1, 3, 1, 2)):
        x = rng.normal(size=(n, 2))
        records.append((("rest-v2", "grpc")[i % 2], f'id "{i}"', x, n, rng.integers(0, 3, n), rng.random((n, 3)),
                        0.0012345 * (i + 1)))
    plog = _log(FakeS3(), flush_s=3600)
    before = datetime.now(UTC)
    batch = pq.read_table(io.BytesIO(plog.encode(_offered(plog, records)))).to_pylist()
    after = datetime.now(UTC)
    one_by_one = []
    for r in records:
        one = _log(FakeS3(), flush_s=3600)
        one_by_one += pq.read_table(io.BytesIO(one.encode(_offered(one, [r])))).to_pylist()
        one.close()
    def same(rows):  # but for the times and latencies of the records, which the store measures
        return [{k: v for k, v in r.items() if k not in ("time", "latency_ms")} for r in rows]

    assert same(batch) == same(one_by_one)
    assert [r["row"] for r in batch] == [0, 0, 1, 2, 0, 0, 1]
    assert [r["protocol"] for r in batch] == ["rest-v2", "grpc", "grpc", "grpc", "rest-v2", "grpc", "grpc"]
    times = [r["time"] for r in batch]
    assert before - timedelta(milliseconds=1) <= times[0] and times == sorted(times) and times[-1] <= after
    assert times[1] == times[2] == times[3] and batch[0]["id"] == 'id "0"'  # one time per record
    assert batch[3]["input:b"] == records[1][2][2, 1] and batch[6]["output:label"] == records[3][4][1]
    assert batch[5]["output:probability:2"] == records[3][5][0, 2]
    assert [r["latency_ms"] for r in batch] == pytest.approx([1.2345, 2.469, 2.469, 2.469, 3.7035, 4.938, 4.938],
                                                             abs=0.5)
    assert sorted(k for k in batch[0] if k.startswith("output:probability:")) == [
        "output:probability:0", "output:probability:1", "output:probability:2"]  # no class names given
    plog.close()


def test_row_groups_of_one_object_share_one_schema(monkeypatch):
    """An object is written a chunk (row group) at a time; requests of FP64 and FP32 in one object still give one
    double column (the first record's type: later ones are converted), and the rows read back are the rows sent,
    in order."""
    monkeypatch.setattr(payload_log, "CHUNK_RECORDS_MAX", 2)
    plog = _log(FakeS3(), flush_s=3600)
    records = [("grpc", f"r{i}", np.full((2, 2), i + 0.5, dtype=np.float32 if i % 2 else np.float64), 2,
                np.array([i, i]), np.array([[0.5, 0.5], [0.25, 0.75]]), 0.001) for i in range(5)]
    chunks = _offered(plog, records)
    assert [c.records for c in chunks] == [2, 2, 1]
    body = plog.encode(chunks)
    meta = pq.read_metadata(io.BytesIO(body))
    assert meta.num_row_groups == 3 and meta.num_rows == 10
    table = pq.read_table(io.BytesIO(body))
    assert str(table.schema.field("input:a").type) == "double"
    assert table.column("input:a").to_pylist() == [i + 0.5 for i in range(5) for _ in range(2)]
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(5) for _ in range(2)]
    assert plog.counts["dropped"] == 0
    plog.close()


def test_a_record_that_cannot_be_converted_is_dropped_and_counted():
    """A float model's log refuses strings in its input matrix (and an int label column a float label) rather
    than write a column of another type; the request is not affected and nothing half-written stays."""
    plog = _log(FakeS3(), flush_s=3600)
    plog.offer("grpc", "ok", np.zeros((1, 2)), 1, np.array([1]), None, 0.0)
    plog.offer("grpc", "text", np.array([["a", "b"]]), 1, np.array([1]), None, 0.0)
    plog.offer("grpc", "float label", np.zeros((1, 2)), 1, np.array([0.5]), None, 0.0)
    plog.offer("grpc", "three columns", np.zeros((1, 3)), 1, np.array([1]), None, 0.0)
    assert plog.counts["dropped"] == 3
    (chunk,) = plog.store.take(100, 100)
    assert chunk.records == 1 and bytes(chunk.id_bytes)[:np.frombuffer(chunk.id_offsets, np.int32)[1]] == b"ok"
    plog.close()


def test_an_object_holds_at_most_batch_values(monkeypatch):
    monkeypatch.setattr(payload_log, "BATCH_VALUES", 40)
    s3 = FakeS3()
    plog = _log(s3, flush_s=0.05)
    for i in range(10):
        plog.offer("rest-v2", str(i), np.zeros((10, 2)), 10, np.zeros(10), None, 0.0)  # 20 values each
    plog.close()
    sizes = sorted(pq.read_metadata(io.BytesIO(b)).num_rows for b in s3.objects.values())
    assert sum(sizes) == 100 and max(sizes) <= 20 and len(sizes) >= 5



def _until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_a_full_chunk_is_encoded_at_once_and_the_object_uploaded_once_full(monkeypatch):
    """The writer takes each chunk as soon as it is full (its memory goes back to the requests while still in the
    CPU's cache) into the object being written, and uploads the object once it holds BATCH_VALUES, not before."""
    monkeypatch.setattr(payload_log, "CHUNK_VALUES", 40)  # 20 rows of 2 inputs: two 10-row records a chunk
    monkeypatch.setattr(payload_log, "BATCH_VALUES", 120)  # three chunks an object
    s3 = FakeS3()
    plog = _log(s3, flush_s=3600)

    def offer(i):
        plog.offer("rest-v2", f"r{i}", np.full((10, 2), float(i)), 10, np.zeros(10), None, 0.0)

    for i in range(3):  # the third record does not fit the first chunk: it is sealed, the writer woken
        offer(i)
    assert _until(lambda: plog.waiting == 1)  # the first chunk taken, only the record filling the second waits
    time.sleep(0.05)
    assert not s3.objects  # the object holds 40 of its 120 values
    for i in range(3, 7):
        offer(i)
    assert _until(lambda: s3.objects)
    (body,) = s3.objects.values()
    meta = pq.read_metadata(io.BytesIO(body))
    assert (meta.num_row_groups, meta.num_rows) == (3, 60)
    assert pq.read_table(io.BytesIO(body)).column("id").to_pylist() == [f"r{i}" for i in range(6) for _ in range(10)]
    plog.close()
    assert len(s3.objects) == 2 and plog.counts == {"written": 7, "dropped": 0, "failed": 0}


def test_an_object_is_uploaded_flush_s_after_its_first_record(monkeypatch):
    """A chunk encoded early does not hold its records back: the object goes flush_s after its first record even
    though it is far from full, with the records that wait meanwhile (the chunk being filled, sealed)."""
    monkeypatch.setattr(payload_log, "CHUNK_VALUES", 40)
    s3 = FakeS3()
    plog = _log(s3, flush_s=0.3)
    for i in range(3):
        plog.offer("rest-v2", f"r{i}", np.full((10, 2), float(i)), 10, np.zeros(10), None, 0.0)
    t0 = time.monotonic()
    assert _until(lambda: s3.objects, 5)
    assert time.monotonic() - t0 < 2
    (body,) = s3.objects.values()
    meta = pq.read_metadata(io.BytesIO(body))
    assert (meta.num_row_groups, meta.num_rows) == (2, 30)
    assert plog.counts["written"] == 3 and plog.waiting == 0
    plog.close()
    assert len(s3.objects) == 1

def test_a_hanging_store_drops_and_counts_never_blocks():
    hang = threading.Event()
    s3 = FakeS3(hang=hang)
    plog = _log(s3, batch=2, flush_s=0.01, queue_max=4)
    x = np.zeros((1, 2))
    for i in range(2):
        plog.offer("rest-v2", str(i), x, 1, np.array([1]), None, 0.0)
    while not s3.hanging:  # the writer is now stuck in an upload
        time.sleep(0.01)
    for i in range(2, 1000):
        plog.offer("rest-v2", str(i), x, 1, np.array([1]), None, 0.0)
    still_hanging = not hang.is_set() and not s3.objects  # every offer returned while the upload hung
    hang.set()
    plog.close()
    assert still_hanging
    assert plog.counts["dropped"] >= 1000 - 6 and plog.counts["written"] + plog.counts["dropped"] == 1000


@pytest.mark.parametrize("codec, parquet", [("snappy", "SNAPPY"), ("zstd", "ZSTD"), ("none", "UNCOMPRESSED")])
def test_objects_are_written_with_the_codec_asked_for(codec, parquet):
    s3 = FakeS3()
    plog = _log(s3, flush_s=0.05, compression=codec)
    plog.offer("grpc", "r", np.array([[1.0, 2.0]] * 50), 50, np.arange(50), None, 0.001)
    plog.close()
    body = next(iter(s3.objects.values()))
    meta = pq.read_metadata(io.BytesIO(body))
    rg = meta.row_group(0)
    assert {rg.column(i).compression for i in range(rg.num_columns)} == {parquet}
    assert pq.read_table(io.BytesIO(body)).column("input:b").to_pylist() == [2.0] * 50
    with pytest.raises(ValueError, match="gzip"):
        _log(FakeS3(), compression="gzip")


def test_failures_are_counted_and_sampling_applies():
    plog = _log(FakeS3(fail=True), batch=10, flush_s=0.01)
    for i in range(5):
        plog.offer("grpc", str(i), np.zeros((1, 2)), 1, np.array([1]), None, 0.0)
    plog.close()
    assert plog.counts == {"written": 0, "dropped": 0, "failed": 5}
    none = _log(FakeS3(), sample_rate=0.0)
    none.offer("grpc", "x", np.zeros((1, 2)), 1, np.array([1]), None, 0.0)
    assert none.waiting == 0
    none.close()


def test_steady_logging_reuses_its_chunks():
    """The writer gives written chunks back and the store fills them again: steady traffic does not make a request
    write into fresh memory (each new page a fault on the request's path)."""
    s3 = FakeS3()
    plog = _log(s3, names=[f"f{j}" for j in range(30)], flush_s=0.05)
    x, label, probs = np.ones((64, 30), dtype=np.float32), np.zeros(64, dtype=np.int64), np.ones((64, 2))
    for _ in range(20000):  # 1.28 M rows: 36 chunks' worth
        plog.offer("rest-v2", None, x, 64, label, probs, 0.001)
        while plog.waiting > 3000:  # as a server's writer keeps up (else records are dropped, counted)
            time.sleep(0.005)
    plog.close(30)
    assert plog.counts == {"written": 20000, "dropped": 0, "failed": 0}
    chunks = payload_log.MAX_QUEUED_VALUES // payload_log.CHUNK_VALUES  # the waiting bound, in chunks
    object_chunks = payload_log.BATCH_VALUES // payload_log.CHUNK_VALUES
    filled = 20000 * 64 * 30 // payload_log.CHUNK_VALUES
    # at most the waiting bound's chunks, an object's being written and the one filling: not one per chunk filled
    assert filled > 2 * (chunks + object_chunks + 1) and plog.store.allocated <= chunks + object_chunks + 1


def test_the_rate_file_changes_sampling_while_serving(tmp_path):
    """--payload-log-sample-rate-file: a new rate in the file (as the kubelet writes a ConfigMap: a new file behind a
    swapped symlink) applies from the next look; at 0 what waits is written at once, not flush_s later; a file that
    holds no rate keeps the rate as it was."""
    data = tmp_path / "..2026_12_01_a"
    data.mkdir()
    (data / "sampleRate").write_text("1.0\n")
    (tmp_path / "..data").symlink_to(data.name)
    path = tmp_path / "sampleRate"
    path.symlink_to("..data/sampleRate")

    def swap(text: str, tag: str) -> None:  # the kubelet's atomic update
        new = tmp_path / f"..2026_12_01_{tag}"
        new.mkdir()
        (new / "sampleRate").write_text(text)
        (tmp_path / "..data.tmp").symlink_to(new.name)
        (tmp_path / "..data.tmp").replace(tmp_path / "..data")

    s3 = FakeS3()
    plog = _log(s3, batch=1000, flush_s=60, sample_rate_file=str(path))
    x = np.zeros((1, 2))
    for i in range(10):
        plog.offer("grpc", f"a{i}", x, 1, np.array([1]), None, 0.0)
    assert plog.waiting == 10 and plog.sample_rate == 1.0
    swap("0", "b")
    plog.follow_rate()
    assert plog.sample_rate == 0.0
    assert _until(lambda: plog.counts["written"] == 10)  # not 60 s later
    for i in range(10):
        plog.offer("grpc", f"b{i}", x, 1, np.array([1]), None, 0.0)
    assert plog.waiting == 0
    swap("lots", "c")
    plog.follow_rate()  # not a rate: it stays 0
    assert plog.sample_rate == 0.0
    swap(" 0.5 ", "d")
    plog.follow_rate()
    assert plog.sample_rate == 0.5
    plog.follow_rate()  # unchanged: nothing read
    for i in range(2000):
        plog.offer("grpc", f"c{i}", x, 1, np.array([1]), None, 0.0)
    plog.close()
    assert 800 < plog.counts["written"] - 10 < 1200 and plog.counts["dropped"] == 0
    assert {r["id"][0] for r in _rows(s3)} == {"a", "c"}


@pytest.mark.parametrize("text", ["", "-0.1", "1.5", "nan", "inf", "0.5 0.5", "9" * 65])
def test_a_rate_file_that_holds_no_rate_is_refused_naming_it(tmp_path, text):
    from kiln_server import sample_rate_file

    path = tmp_path / "rate"
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        sample_rate_file.read(str(path))
    with pytest.raises(ValueError, match="sample_rate"):
        _log(FakeS3(), writer=False).store.sample_rate = float(text) if text in ("-0.1", "1.5", "nan") else 2.0
