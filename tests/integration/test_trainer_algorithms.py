"""Every algorithm the TrainingJob CRD lists, trained on builtin datasets into SeaweedFS S3 and
checked from what S3 holds: the card read back, every artifact's sha256 and size equal to the
card's, and the artifacts' predictions on the test split (rebuilt from the card's spec the way
the trainer splits) — joblib's reproduce the card's metrics, ONNX Runtime's match joblib's
(labels identical, probabilities within 1e-4; regression within 1e-4 relative). Where a case
ships no ONNX, the card must say why.

Classification on iris (multiclass) or breast_cancer (binary), regression on diabetes; algorithms
that do both tasks are run for both. Two cases run `python -m kiln_trainer` as a real subprocess
(one per task); the rest call kiln_trainer.cli.main() in this process, same arguments, to keep
the file fast (the interpreter start and imports are most of a subprocess run here).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import joblib
import numpy as np
import onnxruntime as ort
import pytest
from sklearn import datasets as skd
from sklearn import metrics as skm
from sklearn.model_selection import train_test_split

from kiln_contract import card as contract_card
from kiln_contract.checksums import sha256_bytes
from kiln_contract.storage import parse_s3, s3_client
from kiln_trainer import cli

pytestmark = pytest.mark.integration

CLF, REG = "classification", "regression"
ALL_ALGORITHMS = {"logistic_regression", "decision_tree", "random_forest", "knn", "gradient_boosting",
                  "linear_regression", "ridge", "svm", "xgboost"}
TOLERANCE = 1e-4
SMALL = {"random_forest": {"n_estimators": 12}, "gradient_boosting": {"max_iter": 25},
         "xgboost": {"n_estimators": 12, "max_depth": 3}}
# k-NN on iris (exact duplicate points) used to lose its ONNX to float32 distances breaking ties; with
# float64 inputs every case ships ONNX
NO_ONNX: set = set()

# (algorithm, task, dataset, split overrides, run as a subprocess)
CASES = [
    ("logistic_regression", CLF, "iris", {}, False),
    ("decision_tree", CLF, "breast_cancer", {"seed": 7}, False),
    ("random_forest", CLF, "iris", {"testFraction": 0.3}, True),
    ("knn", CLF, "iris", {}, False),
    ("knn", CLF, "breast_cancer", {"seed": 3, "testFraction": 0.25}, False),
    ("gradient_boosting", CLF, "breast_cancer", {}, False),
    ("ridge", CLF, "iris", {"seed": 11}, False),
    ("svm", CLF, "breast_cancer", {}, False),
    ("xgboost", CLF, "iris", {"stratify": False}, False),
    ("decision_tree", REG, "diabetes", {}, False),
    ("random_forest", REG, "diabetes", {"seed": 5}, False),
    ("knn", REG, "diabetes", {}, False),
    ("gradient_boosting", REG, "diabetes", {"testFraction": 0.25}, True),
    ("linear_regression", REG, "diabetes", {}, False),
    ("ridge", REG, "diabetes", {"seed": 9}, False),
    ("svm", REG, "diabetes", {}, False),
    ("xgboost", REG, "diabetes", {}, False),
]


def test_cases_cover_every_algorithm_of_the_crd_for_each_task_it_does():
    from kiln_contract import spec as contract_spec
    from kiln_trainer.algorithms import ALGORITHMS

    algo_schema = contract_spec.spec_schema("TrainingJob")["properties"]["algorithm"]["properties"]["name"]
    assert set(algo_schema["enum"]) == ALL_ALGORITHMS == set(ALGORITHMS)
    covered = {(a, t) for a, t, *_ in CASES}
    wanted = {(a, t) for a, (clf, reg) in ALGORITHMS.items() for t, path in ((CLF, clf), (REG, reg)) if path}
    assert covered == wanted
    assert {c[1] for c in CASES if c[4]} == {CLF, REG}  # a real subprocess for each task


def _id(case) -> str:
    algo, task, ds, _, sub = case
    return f"{algo}-{task}-{ds}" + ("-subprocess" if sub else "")


def _spec(algo: str, task: str, ds: str, split: dict) -> dict:
    return {"model": f"{algo}-{ds}".replace("_", "-"), "dataset": {"uri": f"builtin:{ds}"},
            "algorithm": {"name": algo, "task": task, "params": SMALL.get(algo, {})},
            "split": split}


def run_subprocess(spec: dict, output: str, tmp_path, via_env: bool) -> dict:
    env = {**os.environ, "KILN_TERMINATION_LOG": str(tmp_path / "termination-log")}
    args = [sys.executable, "-m", "kiln_trainer", "--output", output]
    if via_env:
        env["KILN_SPEC"] = json.dumps(spec)
    else:
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        args += ["--spec", str(tmp_path / "spec.json")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180, env=env, check=False)
    assert proc.returncode == 0, (proc.stdout, proc.stderr[-3000:])
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, (proc.stdout, proc.stderr[-2000:])
    return json.loads(lines[0])


def run_in_process(spec: dict, output: str, tmp_path) -> dict:
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    out = io.StringIO()
    code = cli.main(["--spec", str(tmp_path / "spec.json"), "--output", output], stdout=out)
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def get(client, uri: str) -> bytes:
    loc = parse_s3(uri)
    return client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()


def held_out_rows(card: dict):
    """The held-out rows, rebuilt as kiln_trainer splits them (datasets → cleaning → training.split):
    the builtin frame, features and target as the card names them, train_test_split with the card's
    seed and testFraction, stratified on the target for classification when split.stratify."""
    spec = card["spec"]
    name = spec["dataset"]["uri"].split(":", 1)[1]
    frame = getattr(skd, f"load_{name}")(as_frame=True).frame
    assert card["cleaning"]["rowsOut"] == len(frame) == card["dataset"]["rows"]  # nothing removed
    X = frame[card["features"]["names"]].to_numpy(dtype=np.float64)
    y = frame[card["features"]["target"]].to_numpy()
    if card["task"] == CLF:
        y = y.astype(np.int64)
    split = spec["split"]
    stratify = y if card["task"] == CLF and split.get("stratify", True) else None
    _, X_test, _, y_test = train_test_split(X, y, test_size=float(split["testFraction"]),
                                            random_state=int(split["seed"]), stratify=stratify)
    assert len(X_test) == card["evaluation"]["testRows"]
    return X_test, y_test


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_algorithm_trains_into_s3_and_its_artifacts_agree(case, s3_env, s3_prefix, tmp_path):
    algo, task, ds, split, as_subprocess = case
    spec = _spec(algo, task, ds, split)
    if as_subprocess:
        summary = run_subprocess(spec, s3_prefix, tmp_path, via_env=task == REG)
    else:
        summary = run_in_process(spec, s3_prefix, tmp_path)
    assert summary["status"] == "Succeeded" and summary["output"] == s3_prefix and summary["task"] == task

    # the card, read back from S3
    client = s3_client()
    card = contract_card.loads(get(client, f"{s3_prefix}/modelcard.json"))
    assert (card["algorithm"], card["task"], card["spec"]["algorithm"]["name"]) == (algo, task, algo)
    for key, value in split.items():
        assert card["spec"]["split"][key] == value

    # every artifact (and the report): bytes in S3 match the card's sha256 and size; nothing else there
    files = {}
    for art in card["artifacts"] + [card["report"]]:
        data = get(client, f"{s3_prefix}/{art['file']}")
        assert sha256_bytes(data) == art["sha256"], art["file"]
        assert len(data) == art["bytes"], art["file"]
        files[art["format"]] = data
    loc = parse_s3(s3_prefix)
    listed = client.list_objects_v2(Bucket=loc.bucket, Prefix=loc.key + "/").get("Contents", [])
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed) == sorted(
        [a["file"] for a in card["artifacts"]] + [card["report"]["file"], "modelcard.json"])
    assert summary["sha256"] == (contract_card.artifact(card, "onnx") or contract_card.artifact(card, "joblib"))[
        "sha256"]

    # the joblib Pipeline on the rebuilt test split reproduces the card's metrics: same split, same model
    X_test, y_test = held_out_rows(card)
    assert "joblib" in files
    (tmp_path / "model.joblib").write_bytes(files["joblib"])
    pipeline = joblib.load(tmp_path / "model.joblib")
    predicted = np.asarray(pipeline.predict(X_test))
    if card["export"]["joblib"].get("predictsClassIndex"):
        predicted = np.asarray(card["features"]["classes"])[predicted.astype(int)]
    metrics = card["evaluation"]["allMetrics"]
    if task == CLF:
        assert skm.accuracy_score(y_test, predicted) == pytest.approx(metrics["accuracy"], rel=1e-12)
        assert skm.f1_score(y_test, predicted, average="macro") == pytest.approx(metrics["f1_macro"], rel=1e-12)
        assert card["evaluation"]["confusionMatrix"]["matrix"] == skm.confusion_matrix(
            y_test, predicted, labels=card["features"]["classes"]).tolist()
    else:
        assert skm.r2_score(y_test, predicted) == pytest.approx(metrics["r2"], rel=1e-9)
        assert skm.mean_absolute_error(y_test, predicted) == pytest.approx(metrics["mae"], rel=1e-9)

    onnx = card["export"]["onnx"]
    if (algo, ds) in NO_ONNX:
        # no ONNX artifact: the card says why (and joblib is what serves)
        assert "onnx" not in files and "signature" not in card
        assert onnx["status"] == "unavailable"
        assert "parity" in onnx["reason"] and onnx["parity"]["passed"] is False
        assert any("ONNX export unavailable" in w for w in card["warnings"])
        return
    assert onnx["status"] == "ok" and "onnx" in files, onnx
    assert onnx["parity"]["passed"] is True and onnx["parity"]["rows"] == len(X_test)

    # ONNX Runtime on the same rows, called as the card's signature says, against the joblib Pipeline
    signature = card["signature"]
    (inp,) = signature["inputs"]
    # float64 where the converters allow it (not xgboost's, gradient boosting's or RidgeClassifier's), else float32
    assert inp["datatype"] in ("FP32", "FP64") and (algo != "xgboost" or inp["datatype"] == "FP32")
    if algo in ("decision_tree", "random_forest", "knn", "logistic_regression", "linear_regression"):
        assert inp["datatype"] == "FP64"
    assert inp == {"name": "input", "datatype": inp["datatype"], "shape": [-1, len(card["features"]["names"])]}
    session = ort.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = X_test.astype(np.float64 if inp["datatype"] == "FP64" else np.float32)
    outputs = dict(zip(names, session.run(None, {"input": feed}), strict=True))
    got = np.asarray(outputs[signature["outputs"]["label"]]).ravel()
    if task == CLF:
        assert np.array_equal(got, predicted), (got, predicted)
        if "probabilities" in signature["outputs"]:
            proba = np.asarray(outputs[signature["outputs"]["probabilities"]], dtype=np.float64)
            expected = pipeline.predict_proba(X_test)
            assert proba.shape == expected.shape
            assert np.max(np.abs(proba - expected)) <= TOLERANCE
        else:  # a classifier without predict_proba (ridge): decision values
            scores = np.asarray(outputs[signature["outputs"]["scores"]], dtype=np.float64)
            expected = np.asarray(pipeline.decision_function(X_test), dtype=np.float64).reshape(scores.shape)
            assert np.all(np.abs(scores - expected) <= TOLERANCE * np.maximum(1.0, np.abs(expected)))
    else:
        expected = np.asarray(predicted, dtype=np.float64)
        assert got.shape == expected.shape
        assert np.all(np.abs(got.astype(np.float64) - expected) <= TOLERANCE * np.maximum(1.0, np.abs(expected)))
