"""Trainer inputs, without training: spec reading and validation, datasets, cleaning, task
inference, parameter checking, search spaces, gates and the compute device."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kiln_contract.checksums import sha256_bytes, sha256_file
from kiln_trainer import algorithms, cleaning, datasets, evaluation, search, specfile, training
from kiln_trainer.errors import BadInput, DataUnavailable, TrainerError

BARE = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "decision_tree"}}


# ---- spec ------------------------------------------------------------------------------------

def test_manifest_yields_its_spec_and_defaults_come_from_the_crd(tmp_path):
    path = tmp_path / "tj.yaml"
    path.write_text("apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: a}\n"
                    "spec:\n  model: iris\n  dataset: {uri: 'builtin:iris'}\n  algorithm: {name: knn}\n")
    spec = specfile.validate(specfile.load(str(path)))
    assert spec["algorithm"] == {"name": "knn"}
    assert spec["split"] == {"testFraction": 0.2, "seed": 42, "stratify": True}
    assert spec["export"]["formats"] == ["onnx", "joblib"]
    assert spec["cleaning"]["missing"] == "drop"


def test_bare_json_spec_file_and_env_spec(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(BARE))
    assert specfile.load(str(path)) == BARE
    assert specfile.load(None, environ={"KILN_SPEC": json.dumps(BARE)}) == BARE


def test_multi_document_yaml_picks_the_trainingjob(tmp_path):
    path = tmp_path / "both.yaml"
    path.write_text("apiVersion: kiln.dev/v1alpha1\nkind: Model\nmetadata: {name: iris}\nspec: {}\n---\n"
                    "apiVersion: kiln.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: a}\n"
                    "spec: {model: iris, dataset: {uri: 'builtin:wine'}, algorithm: {name: svm}}\n")
    assert specfile.load(str(path))["dataset"]["uri"] == "builtin:wine"


def test_no_spec_and_unreadable_spec_are_bad_input(tmp_path):
    with pytest.raises(BadInput, match="KILN_SPEC"):
        specfile.load(None, environ={})
    with pytest.raises(BadInput) as err:
        specfile.load(None, environ={"KILN_SPEC": "{not json"})
    assert err.value.field == "spec"
    with pytest.raises(BadInput, match="cannot read"):
        specfile.load(str(tmp_path / "missing.yaml"))


@pytest.mark.parametrize(("patch", "field"), [
    ({"algorithm": {"name": "deep_net"}}, "spec.algorithm.name"),
    ({"split": {"testFraction": 1.5}}, "spec.split.testFraction"),
    ({"dataset": {"uri": "ftp://x/y.csv"}}, "spec.dataset.uri"),
    ({"dataset": {}}, "spec.dataset.uri"),
    ({"evaluation": {"gates": [{"metric": "accuracy", "op": "=>", "value": 1}]}}, "spec.evaluation.gates[0].op"),
])
def test_schema_errors_name_the_field(patch, field):
    with pytest.raises(BadInput) as err:
        specfile.validate({**BARE, **patch})
    assert err.value.field == field


def test_precheck_names_unknown_gate_metric_and_unknown_param():
    spec = specfile.validate({**BARE, "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.9},
                                                               {"metric": "auc", "op": ">=", "value": 0.9}]}})
    with pytest.raises(BadInput) as err:
        training.precheck(spec)
    assert err.value.field == "spec.evaluation.gates[1].metric"
    assert "roc_auc" in str(err.value)  # the valid names are listed

    spec = specfile.validate({**BARE, "algorithm": {"name": "random_forest", "task": "classification",
                                                    "params": {"n_trees": 10}}})
    with pytest.raises(BadInput) as err:
        training.precheck(spec)
    assert err.value.field == "spec.algorithm.params.n_trees"
    assert "n_estimators" in str(err.value) and "max_depth" in str(err.value)


def test_precheck_refuses_a_bad_search_before_reading_data():
    spec = specfile.validate({**BARE, "dataset": {"uri": "file:///nonexistent/data.csv", "target": "y"},
                              "search": {"space": {"max_depth": [2, 3]}, "metric": "acuracy"}})
    with pytest.raises(BadInput) as err:
        training.precheck(spec)
    assert err.value.field == "spec.search.metric"
    spec["search"] = {"space": {"max_depht": [2]}}
    spec["algorithm"]["task"] = "classification"
    with pytest.raises(BadInput) as err:
        training.precheck(spec)
    assert err.value.field == "spec.search.space.max_depht"


def test_gate_metric_must_fit_the_task():
    with pytest.raises(BadInput) as err:
        evaluation.check_names({"gates": [{"metric": "rmse", "op": "<", "value": 3}]}, "classification")
    assert err.value.field == "spec.evaluation.gates[0].metric"
    evaluation.check_names({"gates": [{"metric": "rmse", "op": "<", "value": 3}]}, "regression")


def test_param_values_refused_by_sklearn_name_the_param():
    with pytest.raises(BadInput) as err:
        algorithms.build("decision_tree", "classification", {"max_depth": -3}, 1, 1, {"kind": "cpu"})
    assert err.value.field == "spec.algorithm.params.max_depth"


def test_algorithm_task_mismatch():
    with pytest.raises(BadInput) as err:
        algorithms.estimator_class("linear_regression", "classification")
    assert err.value.field == "spec.algorithm.task"


def test_kiln_defaults_and_seed_are_applied_but_spec_params_win():
    est = algorithms.build("svm", "classification", {}, 7, 1, {"kind": "cpu"})
    assert est.probability is True and est.random_state == 7
    est = algorithms.build("random_forest", "regression", {"random_state": 3, "n_estimators": 5}, 7, 1, {})
    assert (est.random_state, est.n_estimators) == (3, 5)


# ---- task inference --------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "task"), [
    (["a", "b", "a"], "classification"),
    ([0, 1, 2, 1], "classification"),
    ([0.0, 1.0, 1.0], "classification"),
    ([True, False, True], "classification"),
    (list(range(50)), "regression"),
    ([0.5, 1.25, 3.0], "regression"),
])
def test_task_inference(values, task):
    assert algorithms.infer_task(pd.Series(values)) == task


# ---- datasets --------------------------------------------------------------------------------

def test_builtin_dataset_hash_is_of_its_canonical_csv():
    ds = datasets.load({"uri": "builtin:wine"})
    assert ds.rows == 178 and ds.default_target == "target"
    assert ds.sha256 == sha256_bytes(datasets.canonical_csv(ds.frame))
    assert len(ds.sha256) == 64
    with pytest.raises(BadInput) as err:
        datasets.load({"uri": "builtin:mnist"})
    assert err.value.field == "spec.dataset.uri"


def test_csv_and_parquet_from_file_hash_the_bytes_read(tmp_path):
    frame = pd.DataFrame({"x": [1.5, 2.5, 3.5], "c": ["a", "b", "c"], "y": [0, 1, 0]})
    csv = tmp_path / "d.csv"
    frame.to_csv(csv, index=False)
    pq = tmp_path / "d.parquet"
    frame.to_parquet(pq)
    got = datasets.load({"uri": f"file://{csv}"})
    assert got.format == "csv" and got.sha256 == sha256_file(csv) and got.bytes == csv.stat().st_size
    assert list(got.frame.columns) == ["x", "c", "y"]
    got = datasets.load({"uri": f"file://{pq}"})
    assert got.format == "parquet" and got.sha256 == sha256_file(pq)
    assert got.frame["c"].tolist() == ["a", "b", "c"]


def test_sha256_pin_mismatch_stops_the_run(tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("x,y\n1,0\n2,1\n")
    datasets.load({"uri": f"file://{csv}", "sha256": sha256_file(csv)})  # matching pin passes
    with pytest.raises(BadInput) as err:
        datasets.load({"uri": f"file://{csv}", "sha256": "0" * 64})
    assert err.value.field == "spec.dataset.sha256"
    assert sha256_file(csv) in str(err.value)


def test_missing_file_is_data_unavailable_and_unknown_format_bad_input(tmp_path):
    with pytest.raises(DataUnavailable, match="does not exist"):
        datasets.load({"uri": f"file://{tmp_path}/nope.csv"})
    with pytest.raises(BadInput) as err:
        datasets.load({"uri": f"file://{tmp_path}/data.bin"})
    assert err.value.field == "spec.dataset.format"


def test_unparseable_data_is_bad_input(tmp_path):
    bad = tmp_path / "d.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(BadInput) as err:
        datasets.load({"uri": f"file://{bad}"})
    assert err.value.field == "spec.dataset"


# ---- cleaning --------------------------------------------------------------------------------

def _dirty() -> pd.DataFrame:
    rows = [[1.0, "a", 10, 0]] * 3 + [[float(i), "b", i, i % 2] for i in range(2, 14)]
    frame = pd.DataFrame(rows, columns=["x", "c", "junk", "y"])
    frame.loc[3, "x"] = np.nan
    frame.loc[4, "c"] = None
    frame.loc[5, "y"] = np.nan
    return frame


def test_cleaning_counts_rows_each_step_removed():
    got = cleaning.clean(_dirty(), {"target": "y"}, {"dropDuplicates": True, "missing": "drop",
                                                       "dropColumns": ["junk"]}, None)
    assert got.counts["rowsIn"] == 15
    assert got.counts["rowsRemoved"] == {"dropDuplicates": 2, "missingTarget": 1, "missing": 2}
    assert got.counts["rowsOut"] == 10 and len(got.X) == 10
    assert list(got.X.columns) == ["x", "c"] and got.counts["droppedColumns"] == ["junk"]


def test_imputing_policies_keep_rows_and_count_cells():
    got = cleaning.clean(_dirty(), {"target": "y"}, {"missing": "median"}, None)
    assert got.counts["rowsRemoved"] == {"dropDuplicates": 0, "missingTarget": 1, "missing": 0}
    assert got.counts["imputedCells"] == 2 and got.counts["rowsOut"] == 14


def test_cleaning_errors_name_the_field():
    with pytest.raises(BadInput) as err:
        cleaning.clean(_dirty(), {}, {}, None)
    assert err.value.field == "spec.dataset.target"
    with pytest.raises(BadInput) as err:
        cleaning.clean(_dirty(), {"target": "label"}, {}, None)
    assert err.value.field == "spec.dataset.target" and "junk" in str(err.value)
    with pytest.raises(BadInput) as err:
        cleaning.clean(_dirty(), {"target": "y"}, {"dropColumns": ["x", "nope"]}, None)
    assert err.value.field == "spec.cleaning.dropColumns[1]"
    with pytest.raises(BadInput) as err:
        cleaning.clean(_dirty(), {"target": "y", "features": ["x", "zz"]}, {}, None)
    assert err.value.field == "spec.dataset.features[1]"


# ---- search space, gates, device ---------------------------------------------------------------

def test_search_space_validation():
    space = search.parse_space({"method": "grid", "space": {"max_depth": [2, 3], "min_samples_leaf": [1, 2, 4]}},
                               "decision_tree", "classification", {})
    assert search.grid_size(space) == 6 and set(space) == {"model__max_depth", "model__min_samples_leaf"}
    with pytest.raises(BadInput) as err:
        search.parse_space({"space": {"depth": [2]}}, "decision_tree", "classification", {})
    assert err.value.field == "spec.search.space.depth"
    with pytest.raises(BadInput) as err:
        search.parse_space({"space": {"max_depth": [2, -1]}}, "decision_tree", "classification", {})
    assert err.value.field == "spec.search.space.max_depth"
    with pytest.raises(BadInput) as err:
        search.parse_space({"method": "grid", "space": {"C": {"loguniform": [0.01, 10]}}},
                           "logistic_regression", "classification", {})
    assert "method: random" in str(err.value)
    with pytest.raises(BadInput) as err:
        search.scorer_for("accuracy_score", "classification", 2)
    assert err.value.field == "spec.search.metric"
    assert search.scorer_for("rmse", "regression", 0) == "neg_root_mean_squared_error"
    assert search.scorer_for("roc_auc", "classification", 3) == "roc_auc_ovr"


def test_gates_compare_actual_values():
    got = evaluation.gates([{"metric": "accuracy", "op": ">=", "value": 0.9},
                            {"metric": "rmse", "op": "<", "value": 2.0},
                            {"metric": "roc_auc", "op": ">", "value": 0.5}],
                           {"accuracy": 0.85, "rmse": 1.5})
    assert [g["passed"] for g in got] == [False, True, False]
    assert got[0]["actual"] == 0.85 and got[2]["actual"] is None


def test_device_resolution():
    assert algorithms.resolve_device("xgboost", 0) == {"kind": "cpu"}
    cuda = algorithms.resolve_device("xgboost", 1, gpus=lambda: ["GPU 0: H100"], cuda_build=lambda: True)
    assert cuda["kind"] == "cuda" and cuda["gpus"] == ["GPU 0: H100"]
    none = algorithms.resolve_device("xgboost", 1, gpus=lambda: [], cuda_build=lambda: True)
    assert none["kind"] == "cpu" and "no GPU is visible" in none["warning"]
    nocuda = algorithms.resolve_device("xgboost", 2, gpus=lambda: ["GPU 0"], cuda_build=lambda: False)
    assert nocuda["kind"] == "cpu" and "CUDA" in nocuda["warning"]
    other = algorithms.resolve_device("random_forest", 1, gpus=lambda: ["GPU 0"], cuda_build=lambda: True)
    assert other["kind"] == "cpu" and "no GPU implementation" in other["warning"]
    est = algorithms.build("xgboost", "classification", {}, 1, 2, cuda)
    assert est.get_params()["device"] == "cuda" and est.get_params()["n_jobs"] == 2


def test_cpu_count_from_resources():
    assert algorithms.cpu_count({}) == 1
    assert algorithms.cpu_count({"cpu": "500m"}) == 1
    assert algorithms.cpu_count({"cpu": "2500m"}) == 2
    assert algorithms.cpu_count({"cpu": "4"}) == 4


# ---- https (the shared fetcher stubbed: no network here; real servers in test_fetch.py) ----------

class _Fetcher:
    """Stands in for kiln_contract.fetch.fetch_bytes_sync: each call takes the next reply."""

    def __init__(self, *replies):
        self.replies, self.calls = list(replies), []

    def __call__(self, url, **options):
        from kiln_contract.fetch import Fetched

        self.calls.append((url, options))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Fetched(url, sha256_bytes(reply), len(reply), data=reply)


def _failure(url, why, **kw):
    from kiln_contract.fetch import FetchError

    return FetchError(url, why, **kw)


@pytest.fixture
def fetcher(monkeypatch):
    from kiln_contract import fetch

    def install(*replies):
        fake = _Fetcher(*replies)
        monkeypatch.setattr(fetch, "fetch_bytes_sync", fake)
        return fake

    monkeypatch.setattr(datasets.time, "sleep", lambda s: None)
    return install


def test_https_dataset_is_fetched_with_timeouts_and_a_cap_and_retried_on_5xx(fetcher):
    url = "https://data.example/t.csv"
    fake = fetcher(_failure(url, "HTTP 503", reason="status", status=503, retryable=True), b"a,b\n1,x\n2,y\n")
    ds = datasets.load({"uri": url})
    assert ds.rows == 2 and ds.sha256 == sha256_bytes(b"a,b\n1,x\n2,y\n")
    assert len(fake.calls) == 2
    options = fake.calls[0][1]
    assert (options["connect_timeout"], options["read_timeout"]) == datasets.HTTP_TIMEOUT
    assert options["max_bytes"] == datasets.DATASET_MAX_BYTES


def test_https_connection_failures_are_retried_then_reported_generically(fetcher):
    url = "https://data.example/t.csv"
    failed = _failure(url, "connection failed", reason="connect", detail="ConnectionRefusedError", retryable=True)
    fake = fetcher(failed, failed, failed)
    with pytest.raises(DataUnavailable, match="connection failed$") as err:
        datasets.load({"uri": url})
    assert len(fake.calls) == datasets.HTTP_ATTEMPTS and "Refused" not in str(err.value)


def test_https_404_is_data_unavailable_without_retry(fetcher):
    url = "https://data.example/missing.parquet"
    fake = fetcher(_failure(url, "HTTP 404", reason="status", status=404))
    with pytest.raises(DataUnavailable, match="HTTP 404"):
        datasets.load({"uri": url})
    assert len(fake.calls) == 1


def test_https_redirects_are_not_followed(fetcher):
    url = "https://data.example/t.csv"
    fake = fetcher(_failure(url, "HTTP 302 redirect to https://169.254.169.254/ (redirects are not followed)",
                            reason="redirect", status=302))
    with pytest.raises(DataUnavailable, match="redirects are not followed"):
        datasets.load({"uri": url})
    assert len(fake.calls) == 1


def test_https_dataset_cap_comes_from_the_environment(monkeypatch, fetcher):
    fake = fetcher(b"a\n1\n")
    monkeypatch.setenv("KILN_DATASET_MAX_BYTES", "4096")
    datasets.load({"uri": "https://data.example/t.csv"})
    assert fake.calls[0][1]["max_bytes"] == 4096
    monkeypatch.setenv("KILN_DATASET_MAX_BYTES", "lots")
    with pytest.raises(TrainerError, match="KILN_DATASET_MAX_BYTES"):
        datasets.load({"uri": "https://data.example/t.csv"})


def test_https_to_the_metadata_service_is_refused():
    with pytest.raises(DataUnavailable, match="metadata"):
        datasets.load({"uri": "https://169.254.169.254/latest/meta-data/iam.csv"})


def test_https_the_backslash_at_trick_is_refused():
    # urllib.parse read the host as 1.1.1.1, requests as 127.0.0.1: one parser now reads both.
    with pytest.raises(DataUnavailable, match="backslash"):
        datasets.load({"uri": "https://127.0.0.1:443\\@1.1.1.1/data.csv"})


def test_operator_source_env_is_recorded(monkeypatch):
    monkeypatch.setenv("KILN_TRAININGJOB", "iris-rf")
    monkeypatch.setenv("KILN_MODEL_VERSION", "7")
    monkeypatch.delenv("KILN_RUN", raising=False)
    assert training._source() == {"trainingJob": "iris-rf", "modelVersion": 7}


# ---- sample specs ------------------------------------------------------------------------------

def test_example_specs_validate_and_pass_the_precheck():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "examples"
    paths = sorted((root / "specs").glob("*.*")) + sorted(root.glob("*.yaml"))
    checked = 0
    for path in paths:
        text = path.read_text()
        if path.parent == root and "kind: TrainingJob" not in text:
            continue
        spec = specfile.validate(specfile.load(str(path)))
        training.precheck(spec)
        checked += 1
    assert checked >= 3
