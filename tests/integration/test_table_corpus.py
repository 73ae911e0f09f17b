"""The table corpus (table_corpus.py: 14 tables with real-world column names and types), each trained
through the trainer's CLI with 3 algorithms and served by `python -m kiln_server` in both runtimes:
the server's predictions equal the Pipeline's on every held-out row, over OIP V2 (one tensor per
feature, named as the user's column) and KServe V1 (feature dicts keyed by the user's names).

The trainings run in this process (cli.main, as test_trainer_algorithms does: imports are most of a
subprocess run), the servers as real processes, a few at a time. The held-out rows are rebuilt with
the trainer's own loading, cleaning and split (the same seed), as the trainer scored them.
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import numpy as np
import pytest
import table_corpus
from server_support import Server, infer

from kiln_trainer import cleaning, cli, datasets, preprocessing, training

pytestmark = pytest.mark.integration

PARALLEL_SERVERS = 4
V1_ROWS = 25  # rows also sent as KServe V1 feature dicts


def test_corpus_is_at_least_12_tables_with_3_algorithms_each_covering_every_algorithm():
    from kiln_trainer.algorithms import ALGORITHMS

    tables = table_corpus.all_tables()
    assert len(tables) >= 12 and all(len(set(t.algorithms)) >= 3 for t in tables)
    covered = {(a, t.task) for t in tables for a in t.algorithms}
    wanted = {(a, task) for a, (clf, reg) in ALGORITHMS.items()
              for task, path in (("classification", clf), ("regression", reg)) if path}
    assert covered == wanted
    names = [c for t in tables for c in t.frame.columns]
    for mark in (" ", "/", ".", "-", "[", "(", "°", "数", "é"):
        assert any(mark in n for n in names), mark
    assert any(n[0].isdigit() for n in names) and any(len(n) == 200 for n in names)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """{(table, algorithm): (output dir, summary line)} for every pair, trained from CSV or Parquet."""
    root = tmp_path_factory.mktemp("corpus")
    out = {}
    for i, table in enumerate(table_corpus.all_tables()):
        fmt = "parquet" if i % 2 else "csv"
        path = table_corpus.write(table, root, fmt)
        for algo in table.algorithms:
            spec = table_corpus.spec_for(table, algo, f"file://{path}", fmt)
            spec_path = root / f"{table.name}-{algo}.json"
            spec_path.write_text(json.dumps(spec))
            buf = io.StringIO()
            code = cli.main(["--spec", str(spec_path), "--output", str(root / f"{table.name}-{algo}"),
                             "--log-level", "WARNING"], stdout=buf)
            line = json.loads(buf.getvalue().strip().splitlines()[-1])
            out[(table.name, algo)] = (root / f"{table.name}-{algo}", line, code)
    return out


def held_out(card: dict):
    """The test split as the trainer made it: (raw feature frame, layout)."""
    spec = card["spec"]
    ds = datasets.load(spec["dataset"])
    cleaned = cleaning.clean(ds.frame, spec["dataset"], spec.get("cleaning", {}), ds.default_target)
    y = training.prepare_target(cleaned.y, card["task"])
    _, X_test, _, _ = training.split(cleaned.X, y, card["task"], spec.get("split", {}), [])
    assert len(X_test) == card["evaluation"]["testRows"]
    layout = preprocessing.FeatureLayout.of(cleaned.X)
    assert layout.names == card["features"]["names"]
    return X_test, layout


def _json_number(v: float):
    return None if math.isnan(v) else float(v)


def v2_body(X, layout) -> dict:
    """One tensor per feature, named as the user's column: FP64 (null = missing) or BYTES."""
    frame = layout.normalise(X)
    inputs = []
    for c in layout.names:
        if layout.kinds[c] == preprocessing.NUMERIC:
            inputs.append({"name": c, "datatype": "FP64", "shape": [len(frame)],
                           "data": [_json_number(v) for v in frame[c].to_numpy(dtype=float)]})
        else:
            inputs.append({"name": c, "datatype": "BYTES", "shape": [len(frame)], "data": list(frame[c])})
    return {"inputs": inputs}


