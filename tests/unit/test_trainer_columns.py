"""Real-world columns: names mapped to ONNX inputs, types judged before the split (kiln_trainer.columns),
the deciding metric and card keys of the contract, and the tie-exact tree export."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kiln_contract import card as cards
from kiln_contract import metrics
from kiln_trainer import columns
from kiln_trainer.errors import BadInput
from kiln_trainer.preprocessing import FeatureLayout, as_float
from kiln_trainer.training import progress_line

# ---- ONNX input names ----------------------------------------------------------------------------


@pytest.mark.parametrize("column, position, expected", [
    ("age", 0, "age"),
    ("Sepal_Length", 3, "Sepal_Length"),
    ("a b", 1, "c1_a_b"),
    ("a/b", 2, "c2_a_b"),
    ("1st", 0, "c0_1st"),
    ("température °C", 4, "c4_temp_rature__C"),
    ("label", 0, "c0_label"),  # the graph's own output names are never inputs
    ("input", 2, "c2_input"),
    ("x" * 65, 0, "c0_" + "x" * 40),
])
def test_onnx_input_name(column, position, expected):
    assert cards.onnx_input_name(position, column) == expected


def test_onnx_input_names_are_distinct_even_when_names_collide_once_sanitised():
    cols = ["a b", "a/b", "a.b", "a-b", "a_b", "c0_a_b", "x" * 200, "x" * 201]
    names = cards.onnx_input_names(cols)
    assert len(set(names)) == len(names)
    assert all(len(n) <= 64 for n in names)
    assert names[4] == "a_b"  # a plain identifier keeps its name
    assert names[5] != names[0] == "c0_a_b"  # a column literally named like a generated name gives way


def test_layout_signature_maps_each_input_to_the_users_column():
    X = pd.DataFrame({"a/b": [1.0, 2.0], "city name": ["x", "y"], "ok": [3.0, 4.0]})
    layout = FeatureLayout.of(X)
    sig = layout.signature_inputs(double=True)
    assert [(i["name"], i["feature"], i["datatype"]) for i in sig] == [
        ("c0_a_b", "a/b", "FP64"), ("c1_city_name", "city name", "BYTES"), ("ok", "ok", "FP64")]
    feed = layout.onnx_feed(X, double=True)
    assert set(feed) == {"c0_a_b", "c1_city_name", "ok"} and feed["c0_a_b"].dtype == np.float64
    card = {"signature": {"inputs": sig}}
    assert cards.input_features(card) == {"c0_a_b": "a/b", "c1_city_name": "city name", "ok": "ok"}
    # cards written before the mapping name inputs as the columns
    assert cards.input_features({"signature": {"inputs": [{"name": "age"}]}}) == {"age": "age"}


def test_nullable_integers_and_booleans_become_float_with_nan():
    s = pd.Series(pd.array([1, None, 3], dtype="Int64"))
    np.testing.assert_array_equal(as_float(s).to_numpy(), [1.0, np.nan, 3.0])
    b = pd.Series(pd.array([True, None, False], dtype="boolean"))
    np.testing.assert_array_equal(as_float(b).to_numpy(), [1.0, np.nan, 0.0])


# ---- column types ---------------------------------------------------------------------------------


def _frame(n=40, **cols):
    rng = np.random.default_rng(0)
    base = {"x": rng.normal(size=n)}
    base.update(cols)
    return pd.DataFrame(base)


@pytest.mark.parametrize("values", [
    [True, False] * 20,
    ["True", "false"] * 20,
    ["TRUE", None] * 20,
])
def test_booleans_are_numeric_zero_one(values):
    out = columns.inspect(_frame(flag=values))
    assert out.booleans == ["flag"]
    s = out.X["flag"]
    assert s.dtype == np.float64 and set(s.dropna()) <= {0.0, 1.0}


def test_strings_that_are_not_all_booleans_stay_categorical():
    out = columns.inspect(_frame(flag=["True", "maybe"] * 20))
    assert out.booleans == [] and out.X["flag"].dtype != np.float64


@pytest.mark.parametrize("values", [
    pd.date_range("2024-01-01", periods=40).astype(str).tolist(),
    pd.date_range("2024-01-01", periods=40, freq="h").strftime("%Y-%m-%dT%H:%M:%S").tolist(),
    pd.date_range("2024-01-01", periods=40),
])
def test_datetimes_are_refused_naming_the_column(values):
    with pytest.raises(BadInput) as exc:
        columns.inspect(_frame(**{"signup date": values}))
    assert "'signup date'" in str(exc.value) and "dropColumns" in str(exc.value)


def test_free_text_is_refused_naming_the_column():
    text = [f"the customer said the parcel number {i} arrived late and damaged" for i in range(40)]
    with pytest.raises(BadInput) as exc:
        columns.inspect(_frame(comment=text))
    assert "'comment'" in str(exc.value) and "free text" in str(exc.value)


def test_short_categories_are_not_text():
    out = columns.inspect(_frame(city=["New York", "Los Angeles", "San Francisco", "Boston"] * 10))
    assert list(out.X.columns) == ["x", "city"]


def test_constant_columns_are_dropped_with_a_warning():
    out = columns.inspect(_frame(one=[1.0] * 40, empty=[None] * 40, cat=["a"] * 40))
    assert out.constant == ["one", "empty", "cat"] and list(out.X.columns) == ["x"]
    assert any("constant" in w and "'one'" in w for w in out.warnings)


def test_every_column_constant_is_refused():
    with pytest.raises(BadInput, match="constant"):
        columns.inspect(pd.DataFrame({"a": [1] * 20}))


def test_identifier_like_columns_are_kept_with_a_warning():
    out = columns.inspect(_frame(**{"row id": np.arange(100, 140), "uuid": [f"u{i:04d}" for i in range(40)]}))
    assert out.identifiers == ["row id", "uuid"]
    assert "row id" in out.X.columns and len(out.warnings) == 2
    # distinct floats are measurements, not identifiers; integers that are not a run are values
    assert columns.inspect(_frame(v=np.arange(40) * 7)).identifiers == []


def test_duplicate_column_names_are_refused():
    X = pd.DataFrame([[1, 2], [3, 4]], columns=["a", "a"])
    with pytest.raises(BadInput, match="several columns named 'a'"):
        columns.inspect(X)


def test_kept_levels_takes_the_most_frequent_ties_by_value():
    s = pd.Series(["a"] * 5 + ["b"] * 3 + ["c"] * 3 + ["d"])
    assert columns.kept_levels(s, 2) == (["a", "b"], 4)
    assert columns.kept_levels(s, 10) == (["a", "b", "c", "d"], 4)


# ---- contract: deciding metric, card keys -----------------------------------------------------------


def test_deciding_metric_by_task():
    assert metrics.default_metric("classification") == "accuracy"
    assert metrics.default_metric("regression") == "r2"
    assert metrics.deciding_metric("regression") == ("r2", None)
    assert metrics.deciding_metric("regression", "rmse") == ("rmse", None)
    name, problem = metrics.deciding_metric("regression", "accuracy")
    assert name == "r2" and "'accuracy' does not exist for regression" in problem
    assert metrics.lower_is_better("rmse") and not metrics.lower_is_better("r2")
    with pytest.raises(ValueError):
        metrics.default_metric("clustering")


def test_card_created_at_and_withheld_formats():
    assert cards.CREATED_AT == "createdAt"
    assert cards.created_at({"createdAt": "2026-01-01T00:00:00+00:00"}) == "2026-01-01T00:00:00+00:00"
    assert cards.created_at({"created": "old"}) == "old"
    assert cards.withheld_formats({"exportWithheld": {"onnx": "why"}}) == {"onnx": "why"}
    assert cards.withheld_formats({"export": {"onnx": {"status": "unavailable", "reason": "r"},
                                              "joblib": {"status": "ok"}}}) == {"onnx": "r"}
    assert cards.withheld_formats({}) == {}


def test_progress_line_has_rows_per_second():
    assert progress_line("load", 1000000, 2.0) == "phase load: 1000000 rows in 2.00 s (500,000 rows/s)"
    assert progress_line("report", None, 0.5) == "phase report: 0.50 s"


# ---- ONNX: ties decided as scikit-learn decides them -------------------------------------------------


def test_forest_ties_get_scikit_learns_label_in_onnx():
    """Pure leaves and an even number of trees: rows where half the trees vote each way tie exactly in
    scikit-learn (argmax takes the first class); the exported graph must agree on every one."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline

    from kiln_trainer import onnx_export

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + rng.normal(scale=1.0, size=400) > 0).astype(int)
    pipe = Pipeline([("preprocess", ColumnTransformer([("num", "passthrough", [0, 1, 2])])),
                     ("model", RandomForestClassifier(n_estimators=20, random_state=1, bootstrap=True))]).fit(X, y)
    X_new = rng.normal(size=(3000, 3))
    proba = pipe.predict_proba(X_new)
    ties = np.flatnonzero(proba[:, 0] == proba[:, 1])
    assert len(ties) > 0  # the case of the issue is there
    layout = FeatureLayout(["a", "b", "c"], {"a": "numeric", "b": "numeric", "c": "numeric"})
    frame = pd.DataFrame(X_new, columns=["a", "b", "c"])
    for double in (True, False):
        data = onnx_export.convert(pipe, layout, "classification", "random_forest", None, double)
        check = onnx_export.parity(data, layout, frame, pipe.predict(X_new), proba, "classification", double)
        assert check["passed"] and check["labelMismatches"] == 0, (double, check)


