"""The server tests' helper module (server_support.py) honours the card contract."""

from __future__ import annotations

import pytest
from server_support import write_version

from kiln_contract import MODEL_CARD
from kiln_contract import card as cards
from kiln_contract.checksums import sha256_file

pytestmark = pytest.mark.integration


# --- the helper honours the contract ---------------------------------------------------------------


def test_helper_writes_a_valid_card_with_matching_checksums(tmp_path):
    info = write_version(tmp_path / "v1", "rf")
    card = cards.loads((tmp_path / "v1" / MODEL_CARD).read_bytes())
    assert {a["format"] for a in card["artifacts"]} == {"onnx", "joblib"}
    for art in card["artifacts"]:
        assert sha256_file(tmp_path / "v1" / art["file"]) == art["sha256"]
    assert card["signature"]["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 30]}]
    assert card["signature"]["outputs"] == {"label": "label", "probabilities": "probabilities"}
    assert card["features"]["names"] == info["names"] and len(info["names"]) == 30
