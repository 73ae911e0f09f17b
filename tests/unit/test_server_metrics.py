"""Drift histograms and the micro-batcher (pure parts)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from kiln_server.batching import Batcher, concat
from kiln_server.errors import ClientError
from kiln_server.metrics import FeatureCollector, FeatureStats, merge, training_edges


def test_training_edges_from_the_trainers_card_layout():
    card = {"features": {"distributions": {
        "a": {"kind": "numeric", "histogram": {"edges": [0, 1, 2, 2, 3], "counts": [1, 1, 1, 1]}},
        "b": {"edges": [5.0, 1.0]},
        "c": {"kind": "categorical", "frequencies": {"x": 1.0}},
    }}}
    assert training_edges(card, "a") == [0.0, 1.0, 2.0, 3.0]
    assert training_edges(card, "b") == [1.0, 5.0]
    assert training_edges(card, "c") == [] and training_edges(card, "zzz") == [] and training_edges({}, "a") == []


def test_feature_stats_bucket_like_prometheus_le():
    stats = FeatureStats(["a", "b"], [0, 2], [[0.0, 1.0, 2.0], []])
    x = np.array([[-5, 9, 1], [0.0, 9, 2], [0.5, 9, np.nan], [1.0, 9, 4], [7.0, 9, 5]])
    stats.add(x[:2])
    stats.add(x[2:])
    snap = stats.snapshot()
    # le=0 -> {-5, 0}; le=1 -> {0.5, 1}; le=2 -> {}; +Inf -> {7}
    assert snap["a"]["counts"] == [2, 2, 0, 1] and snap["a"]["sum"] == pytest.approx(3.5)
    assert snap["b"] == {"edges": [], "counts": [4], "sum": 12.0, "missing": 1, "nonfinite": 0}


def test_snapshots_of_workers_merge_and_render_as_one_histogram():
    one = {"a": {"edges": [0.0, 1.0], "counts": [1, 2, 3], "sum": 10.0, "missing": 1}}
    two = {"a": {"edges": [0.0, 1.0], "counts": [4, 0, 1], "sum": 2.0, "missing": 0}}
    merged = merge([one, two])
    assert merged["a"]["counts"] == [5, 2, 4] and merged["a"]["sum"] == 12.0 and merged["a"]["missing"] == 1
    assert one["a"]["counts"] == [1, 2, 3]  # inputs untouched
    fams = {f.name: f for f in FeatureCollector("m", "1", lambda: merged).collect()}
    samples = {(s.name, s.labels.get("le")): s.value for s in fams["kiln_feature_value"].samples}
    assert samples[("kiln_feature_value_bucket", "0.0")] == 5
    assert samples[("kiln_feature_value_bucket", "1.0")] == 7
    assert samples[("kiln_feature_value_bucket", "+Inf")] == 11
    assert samples[("kiln_feature_value_count", None)] == 11
    assert fams["kiln_feature_missing"].samples[0].value == 1


def test_concat_matrix_and_columns():
    m = concat([np.ones((1, 2)), np.zeros((2, 2))])
    assert m.shape == (3, 2)
    cols = concat([[np.array([1.0]), np.array(["a"], dtype=object)], [np.array([2.0]), np.array(["b"], dtype=object)]])
    assert cols[0].tolist() == [1.0, 2.0] and cols[1].tolist() == ["a", "b"]


def run(coro):
    return asyncio.run(coro)


def test_requests_queued_together_share_one_batch():
    calls = []

    def predict(x):
        calls.append(len(x))
        return x[:, 0].astype(np.int64), None

    async def main():
        b = Batcher(predict, max_rows=8, max_latency_s=0.001)
        for _ in range(5):
            b.arrive()
        futs = [b.submit(np.full((n, 1), float(k)), n) for k, n in enumerate([1, 2, 3, 2, 1])]
        return await asyncio.gather(*futs)

    results = run(main())
    assert calls == [8, 1]  # at most max_rows rows per batch; the rest in the next
    assert [r[0].tolist() for r in results] == [[0], [1, 1], [2, 2, 2], [3, 3], [4]]


def test_a_lone_request_does_not_wait():
    def predict(x):
        return np.zeros(len(x), dtype=np.int64), None

    async def main():
        b = Batcher(predict, max_rows=32, max_latency_s=0.5)
        b.arrive()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await b.submit(np.zeros((1, 1)), 1)
        return loop.time() - t0

    assert run(main()) < 0.05


def test_one_bad_request_fails_alone():
    def predict(x):
        if np.isinf(x).any():
            raise ValueError("Input contains infinity")
        return np.zeros(len(x), dtype=np.int64), None

    async def main():
        b = Batcher(predict, max_rows=32, max_latency_s=0)
        b.arrive()
        b.arrive()
        good = b.submit(np.zeros((1, 1)), 1)
        bad = b.submit(np.full((1, 1), np.inf), 1)
        return await asyncio.gather(good, bad, return_exceptions=True)

    good, bad = run(main())
    assert good[0].tolist() == [0]
    assert isinstance(bad, ClientError) and bad.status == 422 and "infinity" in bad.message


def test_slow_models_run_on_the_inference_thread():
    import threading

    threads = set()

    def predict(x):
        threads.add(threading.current_thread().name)
        return np.zeros(len(x), dtype=np.int64), None

    async def main():
        b = Batcher(predict, max_rows=4, max_latency_s=0)
        b.seed(0.01)  # as if warm-up had measured 10 ms per call
        for _ in range(6):
            b.arrive()
        out = await asyncio.gather(*(b.submit(np.zeros((1, 1)), 1) for _ in range(6)))
        b.close()
        return out

    assert len(run(main())) == 6
    assert all(t.startswith("kiln-inference") for t in threads)


def test_fast_models_run_directly_and_slow_ones_queue():
    seen = []

    def predict(x):
        if np.isinf(x).any():
            raise ValueError("Input contains infinity")
        return np.zeros(len(x), dtype=np.int64), None

    b = Batcher(predict, on_batch=lambda x, n: seen.append(n))
    b.seed(5e-6)  # a 5-µs ONNX forest
    assert b.can_run_now()
    b.arrive()
    label, _ = b.run_now(np.zeros((3, 1)), 3)
    assert label.tolist() == [0, 0, 0] and seen == [3] and b.arriving == 0
    b.arrive()
    with pytest.raises(ClientError) as info:
        b.run_now(np.full((1, 1), np.inf), 1)
    assert info.value.status == 422 and b.arriving == 0
    b.seed(0.002)  # a 2-ms model: through the queue, so requests that pile up are batched
    assert not b.can_run_now()


def test_infinity_is_counted_apart_and_never_poisons_the_sum():
    stats = FeatureStats(["a"], [0], [[0.0, 1.0]])
    stats.add(np.array([[0.5], [np.inf], [-np.inf], [np.nan], [2.0]]))
    snap = stats.snapshot()["a"]
    assert snap["counts"] == [0, 1, 1] and snap["sum"] == pytest.approx(2.5)
    assert snap["missing"] == 1 and snap["nonfinite"] == 2
    # Finite values near the float64 limit: the sum saturates instead of overflowing to inf (then NaN).
    stats.add(np.array([[1.7e308], [1.7e308], [-1.7e308]]))
    stats.add(np.array([[-1.7e308], [-1.7e308]]))
    total = stats.snapshot()["a"]["sum"]
    assert np.isfinite(total)
    merged = merge([stats.snapshot(), stats.snapshot()])
    assert np.isfinite(merged["a"]["sum"]) and merged["a"]["nonfinite"] == 4
    fams = {f.name: f for f in FeatureCollector("m", "1", lambda: merged).collect()}
    assert fams["kiln_feature_nonfinite"].samples[0].value == 4
    assert fams["kiln_feature_value"].samples[-1].value == merged["a"]["sum"]  # _sum, finite
