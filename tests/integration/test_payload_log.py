"""Payload logging against a real server process and the local cluster's S3 (SeaweedFS): the records read
back from the objects match the requests sent (REST V2, KServe V1 and gRPC; ids from the body, an HTTP header
or gRPC metadata), by request id; with S3 not answering, every request is still served and the records that
cannot wait are dropped and counted."""

from __future__ import annotations

import io
import re
import socket
import threading
import time

import grpc_client_tool
import numpy as np
import pyarrow.parquet as pq
import pytest
from server_support import Server, free_port, infer, model_version

pytestmark = pytest.mark.integration


def _metric(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _read_back(env: dict, bucket: str, prefix: str, codecs: set | None = None) -> dict[str, list[dict]]:
    """The rows of every object under the prefix, grouped by request id, in row order; `codecs` collects the
    objects' Parquet codecs."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=env["KILN_S3_ENDPOINT"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"])
    by_id: dict[str, list[dict]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            assert obj["Key"].endswith(".parquet") and "/v1/" in obj["Key"], obj["Key"]
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            if codecs is not None:
                meta = pq.read_metadata(io.BytesIO(body))
                codecs.update(meta.row_group(g).column(c).compression for g in range(meta.num_row_groups)
                              for c in range(meta.num_columns))
            for row in pq.read_table(io.BytesIO(body)).to_pylist():
                by_id.setdefault(row["id"], []).append(row)
    return {rid: sorted(rows, key=lambda r: r["row"]) for rid, rows in by_id.items()}


def test_records_match_the_requests_sent(s3_env, s3_prefix):
    m = model_version("categorical")
    bucket = s3_env["KILN_BUCKET"]
    prefix = s3_prefix.split("/", 3)[3]
    grpc_port = free_port()
    # The pod's own credentials read only; the logger writes with its own (as the operator sets them up).
    env = {"KILN_S3_ENDPOINT": s3_env["KILN_S3_ENDPOINT"], "AWS_REGION": s3_env["AWS_REGION"],
           "AWS_ACCESS_KEY_ID": s3_env["KILN_S3_READER_ACCESS_KEY_ID"],
           "AWS_SECRET_ACCESS_KEY": s3_env["KILN_S3_READER_SECRET_ACCESS_KEY"],
           "KILN_PAYLOAD_LOG_AWS_ACCESS_KEY_ID": s3_env["AWS_ACCESS_KEY_ID"],
           "KILN_PAYLOAD_LOG_AWS_SECRET_ACCESS_KEY": s3_env["AWS_SECRET_ACCESS_KEY"]}
    srv = Server(str(m["dir"]), "bc", "--grpc-port", str(grpc_port), "--payload-log-uri",
                 f"s3://{bucket}/{prefix}", "--payload-log-flush-s", "0.5", "--payload-log-batch", "7",
                 env=env | {"KILN_PAYLOAD_LOG_COMPRESSION": "zstd"}).start()
    X = m["X"]
    sent: dict[str, dict] = {}
    try:
        for i in range(20):
            rows = X.iloc[i:i + 2]
            inputs = [{"name": "size", "datatype": "FP64", "shape": [2], "data": rows["size"].tolist()},
                      {"name": "color", "datatype": "BYTES", "shape": [2], "data": rows["color"].tolist()},
                      {"name": "weight", "datatype": "FP64", "shape": [2], "data": rows["weight"].tolist()}]
            rid = f"rest-{i}"
            status, body = infer(srv, {"id": rid, "inputs": inputs})
            assert status == 200
            sent[rid] = {"rows": rows, "label": body["outputs"][0]["data"], "protocol": "rest-v2"}
        row = X.iloc[30]
        status, body = srv.request("POST", "/v1/models/bc:predict",
                                   {"instances": [{"size": row["size"], "color": row["color"],
                                                   "weight": row["weight"]}]},
                                   headers={"x-request-id": "v1-header-id"})
        assert status == 200
        sent["v1-header-id"] = {"rows": X.iloc[30:31], "label": body["predictions"], "protocol": "rest-v1"}
        rows = X.iloc[35:36]  # no id in the body or a header: the log names it <process prefix>-<n>
        status, body = infer(srv, {"inputs": [
            {"name": "size", "datatype": "FP64", "shape": [1], "data": rows["size"].tolist()},
            {"name": "color", "datatype": "BYTES", "shape": [1], "data": rows["color"].tolist()},
            {"name": "weight", "datatype": "FP64", "shape": [1], "data": rows["weight"].tolist()}]})
        assert status == 200
        unnamed = {"rows": rows, "label": body["outputs"][0]["data"], "protocol": "rest-v2"}
        calls = []
        for i in range(5):
            rows = X.iloc[40 + i:41 + i]
            calls.append({"op": "infer", "id": f"grpc-{i}", "inputs": [
                {"name": "size", "datatype": "FP64", "shape": [1], "data": rows["size"].tolist()},
                {"name": "color", "datatype": "BYTES", "shape": [1], "data": rows["color"].tolist()},
                {"name": "weight", "datatype": "FP64", "shape": [1], "data": rows["weight"].tolist()}]})
        rows = X.iloc[45:46]  # no id in the message: the x-request-id of the call's gRPC metadata names it
        calls.append({"op": "infer", "headers": {"x-request-id": "grpc-metadata-id"}, "inputs": [
            {"name": "size", "datatype": "FP64", "shape": [1], "data": rows["size"].tolist()},
            {"name": "color", "datatype": "BYTES", "shape": [1], "data": rows["color"].tolist()},
            {"name": "weight", "datatype": "FP64", "shape": [1], "data": rows["weight"].tolist()}]})
        results = grpc_client_tool.drive(f"127.0.0.1:{grpc_port}", "bc", {"calls": calls})["results"]
        for i, r in enumerate(results):
            assert r["ok"], r
            rid = f"grpc-{i}" if i < 5 else "grpc-metadata-id"
            sent[rid] = {"rows": X.iloc[40 + i:41 + i], "label": r["outputs"]["label"]["data"], "protocol": "grpc"}
        status, _ = infer(srv, {"id": "refused", "inputs": [{"name": "x", "datatype": "FP64", "shape": [1],
                                                             "data": [1.0]}]})
        assert status == 422  # refused requests are not recorded
    finally:
        assert srv.stop() == 0  # the shutdown writes what is queued
    codecs: set = set()
    by_id = _read_back(s3_env, bucket, prefix, codecs)
    named = [rid for rid in by_id if re.fullmatch(r"[0-9a-f]{12}-[0-9]+", rid)]
    assert len(named) == 1, sorted(by_id)
    sent[named[0]] = unnamed
    assert sorted(by_id) == sorted(sent)
    assert codecs == {"ZSTD"}  # the codec spec.logging.compression asks for, through the operator's env name
    for rid, want in sent.items():
        rows = by_id[rid]
        assert [r["row"] for r in rows] == list(range(len(want["rows"])))
        for r in rows:
            assert r["model"] == "bc" and r["version"] == "1" and r["protocol"] == want["protocol"]
            assert r["latency_ms"] >= 0 and r["time"].tzinfo is not None
            assert {"output:probability:big", "output:probability:small"} <= set(r), sorted(r)
        assert [r["input:color"] for r in rows] == want["rows"]["color"].tolist()
        np.testing.assert_allclose([r["input:size"] for r in rows], want["rows"]["size"].to_numpy())
        np.testing.assert_allclose([r["input:weight"] for r in rows], want["rows"]["weight"].to_numpy())
        assert [r["output:label"] for r in rows] == want["label"]


class _BlackHole:
    """A TCP endpoint that accepts connections and never answers: an S3 that hangs."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for c in self.held:
            c.close()


def test_a_hanging_store_never_blocks_requests():
    m = model_version("rf")
    hole = _BlackHole()
    srv = Server(str(m["dir"]), "bc", "--payload-log-uri", "s3://kiln/payload-logs/hang", "--payload-log-queue", "5",
                 "--payload-log-batch", "5", "--payload-log-flush-s", "0.2",
                 env={"KILN_S3_ENDPOINT": f"http://127.0.0.1:{hole.port}", "AWS_ACCESS_KEY_ID": "x",
                      "AWS_SECRET_ACCESS_KEY": "y"}).start()
    try:
        rows = np.asarray(m["X"][:1], dtype=np.float32)
        n = 200
        for i in range(n):
            status, _ = infer(srv, {"id": str(i), "inputs": [{"name": "input", "datatype": "FP32",
                                                              "shape": list(rows.shape), "data": rows.tolist()}]})
            assert status == 200
        # at most one batch in the hung upload and one queue's worth waiting; the rest were dropped, counted (the
        # store counts them; the metric takes the count every second)
        deadline = time.monotonic() + 5
        while True:
            _, text = srv.request("GET", "/metrics")
            dropped = _metric(text, "kiln_payload_log_records_total", outcome="dropped")
            written = _metric(text, "kiln_payload_log_records_total", outcome="written")
            if dropped >= n - 10 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert written == 0 and dropped >= n - 10, text[-2000:]
    finally:
        srv.stop()
        hole.close()
