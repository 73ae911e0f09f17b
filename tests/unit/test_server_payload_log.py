"""kiln_server.payload_log with a stand-in S3 client: records encoded as gzip JSON lines, batched per object;
a client that hangs or fails never blocks offer(), and what cannot wait is dropped and counted."""

from __future__ import annotations

import gzip
import json
import threading
import time

import numpy as np

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
        self.objects[f"{Bucket}/{Key}"] = Body


def _log(client, **kw) -> PayloadLog:
    return PayloadLog("s3://b/logs/dep", "m", "3", ["a", "b"], None, client_factory=lambda: client, **kw)


def test_records_are_written_in_batches_and_read_back():
    s3 = FakeS3()
    plog = _log(s3, batch=3, flush_s=0.05)
    for i in range(7):
        plog.offer("grpc", f"r{i}", np.array([[i, 0.5]], dtype=np.float32), 1, np.array(["yes"], dtype=object),
                   np.array([[0.2, 0.8]]), 0.001)
    plog.offer("rest-v2", "cols", [np.array([1.0, np.nan]), np.array(["x", "y"], dtype=object)], 2,
               np.array([1, 0]), None, 0.002)
    plog.close()
    assert all(k.startswith("b/logs/dep/v3/") and k.endswith(".jsonl.gz") for k in s3.objects)
    assert len(s3.objects) >= 3
    records = [json.loads(line) for body in s3.objects.values() for line in gzip.decompress(body).splitlines()]
    by_id = {r["id"]: r for r in records}
    assert sorted(by_id) == sorted([f"r{i}" for i in range(7)] + ["cols"])
    assert by_id["r4"]["features"] == ["a", "b"] and by_id["r4"]["model"] == "m" and by_id["r4"]["version"] == "3"
    assert by_id["r4"]["inputs"] == [[4.0, 0.5]] and by_id["r4"]["outputs"]["label"] == ["yes"]
    assert by_id["r4"]["outputs"]["probabilities"] == [[0.2, 0.8]] and by_id["r4"]["protocol"] == "grpc"
    assert by_id["cols"]["inputs"] == [[1.0, "x"], [None, "y"]] and by_id["cols"]["rows"] == 2
    assert by_id["cols"]["outputs"]["label"] == [1, 0] and "probabilities" not in by_id["cols"]["outputs"]
    assert plog.counts == {"written": 8, "dropped": 0, "failed": 0}


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


def test_failures_are_counted_and_sampling_applies():
    plog = _log(FakeS3(fail=True), batch=10, flush_s=0.01)
    for i in range(5):
        plog.offer("grpc", str(i), np.zeros((1, 2)), 1, np.array([1]), None, 0.0)
    plog.close()
    assert plog.counts == {"written": 0, "dropped": 0, "failed": 5}
    none = _log(FakeS3(), sample_rate=0.0)
    none.offer("grpc", "x", np.zeros((1, 2)), 1, np.array([1]), None, 0.0)
    assert len(none.queue) == 0
    none.close()


def test_the_batch_path_writes_what_the_per_record_path_writes():
    plog = _log(FakeS3())
    rng = np.random.default_rng(0)
    records = []
    for i, n in enumerate((1, 3, 1, 2)):
        x = rng.normal(size=(n, 2)).astype(np.float32)
        x[0, 1] = np.nan if i == 2 else x[0, 1]
        records.append((1764490000.25 + i, "rest-v2", f'id "{i}"', x, n, rng.integers(0, 3, n),
                        rng.random((n, 3)), 0.0012345, 2 * n))
    head = b'{"model":"m","version":"3","features":["a","b"]'
    fast = [json.loads(line) for line in plog._fast_lines(head, records)]
    slow = [json.loads(line) for line in plog._lines(head, records)]
    assert fast == slow
    assert fast[2]["inputs"][0][1] is None and fast[1]["rows"] == 3 and len(fast[1]["outputs"]["probabilities"]) == 3
    assert fast[0]["time"] == "2025-11-30T08:06:40.250000Z" and fast[0]["id"] == 'id "0"'
    plog.close()
