"""The trainer's prediction-drift reference (card `predictions`) and the server's counts lining up with it."""

from __future__ import annotations

import numpy as np

from kiln_server.metrics import CountStats, reference_edges, reference_labels
from kiln_server.schema import Schema
from kiln_trainer import prediction_reference


def test_classifier_reference_is_label_shares_keyed_as_the_server_counts():
    ref = prediction_reference.reference("classification", np.array([0, 1, 1, 2, 1], dtype=np.int64))
    assert ref["kind"] == "categorical" and ref["split"] == "test" and ref["count"] == 5
    assert ref["frequencies"] == {"1": 0.6, "0": 0.2, "2": 0.2}
    schema = Schema(names=["x"], categorical=[False], task="classification", classes=None, float_dtype=np.float32)
    stats = CountStats(["label"], [reference_labels({"predictions": ref}, schema)])
    stats.add([np.array([1, 1, 7], dtype=np.int64)])  # what an ONNX classifier answers
    assert stats.snapshot() == {"label": {"1": 2, "0": 0, "2": 0, "__other__": 1}}


def test_string_labels_and_many_labels():
    ref = prediction_reference.reference("classification", np.array(["a"] * 3 + [f"l{i}" for i in range(60)]))
    assert ref["frequencies"]["a"] == 3 / 63 and "__other__" in ref["frequencies"]
    assert len(ref["frequencies"]) == prediction_reference.MAX_LABELS + 1


def test_regressor_reference_is_a_histogram_the_server_buckets_by():
    ref = prediction_reference.reference("regression", np.linspace(0, 100, 1000))
    assert ref["kind"] == "numeric" and len(ref["histogram"]["edges"]) == 11 and sum(ref["histogram"]["counts"]) == 1000
    assert reference_edges({"predictions": ref}) == ref["histogram"]["edges"]
