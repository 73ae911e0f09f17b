"""Choosing and verifying artifacts before anything is deserialised."""

from __future__ import annotations

import pytest

from kiln_contract.checksums import sha256_bytes
from kiln_server import artifacts
from kiln_server.artifacts import choose, read_card, verify
from kiln_server.errors import StartupError


def card(*formats):
    files = {"onnx": "model.onnx", "joblib": "model.joblib", "pkl": "model.pkl"}
    return {"artifacts": [{"file": files[f], "format": f, "sha256": "0" * 64, "bytes": 1} for f in formats]}


def test_onnx_is_the_default_runtime():
    runtime, entry = choose(card("joblib", "onnx"), "", False, "u")
    assert runtime == "onnx" and entry["file"] == "model.onnx"


def test_unsafe_formats_need_opt_in():
    with pytest.raises(StartupError, match="refusing to load model.joblib.*--allow-unsafe-formats"):
        choose(card("joblib"), "", False, "u")
    assert choose(card("joblib"), "", True, "u") == ("sklearn", card("joblib")["artifacts"][0])
    with pytest.raises(StartupError, match="refusing to load model.pkl"):
        choose(card("onnx", "pkl"), "sklearn", False, "u")


def test_runtime_without_its_artifact():
    with pytest.raises(StartupError, match="runtime onnx needs a onnx artifact.*joblib"):
        choose(card("joblib"), "onnx", True, "s3://b/m/v1")


def test_verify_checks_card_pin_and_size():
    data = b"model bytes"
    sha = sha256_bytes(data)
    entry = {"file": "model.onnx", "format": "onnx", "sha256": sha.upper(), "bytes": len(data)}
    verify(data, entry, "", "m")
    verify(data, entry, sha, "m")
    with pytest.raises(StartupError, match="the model card says"):
        verify(data + b"!", {**entry, "bytes": len(data) + 1}, "", "m")
    with pytest.raises(StartupError, match="--expected-sha256"):
        verify(data, entry, "f" * 64, "m")
    with pytest.raises(StartupError, match="size mismatch"):
        verify(data, {**entry, "bytes": 3}, "", "m")


def _version(tmp_path, card_bytes: bytes):
    d = tmp_path / "v1"
    d.mkdir()
    (d / "modelcard.json").write_bytes(card_bytes)
    return d


def _card_bytes() -> bytes:
    from kiln_contract import card as cards

    body = {k: {} for k in cards.REQUIRED_KEYS}
    body.update(artifacts=[], gates=[], task="classification", features={"names": ["a", "b"]})
    return cards.dumps(body)


def test_card_pin_is_checked_on_the_bytes_before_they_are_parsed(tmp_path):
    data = _card_bytes()
    d = _version(tmp_path, data)
    pin = sha256_bytes(data)
    card, _ = read_card(str(d), "", pin.upper())
    assert card["features"]["names"] == ["a", "b"]
    assert read_card(str(d), "", "")[0] == card  # no pin: as before
    (d / "modelcard.json").write_bytes(data.replace(b'"a"', b'"c"'))
    with pytest.raises(StartupError) as info:
        read_card(str(d), "", pin)
    message = str(info.value)
    assert f"{d}/modelcard.json" in message and "--expected-card-sha256" in message and pin in message
    assert sha256_bytes((d / "modelcard.json").read_bytes()) not in message  # the actual digest is not told
    (d / "modelcard.json").write_bytes(b"\x00 not json at all")
    with pytest.raises(StartupError, match="sha256 mismatch"):  # the pin speaks before the parser
        read_card(str(d), "", pin)


def test_card_pin_covers_the_bytes_downloaded_from_s3(tmp_path, monkeypatch):
    data = _card_bytes()
    served = {"card": data}
    monkeypatch.setattr(artifacts, "_s3_get", lambda uri, name, local: served["card"])
    pin = sha256_bytes(data)
    card, local = read_card("s3://bucket/models/m/v1", str(tmp_path), pin)
    assert card["features"]["names"] == ["a", "b"] and local == tmp_path
    served["card"] = data.replace(b'"a"', b'"c"')
    with pytest.raises(StartupError, match="s3://bucket/models/m/v1/modelcard.json.*--expected-card-sha256"):
        read_card("s3://bucket/models/m/v1", str(tmp_path), pin)