def v1_body(X, layout) -> dict:
    frame = layout.normalise(X)
    rows = []
    for _, r in frame.iterrows():
        rows.append({c: (_json_number(r[c]) if layout.kinds[c] == preprocessing.NUMERIC else r[c])
                     for c in layout.names})
    return {"instances": rows}


def _equal_labels(got, want, task: str) -> None:
    if task == "regression":
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-4,
                                   atol=1e-6)
    else:
        assert [str(v) for v in got] == [str(v) for v in want]


def serve_and_compare(directory: Path, card: dict, runtime: str) -> None:
    X_test, layout = held_out(card)
    pipe = joblib.load(directory / "model.joblib")
    Xm = layout.model_input(X_test)
    want = pipe.predict(Xm)
    if (card["export"].get("joblib") or {}).get("predictsClassIndex"):  # xgboost: indices into classes
        want = np.asarray(card["features"]["classes"], dtype=object)[np.asarray(want, dtype=int)]
    proba = pipe.predict_proba(Xm) if card["task"] == "classification" and hasattr(pipe, "predict_proba") else None
    args = ["--runtime", runtime] + (["--allow-unsafe-formats"] if runtime == "sklearn" else [])
    server = Server(str(directory), "m", *args).start(timeout=60)
    try:
        status, meta = server.request("GET", "/v2/models/m")
        assert status == 200, meta
        assert meta["parameters"]["feature_names"] == layout.names
        if not layout.all_numeric:  # one input per feature, named as the user's column
            assert [i["name"] for i in meta["inputs"]] == layout.names
        status, body = infer(server, v2_body(X_test, layout), "/v2/models/m/infer")
        assert status == 200, body
        outs = {o["name"]: o for o in body["outputs"]}
        _equal_labels(outs["label"]["data"], want, card["task"])
        if proba is not None and "probabilities" in outs:
            got = np.asarray(outs["probabilities"]["data"], dtype=float).reshape(proba.shape)
            assert np.abs(got - proba).max() <= 1e-4
        status, body = infer(server, v1_body(X_test.iloc[:V1_ROWS], layout), "/v1/models/m:predict")
        assert status == 200, body
        _equal_labels(body["predictions"], want[:V1_ROWS], card["task"])
    finally:
        server.stop()


@pytest.mark.parametrize("table", [t.__name__ for t in table_corpus.TABLES])
def test_table_trains_with_three_algorithms_and_both_runtimes_serve_the_pipelines_predictions(table, trained):
    jobs = []
    for (name, algo), (directory, line, code) in trained.items():
        if name != table:
            continue
        assert code == 0 and line["status"] == "Succeeded", (algo, line)
        card = json.loads((directory / "modelcard.json").read_text())
        assert card["createdAt"] and card["features"]["names"]
        runtimes = ["sklearn"] + (["onnx"] if "onnx" in line["formats"] else [])
        if "onnx" not in line["formats"]:
            assert card["exportWithheld"]["onnx"] == card["export"]["onnx"]["reason"]
        jobs += [(directory, card, rt) for rt in runtimes]
    assert jobs
    with ThreadPoolExecutor(PARALLEL_SERVERS) as pool:
        for f in [pool.submit(serve_and_compare, *job) for job in jobs]:
            f.result()


def test_onnx_share_over_the_corpus(trained):
    """Ties and float32 rounding no longer cost the ONNX artifact: at least 40 of the 42 pairs have one
    (the one known gap: HistGradientBoostingRegressor on wine's alcohol, float32 bins; see the card)."""
    got = [k for k, (_, line, _) in trained.items() if "onnx" in line.get("formats", [])]
    missing = sorted(set(trained) - set(got))
    assert len(got) >= len(trained) - 2, missing
    assert ("breast_cancer_ties", "random_forest") in got  # the 1.7e-07 tie of the issue
