"""Publishing a version (card last, local atomic writes, S3 retries) and the summary line's
termination-message file — without an S3 server (a fake client stands in)."""

from __future__ import annotations

import json
import stat

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from kiln_contract.storage import parse_s3
from kiln_trainer import publish, summary
from kiln_trainer.errors import BadInput


class Recorder:
    uri = "mem://"

    def __init__(self):
        self.names = []

    def put(self, source, name):
        self.names.append((name, source.read_bytes()))


def test_card_is_published_last_and_built_after_the_uploads(tmp_path):
    for name in ("model.onnx", "model.joblib", "report.html"):
        (tmp_path / name).write_bytes(name.encode())
    out = Recorder()
    seen = []

    def card(upload_seconds):
        seen.append([n for n, _ in out.names])
        return json.dumps({"upload": upload_seconds}).encode()

    publish.publish(out, tmp_path, ["model.onnx", "model.joblib", "report.html"], card)
    assert [n for n, _ in out.names] == ["model.onnx", "model.joblib", "report.html", "modelcard.json"]
    assert seen == [["model.onnx", "model.joblib", "report.html"]]  # the card knew every upload was done
    assert json.loads(out.names[-1][1])["upload"] >= 0


def test_local_output_replaces_atomically_with_readable_files(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc")
    out = publish.open_output(f"file://{tmp_path}/v1")
    out.put(src, "model.onnx")
    out.put(src, "model.onnx")  # replacing an earlier attempt's file
    target = tmp_path / "v1" / "model.onnx"
    assert target.read_bytes() == b"abc" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["model.onnx"]
    assert out.existing_card() is None


def test_bad_output_uris_are_bad_input():
    for uri in ("gs://bucket/x", "s3:///x"):
        with pytest.raises(BadInput) as err:
            publish.open_output(uri)
        assert err.value.field == "--output"


class FakeS3:
    def __init__(self, failures):
        self.failures = list(failures)
        self.uploads = []

    def upload_file(self, filename, bucket, key, ExtraArgs=None):
        if self.failures:
            raise self.failures.pop(0)
        self.uploads.append((bucket, key, ExtraArgs))

    def head_object(self, Bucket, Key):
        return {"ContentLength": 3}


def s3_output(client):
    out = publish.S3Output.__new__(publish.S3Output)
    out.loc = parse_s3("s3://bkt/models/iris/v2")
    out.uri = out.loc.uri
    out.client = client
    return out


def _client_error(code):
    return ClientError({"Error": {"Code": code, "Message": code}}, "PutObject")


def test_s3_transient_errors_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "BACKOFF_S", 0.0)
    src = tmp_path / "model.onnx"
    src.write_bytes(b"abc")
    client = FakeS3([_client_error("SlowDown"), EndpointConnectionError(endpoint_url="http://s3")])
    s3_output(client).put(src, "model.onnx")
    assert len(client.uploads) == 1
    bucket, key, extra = client.uploads[0]
    assert (bucket, key) == ("bkt", "models/iris/v2/model.onnx")
    assert extra["Metadata"]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_s3_permanent_errors_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(publish, "BACKOFF_S", 0.0)
    src = tmp_path / "model.onnx"
    src.write_bytes(b"abc")
    client = FakeS3([_client_error("AccessDenied"), _client_error("AccessDenied")])
    with pytest.raises(publish.PublishError, match="AccessDenied"):
        s3_output(client).put(src, "model.onnx")
    assert len(client.failures) == 1  # tried once
    client = FakeS3([_client_error("InternalError")] * publish.ATTEMPTS)
    with pytest.raises(publish.PublishError, match="InternalError"):
        s3_output(client).put(src, "model.onnx")


def test_termination_message_path(tmp_path, monkeypatch):
    explicit = tmp_path / "term"
    assert summary.termination_path({"KILN_TERMINATION_LOG": str(explicit)}) == explicit
    assert summary.termination_path({"KILN_TERMINATION_LOG": str(tmp_path / "no" / "dir" / "t")}) is None
    default = tmp_path / "termination-log"
    monkeypatch.setattr(summary, "DEFAULT_TERMINATION_LOG", str(default))
    assert summary.termination_path({}) is None  # not in a pod: leave /dev alone
    default.write_text("")
    assert summary.termination_path({}) == default


def test_summary_line_stays_small(tmp_path):
    line = summary.failed("Error", "x" * 5000)
    assert len(line["message"]) <= summary.MAX_MESSAGE
    big = {"status": "Succeeded", "bestParams": {f"p{i}": "v" * 50 for i in range(100)}}
    encoded = summary.encode(big)
    assert len(encoded) < 4096 and json.loads(encoded)["bestParams"] == {"truncated": True}
    out = []

    class Stream:
        def write(self, s):
            out.append(s)

        def flush(self):
            pass

    term = tmp_path / "t"
    summary.emit({"status": "Failed", "reason": "BadInput", "message": "m"}, Stream(),
                 {"KILN_TERMINATION_LOG": str(term)})
    assert out == ['{"message":"m","reason":"BadInput","status":"Failed"}\n']
    assert term.read_text() == out[0].strip()
