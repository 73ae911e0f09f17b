"""Choosing and verifying artifacts before anything is deserialised."""

from __future__ import annotations

import pytest

from kiln_contract.checksums import sha256_bytes
from kiln_server.artifacts import choose, verify
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
