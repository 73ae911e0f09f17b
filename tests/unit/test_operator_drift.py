"""PSI of live feature histograms against the card's training histograms."""

import numpy as np
import pytest

from kiln_operator import drift

EDGES = [float(e) for e in np.linspace(0.0, 10.0, 11)]


def metrics_text(values, feature="x"):
    """What the server exposes: a histogram bucketed at the training edges."""
    lines = ["# TYPE kiln_feature_value histogram"]
    for le in EDGES + [float("inf")]:
        count = int(np.sum(np.asarray(values) <= le))
        le_text = "+Inf" if le == float("inf") else repr(le)
        lines.append(f'kiln_feature_value_bucket{{model="m",version="1",feature="{feature}",le="{le_text}"}} {count}')
    lines.append(f'kiln_feature_value_count{{model="m",version="1",feature="{feature}"}} {len(values)}')
    lines.append(f'kiln_feature_value_sum{{model="m",version="1",feature="{feature}"}} {float(np.sum(values))}')
    return "\n".join(lines) + "\n"


@pytest.fixture
def card():
    rng = np.random.default_rng(0)
    train = rng.uniform(0, 10, 5000)
    counts, _ = np.histogram(train, bins=10, range=(0, 10))
    return {"x": {"kind": "numeric", "histogram": {"edges": EDGES, "counts": counts.tolist()}}}


def test_same_distribution_is_not_drift(card):
    live = drift.live_histograms(metrics_text(np.random.default_rng(1).uniform(0, 10, 2000)))
    drifted, scores = drift.assess(card, live, threshold=0.2, min_samples=100)
    assert drifted is False and scores["x"] < 0.05


def test_shifted_distribution_is_drift(card):
    live = drift.live_histograms(metrics_text(np.random.default_rng(1).uniform(6, 16, 2000)))
    drifted, scores = drift.assess(card, live, threshold=0.2, min_samples=100)
    assert drifted is True and scores["x"] > 1.0


def test_too_few_samples_are_not_judged(card):
    live = drift.live_histograms(metrics_text([50.0] * 20))
    assert drift.assess(card, live, threshold=0.2, min_samples=100) == (None, {})


def test_pods_are_merged():
    a = drift.live_histograms(metrics_text([1.0, 2.0]))
    b = drift.live_histograms(metrics_text([3.0]))
    assert drift.merge(a, b)["x"][float("inf")] == 3
