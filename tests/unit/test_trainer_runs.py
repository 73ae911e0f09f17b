"""Whole trainer runs in-process (kiln_trainer.cli.main) with a local --output: artifacts, model
card, ONNX parity and signature, report, search, gates, xgboost, summary line and exit codes."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path
from unittest import mock

import joblib
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest

from kiln_contract import card as contract_card
from kiln_contract.checksums import sha256_file
from kiln_trainer import cli


def train(spec: dict, out: Path, tmp: Path, extra_args: tuple = ()) -> tuple[int, dict, dict | None, Path]:
    """Run the CLI on spec; return (exit code, summary, card or None, termination file)."""
    spec_path = tmp / f"spec-{out.name}.json"
    spec_path.write_text(json.dumps(spec))
    term = tmp / f"termination-{out.name}"
    buf = io.StringIO()
    with mock.patch.dict(os.environ, {"KILN_TERMINATION_LOG": str(term)}):
        code = cli.main(["--spec", str(spec_path), "--output", str(out), "--log-level", "WARNING", *extra_args],
                        stdout=buf)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1, lines  # exactly one line on stdout
    summary = json.loads(lines[0])
    card_path = out / "modelcard.json"
    card = contract_card.loads(card_path.read_bytes()) if card_path.exists() else None
    return code, summary, card, term


def session(path: Path):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def mixed_frame(n: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(50, 10, n).round(2),
        "city": rng.choice(["paris", "lyon", "nice"], n),
        "plan": rng.choice(["basic", "pro"], n),
    })
    df["churn"] = np.where((df.age > 50) ^ (df.city == "nice"), "yes", "no")
    df.loc[::17, "income"] = np.nan
    df.loc[5::23, "city"] = None
    return df


@pytest.fixture(scope="module")
def iris(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iris")
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "features": {"scaling": "standard"},
            "algorithm": {"name": "logistic_regression"}, "export": {"formats": ["onnx", "joblib", "pkl"]},
            "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.8}]}}
    out = tmp / "out"
    return (*train(spec, out, tmp), out)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    frame = mixed_frame()
    csv = tmp / "churn.csv"
    frame.to_csv(csv, index=False)
    spec = {"model": "churn", "dataset": {"uri": f"file://{csv}", "target": "churn"},
            "cleaning": {"missing": "median"}, "features": {"scaling": "minmax"},
            "algorithm": {"name": "random_forest", "params": {"n_estimators": 15, "max_depth": 6}}}
    out = tmp / "out"
    return (*train(spec, out, tmp), out, frame)


# ---- iris: all-numeric classification ---------------------------------------------------------

def test_iris_run_succeeds_with_card_and_summary(iris):
    code, summary, card, term, out = iris
    assert code == 0 and summary["status"] == "Succeeded"
    assert set(contract_card.REQUIRED_KEYS) <= set(card)
    assert card["task"] == "classification" and card["features"]["classes"] == [0, 1, 2]
    assert card["dataset"]["rows"] == 150 and card["dataset"]["uri"] == "builtin:iris"
    assert card["metrics"]["accuracy"] > 0.85 and 0.5 < card["metrics"]["roc_auc"] <= 1.0
    assert set(card["metrics"]) == {"accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc"}
    matrix = np.array(card["evaluation"]["confusionMatrix"]["matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == card["evaluation"]["testRows"] == 30
    assert card["gates"] == [{"metric": "accuracy", "op": ">=", "value": 0.8,
                              "actual": card["metrics"]["accuracy"], "passed": True}]
    # the summary repeats the card's facts, and the termination file holds the same line
    assert summary["metrics"] == card["metrics"] and summary["gatesPassed"] is True
    assert summary["mainMetric"] == f"accuracy={card['metrics']['accuracy']:.4f}"
    assert summary["sha256"] == contract_card.artifact(card, "onnx")["sha256"]
    assert summary["primaryArtifact"] == "model.onnx" and summary["rows"] == 150
    assert summary["output"] == str(out.resolve())
    assert json.loads(term.read_text()) == summary
    assert {"load", "clean", "fit", "evaluate", "export", "report", "upload", "total"} <= set(card["timings"])
    lib = card["libraries"]
    assert lib["scikit-learn"] == "1.9.1" and lib["onnxruntime"] and lib["skl2onnx"] and lib["python"]
    assert card["device"] == {"kind": "cpu"}


def test_iris_artifacts_match_their_sha256_and_card_is_last(iris):
    _, _, card, _, out = iris
    assert [a["format"] for a in card["artifacts"]] == ["onnx", "joblib", "pkl"]
    for art in card["artifacts"] + [card["report"]]:
        path = out / art["file"]
        assert sha256_file(path) == art["sha256"] and path.stat().st_size == art["bytes"]
    assert sorted(p.name for p in out.iterdir()) == ["model.joblib", "model.onnx", "model.pkl",
                                                     "modelcard.json", "report.html"]  # no temp files left
    card_mtime = (out / "modelcard.json").stat().st_mtime_ns
    assert all((out / a["file"]).stat().st_mtime_ns <= card_mtime for a in card["artifacts"])


def test_iris_onnx_signature_and_parity(iris):
    _, _, card, _, out = iris
    # float64 inputs: the trees see scikit-learn's own float32 cast of them (kiln_trainer.onnx_trees)
    assert card["signature"] == {"inputs": [{"name": "input", "datatype": "FP64", "shape": [-1, 4]}],
                                 "outputs": {"label": "label", "probabilities": "probabilities"}}
    parity = card["export"]["onnx"]["parity"]
    assert parity["passed"] and parity["labelMismatches"] == 0 and parity["maxAbsDiff"] < 1e-4
    # independently: ONNX on raw features vs the joblib Pipeline
    from sklearn.datasets import load_iris

    X = load_iris().data
    sess = session(out / "model.onnx")
    assert [i.name for i in sess.get_inputs()] == ["input"]
    label, proba = sess.run(None, {"input": X.astype(np.float64)})
    pipe = joblib.load(out / "model.joblib")
    np.testing.assert_array_equal(label, pipe.predict(X))
    assert np.abs(proba - pipe.predict_proba(X)).max() < 1e-4
    assert proba.shape == (150, 3)


def test_iris_distributions_are_usable_for_psi(iris):
    _, _, card, _, _ = iris
    names = card["features"]["names"]
    assert names == ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
    dist = card["features"]["distributions"]["petal length (cm)"]
    train_rows = card["evaluation"]["trainRows"]
    assert dist["count"] == train_rows == 120
    assert len(dist["histogram"]["edges"]) == 11 and sum(dist["histogram"]["counts"]) == train_rows
    assert dist["min"] == dist["histogram"]["edges"][0] and dist["max"] == dist["histogram"]["edges"][-1]
    assert dist["min"] <= dist["quantiles"]["p50"] <= dist["max"] and dist["std"] > 0


def test_iris_report_embeds_pngs(iris):
    _, _, card, _, out = iris
    page = (out / "report.html").read_text()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(images) >= 2  # confusion matrix and coefficients
    assert all(base64.b64decode(img).startswith(b"\x89PNG") for img in images)
    assert "Confusion matrix" in page and "rows in" in page and f"{card['metrics']['accuracy']:.4g}" in page
    assert "src='http" not in page  # self-contained


def test_rerun_on_a_committed_prefix_reuses_it_and_other_spec_is_refused(iris, tmp_path):
    _, summary, card, _, out = iris
    before = (out / "modelcard.json").read_bytes()
    code, again, _, _ = train(card["spec"], out, tmp_path)
    assert code == 0 and again["sha256"] == summary["sha256"] and again["durations"] == {"reused": True}
    assert (out / "modelcard.json").read_bytes() == before
    code, refused, _, _ = train({**card["spec"], "algorithm": {"name": "knn"}}, out, tmp_path)
    assert code == 2 and refused["reason"] == "BadInput" and "another spec" in refused["message"]


# ---- mixed numeric/categorical CSV ------------------------------------------------------------

def test_mixed_signature_has_one_input_per_raw_column(mixed):
    code, summary, card, _, out, _ = mixed
    assert code == 0, summary
    assert card["features"]["names"] == ["age", "income", "city", "plan"]
    fp = card["signature"]["inputs"][0]["datatype"]
    assert fp in ("FP32", "FP64")
    assert card["signature"]["inputs"] == [
        {"name": "age", "feature": "age", "datatype": fp, "shape": [-1, 1]},
        {"name": "income", "feature": "income", "datatype": fp, "shape": [-1, 1]},
        {"name": "city", "feature": "city", "datatype": "BYTES", "shape": [-1, 1]},
        {"name": "plan", "feature": "plan", "datatype": "BYTES", "shape": [-1, 1]},
    ]
    assert card["features"]["classes"] == ["no", "yes"]
    assert card["features"]["categories"]["plan"] == ["basic", "pro"]
    assert card["features"]["distributions"]["city"]["kind"] == "categorical"
    assert abs(sum(card["features"]["distributions"]["city"]["frequencies"].values()) - 1) < 1e-9
    assert card["cleaning"]["imputedCells"] > 0 and card["cleaning"]["rowsRemoved"]["missing"] == 0
    assert card["export"]["onnx"]["parity"]["passed"]
    # scaling is skipped for a forest (scale-invariant), and the card says so
    assert any("scaling=minmax skipped" in w for w in card["warnings"])


def test_mixed_onnx_serves_raw_columns_like_the_pipeline(mixed):
    _, _, card, _, out, frame = mixed
    raw = frame.drop(columns=["churn"]).iloc[:40].copy()
    raw.loc[raw.index[0], "city"] = "marseille"  # unseen category: ignored by the one-hot encoder
    feed = {
        "age": raw["age"].to_numpy(np.float32).reshape(-1, 1),
        "income": raw["income"].to_numpy(np.float32).reshape(-1, 1),  # NaN: imputed inside the model
        "city": raw["city"].fillna(card["features"]["missing"]["categorical"]).to_numpy(object).reshape(-1, 1),
        "plan": raw["plan"].to_numpy(object).reshape(-1, 1),
    }
    label, proba = session(out / "model.onnx").run(None, feed)
    pipe = joblib.load(out / "model.joblib")
    frame_in = raw.assign(city=raw["city"].fillna("").astype(object), plan=raw["plan"].astype(object))
    np.testing.assert_array_equal(label.astype(str), pipe.predict(frame_in).astype(str))
    assert np.abs(proba - pipe.predict_proba(frame_in)).max() < 1e-4
    assert card["metrics"]["accuracy"] > 0.8


# ---- regression, search, gates, xgboost -------------------------------------------------------

def test_diabetes_regression(tmp_path):
    spec = {"model": "diabetes", "dataset": {"uri": "builtin:diabetes"},
            "features": {"scaling": "robust", "polynomialDegree": 2},
            "algorithm": {"name": "ridge", "params": {"alpha": 0.5}},
            "evaluation": {"gates": [{"metric": "r2", "op": ">", "value": 0.3},
                                     {"metric": "rmse", "op": "<", "value": 70}]}}
    code, summary, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 0 and card["task"] == "regression"
    assert set(card["metrics"]) == {"r2", "rmse", "mae"}
    assert 0.3 < card["metrics"]["r2"] < 0.7 and 40 < card["metrics"]["rmse"] < 70
    assert card["metrics"]["mae"] < card["metrics"]["rmse"]
    assert card["features"]["classes"] is None and card["params"]["alpha"] == 0.5
    assert card["signature"]["outputs"] == {"label": "variable"}
    assert card["signature"]["inputs"] == [{"name": "input", "datatype": "FP64", "shape": [-1, 10]}]
    assert card["export"]["onnx"]["parity"]["passed"]  # polynomial terms included
    pipe = joblib.load(tmp_path / "out" / "model.joblib")
    assert pipe.steps[-1][1].coef_.shape == (65,)  # 10 features + 10 squares + 45 products
    assert summary["mainMetric"].startswith("r2=") and summary["gatesPassed"] is True
    page = (tmp_path / "out" / "report.html").read_text()
    assert "Residuals" in page


def test_grid_search_counts_candidates_and_truncates_to_trials(tmp_path):
    base = {"model": "wine", "dataset": {"uri": "builtin:wine"}, "algorithm": {"name": "decision_tree"}}
    spec = {**base, "search": {"method": "grid", "space": {"max_depth": [2, 3, 4], "criterion": ["gini", "entropy"]},
                               "cvFolds": 3, "metric": "f1_macro"}}
    code, summary, card, _ = train(spec, tmp_path / "grid", tmp_path)
    assert code == 0
    s = card["search"]
    assert (s["candidates"], s["gridSize"], s["truncated"], s["cvFolds"]) == (6, 6, False, 3)
    assert s["bestParams"]["max_depth"] in (2, 3, 4) and s["bestParams"]["criterion"] in ("gini", "entropy")
    assert card["params"]["max_depth"] == s["bestParams"]["max_depth"]
    assert summary["bestParams"] == s["bestParams"] and summary["mainMetric"].startswith("f1_macro=")

    spec["search"]["trials"] = 4
    code, _, card, _ = train(spec, tmp_path / "truncated", tmp_path)
    assert (card["search"]["candidates"], card["search"]["gridSize"], card["search"]["truncated"]) == (4, 6, True)

    spec["search"] = {"method": "random", "space": {"max_depth": {"randint": [2, 8]}}, "trials": 3, "cvFolds": 2}
    code, _, card, _ = train(spec, tmp_path / "random", tmp_path)
    assert code == 0 and card["search"]["candidates"] == 3 and card["search"]["gridSize"] is None
    assert 2 <= card["params"]["max_depth"] < 8


def test_failed_gate_is_a_successful_run_with_gates_failed(tmp_path):
    spec = {"model": "bc", "dataset": {"uri": "builtin:breast_cancer"}, "algorithm": {"name": "knn"},
            "export": {"formats": ["joblib"]},
            "evaluation": {"metrics": ["accuracy"], "gates": [{"metric": "accuracy", "op": ">=", "value": 0.999}]}}
    code, summary, card, term = train(spec, tmp_path / "out", tmp_path)
    assert code == 0 and summary["status"] == "Succeeded" and summary["gatesPassed"] is False
    assert card["gates"][0]["passed"] is False and card["gates"][0]["actual"] < 0.999
    assert not contract_card.gates_passed(card)
    assert set(card["metrics"]) == {"accuracy"}  # evaluation.metrics restricts what is reported
    assert [a["format"] for a in card["artifacts"]] == ["joblib"] and "signature" not in card
    assert summary["sha256"] == card["artifacts"][0]["sha256"] and summary["primaryArtifact"] == "model.joblib"


def test_xgboost_cpu_with_gpu_requested_and_string_labels(tmp_path):
    frame = mixed_frame(200, seed=3)
    csv = tmp_path / "churn.csv"
    frame.to_csv(csv, index=False)
    spec = {"model": "churn", "dataset": {"uri": f"file://{csv}", "target": "churn"},
            "cleaning": {"missing": "most_frequent"},
            "algorithm": {"name": "xgboost", "params": {"n_estimators": 8, "max_depth": 3}},
            "resources": {"gpu": 1, "cpu": "1"}}
    with mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):  # no GPU, whatever this machine has
        code, summary, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 0, summary
    assert card["device"]["kind"] == "cpu" and "no GPU is visible" in card["device"]["warning"]
    assert card["params"]["device"] == "cpu" and card["params"]["n_estimators"] == 8
    assert card["libraries"]["xgboost"] == "3.2.0"
    assert card["features"]["classes"] == ["no", "yes"]
    assert 0.5 < card["metrics"]["roc_auc"] <= 1.0 and card["metrics"]["accuracy"] > 0.8
    onnx = card["export"]["onnx"]
    assert onnx["status"] == "ok" and onnx["parity"]["labelMismatches"] == 0, onnx
    # the ONNX graph answers with the real labels, not xgboost's class indices
    X = frame.drop(columns=["churn"]).iloc[:10]
    feed = {c: (X[c].to_numpy(np.float32) if c in ("age", "income") else X[c].fillna("").to_numpy(object))
            .reshape(-1, 1) for c in X.columns}
    label, proba = session(tmp_path / "out" / "model.onnx").run(None, feed)
    assert set(label.tolist()) <= {"no", "yes"} and proba.shape == (10, 2)
    assert card["export"]["joblib"]["predictsClassIndex"] is True


def test_onnx_failing_parity_is_withheld_and_joblib_stays(tmp_path):
    # seen for real with k-NN on iris (duplicate points: float32 distances break ties differently);
    # forced here so the test does not hang on ONNX Runtime's arithmetic
    from kiln_trainer import onnx_export

    failing = {"rows": 30, "tolerance": 1e-4, "labelMismatches": 2, "maxAbsDiff": 0.2, "passed": False}
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "knn"},
            "export": {"formats": ["onnx"]}}
    with mock.patch.object(onnx_export, "parity", return_value=failing):
        code, summary, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 0
    onnx = card["export"]["onnx"]
    assert onnx["status"] == "unavailable" and onnx["parity"] == failing
    assert "2 label mismatches" in onnx["reason"] and any("ONNX export unavailable" in w for w in card["warnings"])
    assert [a["format"] for a in card["artifacts"]] == ["joblib"]  # written although only onnx was asked for
    assert not (tmp_path / "out" / "model.onnx").exists() and "signature" not in card
    assert summary["primaryArtifact"] == "model.joblib"


def test_onnx_conversion_failure_is_recorded(tmp_path):
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "decision_tree"}}
    with mock.patch("skl2onnx.convert_sklearn", side_effect=NotImplementedError("no converter for X")):
        code, _, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 0
    why = "skl2onnx cannot convert this pipeline: NotImplementedError: no converter for X"
    assert card["export"]["onnx"] == {"status": "unavailable",
                                      "reason": f"float64 inputs: {why}; float32 inputs: {why}"}
    assert [a["format"] for a in card["artifacts"]] == ["joblib"]
    # requested but not produced: machine-readable for the operator, in the card and the summary line
    assert card["exportWithheld"] == {"onnx": card["export"]["onnx"]["reason"]}


# ---- failures -----------------------------------------------------------------------------------

def test_bad_input_exits_2_with_a_short_failed_summary(tmp_path):
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"},
            "algorithm": {"name": "random_forest", "params": {"n_trees": 3}}}
    code, summary, card, term = train(spec, tmp_path / "out", tmp_path)
    assert code == 2 and card is None
    assert summary["status"] == "Failed" and summary["reason"] == "BadInput"
    assert summary["message"].startswith("spec.algorithm.params.n_trees: unknown parameter")
    assert json.loads(term.read_text()) == summary
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_schema_violation_and_missing_data(tmp_path):
    code, summary, _, _ = train({"model": "Bad_Name", "dataset": {"uri": "builtin:iris"},
                                 "algorithm": {"name": "knn"}}, tmp_path / "a", tmp_path)
    assert code == 2 and summary["message"].startswith("spec.model:")
    code, summary, _, _ = train({"model": "x", "dataset": {"uri": f"file://{tmp_path}/gone.csv", "target": "y"},
                                 "algorithm": {"name": "knn"}}, tmp_path / "b", tmp_path)
    assert code == 2 and summary["reason"] == "DataUnavailable" and "gone.csv" in summary["message"]


def test_unexpected_error_exits_1_and_message_is_capped(tmp_path):
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "decision_tree"}}
    with mock.patch("kiln_trainer.training._train", side_effect=RuntimeError("boom " * 500)):
        code, summary, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 1 and summary["reason"] == "Error" and card is None
    assert summary["message"].startswith("RuntimeError: boom") and len(json.dumps(summary)) < 1024


def test_sigterm_ends_the_run_with_a_failed_summary_even_inside_a_search(tmp_path):
    import signal
    import time

    def fit_that_gets_killed(*args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        except Exception:  # what scikit-learn's search does with a failing fit: record it, go on
            pass
        raise AssertionError("SIGTERM was swallowed")

    before = signal.getsignal(signal.SIGTERM)
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "decision_tree"}}
    with mock.patch("kiln_trainer.training._train", side_effect=fit_that_gets_killed):
        code, summary, card, _ = train(spec, tmp_path / "out", tmp_path)
    assert code == 1 and card is None
    assert summary == {"status": "Failed", "reason": "Error",
                       "message": "terminated by SIGTERM (deadline passed or pod deleted)"}
    assert signal.getsignal(signal.SIGTERM) is before  # handler restored