# ---- one boto3 client per process -------------------------------------------------------------------


def test_s3_client_is_made_once_per_process_even_from_many_threads(monkeypatch):
    """boto3 sessions are not thread-safe and a client costs ~20 ms: trainer, server and operator all
    take kiln_contract.storage.s3_client(), which makes one per settings, once, under a lock."""
    import threading
    import time as _time

    from kiln_contract import storage

    made = []

    def new_client(settings):
        made.append(settings)
        _time.sleep(0.05)  # a slow creation: every thread arrives while it runs
        return object()

    monkeypatch.setattr(storage, "_CLIENTS", {})
    monkeypatch.setattr(storage, "_new_client", new_client)
    monkeypatch.setenv("KILN_S3_ENDPOINT", "http://127.0.0.1:1")
    got = []
    threads = [threading.Thread(target=lambda: got.append(storage.s3_client())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1 and len({id(c) for c in got}) == 1
    assert storage.s3_client() is got[0]


# ---- large files: hashed in chunks, never read whole into memory ---------------------------------------


def test_file_datasets_are_hashed_streaming_and_parsed_from_disk(tmp_path, monkeypatch):
    from kiln_contract.checksums import sha256_file
    from kiln_trainer import datasets

    csv = tmp_path / "big table.csv"
    pd.DataFrame({"a/b": np.arange(1000) / 7, "y": np.arange(1000) % 2}).to_csv(csv, index=False)

    def whole_file(*_):
        raise AssertionError("a file:// dataset must not be read into memory as bytes")

    monkeypatch.setattr(datasets, "read_bytes", whole_file)
    monkeypatch.setattr(datasets, "parse_bytes", whole_file)
    ds = datasets.load({"uri": f"file://{csv}"})
    assert ds.sha256 == sha256_file(csv) and ds.bytes == csv.stat().st_size and ds.rows == 1000

    parsed = []
    monkeypatch.setattr(datasets, "_parse", lambda *a: parsed.append(a))
    with pytest.raises(BadInput, match="spec.dataset.sha256"):
        datasets.load({"uri": f"file://{csv}", "sha256": "0" * 64})
    assert parsed == []  # a pin that does not match stops the run before the parse


def test_a_single_class_target_is_refused_with_a_clear_message(tmp_path):
    from kiln_contract import spec as contract_spec
    from kiln_trainer import training

    csv = tmp_path / "one class.csv"
    pd.DataFrame({"x / 1": np.arange(30) / 3, "the label": ["yes"] * 30}).to_csv(csv, index=False)
    spec = contract_spec.validate("TrainingJob", {
        "model": "m", "dataset": {"uri": f"file://{csv}", "target": "the label"},
        "algorithm": {"name": "decision_tree", "task": "classification"}})
    with pytest.raises(BadInput) as exc:
        training.train(spec, tmp_path)
    assert exc.value.field == "spec.dataset.target"
    assert "'the label' holds a single class ('yes')" in str(exc.value) and "at least two" in str(exc.value)
