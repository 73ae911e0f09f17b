"""Starting safely (checksums, unsafe formats, s3://) and stopping gracefully (SIGTERM, workers)."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_support import Server, model_version, v2_matrix

from kiln_contract import MODEL_CARD
from kiln_contract import card as cards
from kiln_contract.checksums import sha256_file

pytestmark = pytest.mark.integration


def _copy(info, tmp_path, name="v3"):
    target = tmp_path / name
    shutil.copytree(info["dir"], target)
    return target


def _onnx_sha(info) -> str:
    return next(a["sha256"] for a in info["card"]["artifacts"] if a["format"] == "onnx")


# --- refusing to start --------------------------------------------------------------------------


def test_tampered_artifact_is_refused_before_loading(tmp_path):
    model = _copy(model_version("rf"), tmp_path)
    with open(model / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    code, err = Server(model, "bc").run_to_exit()
    assert code != 0
    assert "sha256 mismatch" in err and "model.onnx" in err and "model card" in err


def test_expected_sha256_pin_must_match(tmp_path):
    info = model_version("rf")
    code, err = Server(info["dir"], "bc", "--expected-sha256", "ab" * 32).run_to_exit()
    assert code != 0 and "sha256 mismatch" in err and "ab" * 32 in err and "--expected-sha256" in err
    srv = Server(info["dir"], "bc", env={"KILN_EXPECTED_SHA256": _onnx_sha(info)}).start()
    assert srv.stop() == 0


def test_joblib_is_refused_without_opt_in():
    info = model_version("rf", ("joblib",))
    code, err = Server(info["dir"], "bc").run_to_exit()
    assert code != 0
    assert "refusing to load model.joblib" in err and "--allow-unsafe-formats" in err
    code, err = Server(info["dir"], "bc", "--runtime", "sklearn", env={"KILN_ALLOW_UNSAFE_FORMATS": "false"}
                       ).run_to_exit()
    assert code != 0 and "refusing" in err


def test_tampered_joblib_is_refused_even_with_opt_in(tmp_path):
    model = _copy(model_version("rf", ("joblib",)), tmp_path)
    (model / "model.joblib").write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that runs code
    code, err = Server(model, "bc", "--allow-unsafe-formats").run_to_exit()
    assert code != 0 and "sha256 mismatch" in err and "pwned" not in err


@pytest.mark.parametrize("workers", ["1", "2"])
def test_artifact_that_cannot_load_stops_startup(tmp_path, workers):
    """Checksums that match but bytes that are no ONNX model: a clear error and a non-zero exit."""
    model = _copy(model_version("rf", ("onnx",)), tmp_path)
    junk = b"this is not an ONNX graph"
    (model / "model.onnx").write_bytes(junk)
    card = cards.loads((model / MODEL_CARD).read_bytes())
    card["artifacts"][0].update(sha256=sha256_file(model / "model.onnx"), bytes=len(junk))
    (model / MODEL_CARD).write_bytes(cards.dumps(card))
    code, err = Server(model, "bc", "--workers", workers).run_to_exit()
    assert code != 0 and "ONNX Runtime cannot load the model" in err


def test_uncommitted_version_and_missing_runtime_artifact(tmp_path):
    model = _copy(model_version("rf", ("onnx",)), tmp_path)
    code, err = Server(model, "bc", "--runtime", "sklearn").run_to_exit()
    assert code != 0 and "runtime sklearn needs a joblib or pkl artifact" in err
    (model / MODEL_CARD).unlink()
    code, err = Server(model, "bc").run_to_exit()
    assert code != 0 and "modelcard.json" in err and "not committed" in err


def test_bad_flags_exit_non_zero():
    info = model_version("rf")
    code, err = Server(info["dir"], "bc", "--expected-sha256", "xyz").run_to_exit()
    assert code == 2 and "64 hex digits" in err
    code, err = Server(info["dir"], "bc", env={"KILN_WORKERS": "many"}).run_to_exit()
    assert code == 2 and "many" in err


# --- s3:// ----------------------------------------------------------------------------------------


def test_serves_a_version_from_s3(s3_prefix, tmp_path):
    from kiln_contract.storage import parse_s3, s3_client

    info = model_version("rf")
    loc = parse_s3(s3_prefix).child("bc", "v4")
    client = s3_client()
    for path in sorted(info["dir"].iterdir(), key=lambda p: p.name == MODEL_CARD):  # card last
        client.upload_file(str(path), loc.bucket, f"{loc.key}/{path.name}")
    cache = tmp_path / "cache"
    srv = Server(loc.uri, "bc", env={"KILN_CACHE_DIR": str(cache)}).start()
    try:
        status, body = srv.request("POST", "/v2/models/bc/infer", v2_matrix(info["X"][:4]))
        assert status == 200 and body["model_version"] == "4"
        assert body["outputs"][0]["data"] == info["pipeline"].predict(info["X"][:4]).tolist()
        assert (cache / "model.onnx").is_file() and not (cache / "model.joblib").exists()
    finally:
        assert srv.stop() == 0
    # A damaged cached copy is not trusted: it is downloaded again and verified.
    with open(cache / "model.onnx", "ab") as fh:
        fh.write(b"junk")
    srv = Server(loc.uri, "bc", env={"KILN_CACHE_DIR": str(cache)}).start()
    assert srv.request("POST", "/v2/models/bc/infer", v2_matrix(info["X"][:1]))[0] == 200
    assert srv.stop() == 0
    assert sha256_file(cache / "model.onnx") == _onnx_sha(info)
    # A version whose card is missing in S3 is not committed: refused.
    code, err = Server(parse_s3(s3_prefix).child("bc", "v5").uri, "bc",
                       env={"KILN_CACHE_DIR": str(tmp_path / "c2")}).run_to_exit()
    assert code != 0 and "not committed" in err


# --- stopping ------------------------------------------------------------------------------------


def test_sigterm_finishes_in_flight_requests_then_exits_zero():
    info = model_version("rf")
    srv = Server(info["dir"], "bc").start()
    body = json.dumps(v2_matrix(info["X"][:3], rid="in-flight")).encode()
    head = (f"POST /v2/models/bc/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    try:
        sock.sendall(head + body[:100])  # the request is in flight: headers in, body half-sent
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None, "exited with a request in flight"
        with pytest.raises(OSError):  # no longer accepting connections
            socket.create_connection(("127.0.0.1", srv.port), timeout=2).close()
        sock.sendall(body[100:])
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    answer = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert answer["id"] == "in-flight"
    assert answer["outputs"][0]["data"] == info["pipeline"].predict(info["X"][:3]).tolist()
    srv.proc.wait(15)
    assert srv.stop() == 0


def _length(raw: bytes) -> int:
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def test_workers_share_metrics_and_stop_on_sigterm():
    info = model_version("rf")
    srv = Server(info["dir"], "bc", "--workers", "2").start(timeout=60)
    try:
        X = info["X"][:3]
        for _ in range(12):  # a new connection each: the kernel spreads them over both workers
            assert srv.request("POST", "/v2/models/bc/infer", v2_matrix(X))[0] == 200
        deadline = time.monotonic() + 10
        while True:
            samples = {}
            for fam in text_string_to_metric_families(srv.request("GET", "/metrics")[1]):
                for s in fam.samples:
                    samples[(s.name, s.labels.get("code"), s.labels.get("feature"))] = s.value
            total = samples.get(("kiln_inference_requests_total", "200", None))
            rows = samples.get(("kiln_feature_value_count", None, "mean radius"))
            if (total, rows) == (12, 36) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert total == 12
        assert rows == 36  # every worker's feature histograms, summed
        assert samples.get(("kiln_inference_in_flight", None, None)) == 0
    finally:
        assert srv.stop() == 0


def test_card_helper_round_trip():
    """The test models' cards parse with the contract's loader (guards the helper, not the server)."""
    info = model_version("categorical")
    card = cards.loads((info["dir"] / MODEL_CARD).read_bytes())
    assert card["signature"]["inputs"][1] == {"name": "color", "datatype": "BYTES", "shape": [-1, 1]}
