"""The trainer as a real process against SeaweedFS S3: a version written under an s3:// prefix
(card last, every artifact's sha256 checked on the stored bytes), a dataset read from s3://,
and unreachable data failing with exit 2 and the one-line summary."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kiln_contract import card as contract_card
from kiln_contract.checksums import sha256_bytes
from kiln_contract.storage import parse_s3, s3_client

pytestmark = pytest.mark.integration


def run_trainer(spec: dict, output: str, tmp_path, timeout: int = 120, via_env: bool = False):
    """The trainer as the operator runs it: spec in $KILN_SPEC (via_env), else a manifest file."""
    term = tmp_path / "termination-log"
    env = {**os.environ, "KILN_TERMINATION_LOG": str(term)}
    args = [sys.executable, "-m", "kiln_trainer", "--output", output]
    if via_env:
        env["KILN_SPEC"] = json.dumps(spec)
    else:
        spec_path = tmp_path / "spec.yaml"
        spec_path.write_text(json.dumps({"apiVersion": "kiln.dev/v1alpha1", "kind": "TrainingJob",
                                         "metadata": {"name": "t"}, "spec": spec}))
        args += ["--spec", str(spec_path)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr[-2000:])
    summary = json.loads(lines[0])
    assert json.loads(term.read_text()) == summary
    return proc.returncode, summary, proc.stderr


def get(client, uri: str) -> bytes:
    loc = parse_s3(uri)
    return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def test_version_written_to_s3_with_card_last_and_checksums(s3_env, s3_prefix, tmp_path):
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"},
            "algorithm": {"name": "random_forest", "params": {"n_estimators": 10}},
            "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.8}]}}
    code, summary, stderr = run_trainer(spec, s3_prefix, tmp_path)
    assert code == 0, stderr[-2000:]
    assert summary["status"] == "Succeeded" and summary["output"] == s3_prefix and summary["gatesPassed"] is True

    client = s3_client()
    card = contract_card.loads(get(client, f"{s3_prefix}/modelcard.json"))
    assert [a["format"] for a in card["artifacts"]] == ["onnx", "joblib"]
    for art in card["artifacts"] + [card["report"]]:
        data = get(client, f"{s3_prefix}/{art['file']}")
        assert sha256_bytes(data) == art["sha256"] and len(data) == art["bytes"]
    assert summary["sha256"] == contract_card.artifact(card, "onnx")["sha256"]
    loc = parse_s3(s3_prefix)
    listed = client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key + "/")["Contents"]
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == [
        "model.joblib", "model.onnx", "modelcard.json", "report.html"]
    head = client.head_object(Bucket=loc.bucket, Key=f"{loc.key}/model.onnx")
    assert head["Metadata"]["sha256"] == contract_card.artifact(card, "onnx")["sha256"]
    assert card["timings"]["upload"] > 0 and "load" in summary["durations"]


def test_dataset_read_from_s3_is_hashed_and_pinned(s3_env, s3_prefix, tmp_path):
    rows = ["x1,x2,label"] + [f"{i % 7},{(i * 3) % 11},{'a' if (i % 7) > 3 else 'b'}" for i in range(80)]
    data = ("\n".join(rows) + "\n").encode()
    loc = parse_s3(f"{s3_prefix}/data/train.csv")
    client = s3_client()
    client.put_object(Bucket=loc.bucket, Key=loc.key, Body=data)
    spec = {"model": "s3data", "dataset": {"uri": loc.uri, "target": "label", "sha256": sha256_bytes(data)},
            "algorithm": {"name": "decision_tree"}, "export": {"formats": ["onnx"]}}
    code, summary, stderr = run_trainer(spec, f"{s3_prefix}/v1", tmp_path, via_env=True)
    assert code == 0, stderr[-2000:]
    assert summary["dataset"] == {"uri": loc.uri, "sha256": sha256_bytes(data), "rows": 80}
    card = contract_card.loads(get(client, f"{s3_prefix}/v1/modelcard.json"))
    assert card["features"]["names"] == ["x1", "x2"] and card["features"]["classes"] == ["a", "b"]
    assert card["metrics"]["accuracy"] == 1.0  # label is a function of x1

    spec["dataset"]["sha256"] = "f" * 64
    code, summary, _ = run_trainer(spec, f"{s3_prefix}/v2", tmp_path)
    assert code == 2 and summary["reason"] == "BadInput" and summary["message"].startswith("spec.dataset.sha256")
    assert "Contents" not in client.list_objects_v2(Bucket=loc.bucket, Prefix=parse_s3(s3_prefix).key + "/v2/")


def test_unreachable_or_missing_data_exits_2(s3_env, s3_prefix, tmp_path):
    base = {"model": "gone", "algorithm": {"name": "knn"}}
    code, summary, _ = run_trainer({**base, "dataset": {"uri": "https://127.0.0.1:9/data.csv", "target": "y"}},
                                   f"{s3_prefix}/a", tmp_path)
    assert code == 2 and summary == {"status": "Failed", "reason": "DataUnavailable",
                                     "message": summary["message"]}
    assert "https://127.0.0.1:9/data.csv" in summary["message"] and "loopback" in summary["message"]
    code, summary, _ = run_trainer({**base, "dataset": {"uri": f"{s3_prefix}/no/such.csv", "target": "y"}},
                                   f"{s3_prefix}/b", tmp_path)
    assert code == 2 and summary["reason"] == "DataUnavailable" and "NoSuchKey" in summary["message"]
