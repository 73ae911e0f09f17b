"""Prometheus metrics: request counts and latency, concurrency, batch sizes, model info, input drift.

    kiln_inference_requests_total{model,version,code}        counter, every inference request
    kiln_inference_request_duration_seconds{model,version}   histogram, request received -> answered
    kiln_inference_in_flight{model,version}                  gauge, requests being served now
    kiln_inference_batch_size{model,version}                 histogram, rows per model call
    kiln_model_info{model,version,runtime,sha256}            gauge, always 1
    kiln_feature_value{model,version,feature}                histogram per numeric feature, with the
                                                             buckets (le) at the training histogram's bin
                                                             edges from the model card, for drift (PSI)
    kiln_feature_missing_total{model,version,feature}        counter, missing (NaN/null) inputs
    kiln_feature_nonfinite_total{model,version,feature}      counter, ±Infinity inputs, which are left out of
                                                             kiln_feature_value (see FeatureStats.fold)
    kiln_feature_category_total{model,version,feature,category}  counter per categorical feature: values seen,
                                                             by the training split's categories from the card
                                                             (features.distributions frequencies); any other
                                                             value counts as "__other__" (bounded labels)
    kiln_prediction_label_total{model,version,label}         counter, predicted labels (classifiers), by the
                                                             card's reference labels (predictions.frequencies,
                                                             else features.classes); others as "__other__"
    kiln_prediction_value{model,version}                     histogram of predicted values (regressors), buckets
                                                             at the card's reference histogram edges
                                                             (predictions.histogram)
    kiln_payload_log_records_total{model,version,outcome}    counter, payload-log records: written, dropped
                                                             (queue full: S3 slow or down), failed (S3 refused)
    kiln_payload_log_sample_rate{model,version}              gauge, the share of requests recorded now (it follows
                                                             --payload-log-sample-rate-file while serving)

With several worker processes, prometheus_client's multiprocess mode aggregates the
standard metrics (PROMETHEUS_MULTIPROC_DIR must be set before prometheus_client is
imported; __main__ does that). Feature histograms are kept in numpy per process (folding
one request's 30 values into 30 histograms through the client library would cost more than
the inference) and each worker writes a snapshot next to the multiprocess files once a
second; /metrics sums the snapshots.
"""

from __future__ import annotations

import collections
import glob
import json
import math
import os
import threading
import time

import numpy as np

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
FOLD_ROWS = 2048
SUM_MAX = 1e300  # |kiln_feature_value_sum| saturates here: finite values can still overflow a float sum


def _saturate(x: float) -> float:
    return min(max(x, -SUM_MAX), SUM_MAX)


def training_edges(card: dict, feature: str) -> list[float]:
    """Bin edges of a feature's training histogram in the card (features.distributions), or []."""
    dists = (card.get("features") or {}).get("distributions") or {}
    dist = dists.get(feature) if isinstance(dists, dict) else None
    for _ in range(2):
        if not isinstance(dist, dict):
            return []
        for key in ("edges", "bin_edges", "bins"):
            edges = dist.get(key)
            if isinstance(edges, list) and len(edges) >= 2 and all(
                isinstance(e, int | float) and not isinstance(e, bool) for e in edges
            ):
                arr = np.unique(np.asarray(edges, dtype=np.float64))
                return [float(e) for e in arr if np.isfinite(e)]
        dist = dist.get("histogram")
    return []


class FeatureStats:
    """Per-feature histograms over the numeric inputs actually served, accumulated in numpy."""

    def __init__(self, names: list[str], columns: list[int], edges: list[list[float]]):
        self.names = names  # numeric feature names
        self.columns = columns  # their positions among all features
        self.edges = [np.asarray(e, dtype=np.float64) for e in edges]
        self.counts = [np.zeros(len(e) + 1, dtype=np.int64) for e in edges]
        self.sums = np.zeros(len(names), dtype=np.float64)
        self.missing = np.zeros(len(names), dtype=np.int64)
        self.nonfinite = np.zeros(len(names), dtype=np.int64)
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.dirty = False
        self.lock = threading.Lock()
        self.fold_lock = threading.Lock()  # REST's loop and gRPC's thread both fold

    def add(self, x) -> None:
        if not self.names:
            return
        if isinstance(x, np.ndarray):
            m = x
        else:
            m = np.column_stack([x[j] for j in self.columns])
        with self.lock:
            self.pending.append(m)
            self.pending_rows += len(m)
            self.dirty = True
        if self.pending_rows >= FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        with self.fold_lock:
            self._fold()

    def _fold(self) -> None:
        with self.lock:
            if not self.pending:
                return
            m = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
            self.pending = []
            self.pending_rows = 0
        if m.shape[1] != len(self.names):
            m = m[:, self.columns]
        m = m.astype(np.float64, copy=False)
        finite = np.isfinite(m)
        if finite.all():
            finite = None
        else:
            # ±Infinity is no draw from the feature's distribution (a client's overflow or division by
            # zero, or a probe) and, in a cumulative sum, poisons the histogram for the life of the pod:
            # +Inf then -Inf make _sum NaN, and the mean and anything derived from it with it. It is
            # left out of the buckets and the sum, and counted on its own (kiln_feature_nonfinite_total),
            # so it stays visible; rejecting it instead would change what the API accepts for a
            # bookkeeping reason (the models take it, and a non-finite answer is refused anyway).
            nan = np.isnan(m)
            self.missing += nan.sum(axis=0)
            self.nonfinite += (~finite & ~nan).sum(axis=0)
        for k, edges in enumerate(self.edges):
            col = m[:, k]
            if finite is not None and not finite[:, k].all():
                col = col[finite[:, k]]
            with np.errstate(over="ignore", invalid="ignore"):  # handled just below
                total = float(col.sum())
            if not math.isfinite(total):  # finite values near the float64 limit: clip so the sum cannot overflow
                bound = SUM_MAX / max(len(col), 1)
                total = float(np.clip(col, -bound, bound).sum())
            self.sums[k] = _saturate(float(self.sums[k]) + total)
            if len(edges):
                self.counts[k] += np.bincount(np.searchsorted(edges, col, side="left"), minlength=len(edges) + 1)
            else:
                self.counts[k][0] += len(col)

    def snapshot(self) -> dict:
        self.fold()
        return {
            name: {"edges": self.edges[k].tolist(), "counts": self.counts[k].tolist(),
                   "sum": float(self.sums[k]), "missing": int(self.missing[k]),
                   "nonfinite": int(self.nonfinite[k])}
            for k, name in enumerate(self.names)
        }


def merge(snapshots: list[dict]) -> dict:
    out: dict = {}
    for snap in snapshots:
        for name, st in snap.items():
            cur = out.get(name)
            if cur is None or cur["edges"] != st["edges"]:
                if cur is None:
                    out[name] = {**st, "counts": list(st["counts"])}
                continue
            cur["counts"] = [a + b for a, b in zip(cur["counts"], st["counts"], strict=True)]
            cur["sum"] = _saturate(cur["sum"] + st["sum"])
            cur["missing"] += st["missing"]
            cur["nonfinite"] = cur.get("nonfinite", 0) + st.get("nonfinite", 0)
    return out


OTHER = "__other__"  # the trainer's name for every category past its most common ones (kiln_trainer.distributions)


def training_categories(card: dict, feature: str) -> list[str]:
    """The categories of a feature's training frequencies in the card (features.distributions), or []."""
    dists = (card.get("features") or {}).get("distributions") or {}
    dist = dists.get(feature) if isinstance(dists, dict) else None
    freq = dist.get("frequencies") if isinstance(dist, dict) else None
    if isinstance(freq, dict):
        return [str(k) for k in freq if str(k) != OTHER]
    learned = (card.get("features") or {}).get("categories") or {}  # older cards: the encoder's categories
    values = learned.get(feature) if isinstance(learned, dict) else None
    return [str(v) for v in values] if isinstance(values, list) else []


def reference_labels(card: dict, schema) -> list[str]:
    """The predicted labels a classifier's answers are counted by: the card's reference, else its classes."""
    ref = card.get("predictions") if isinstance(card.get("predictions"), dict) else {}
    freq = ref.get("frequencies")
    if isinstance(freq, dict):
        return [str(k) for k in freq if str(k) != OTHER]
    classes = schema.classes if schema.classes is not None else (card.get("features") or {}).get("classes")
    return [str(c.item() if isinstance(c, np.generic) else c) for c in classes or []]


def reference_edges(card: dict) -> list[float]:
    """Bin edges of a regressor's reference histogram of predicted values (card.predictions), or []."""
    ref = card.get("predictions")
    if not isinstance(ref, dict):
        return []
    return training_edges({"features": {"distributions": {"p": ref}}}, "p")


class CountStats:
    """Counts of string values per key (a categorical feature, or the predicted label) over what was served,
    by a fixed set of known values; any other value counts as OTHER, so the label set stays bounded."""

    def __init__(self, keys: list[str], known: list[list[str]]):
        self.keys = keys
        self.known = [set(k) for k in known]
        self.counts: list[dict[str, int]] = [dict.fromkeys([*k, OTHER], 0) for k in known]
        self.pending: list[list] = [[] for _ in keys]
        self.pending_rows = 0
        self.dirty = False
        self.lock = threading.Lock()
        self.fold_lock = threading.Lock()  # REST's loop and gRPC's thread both fold

    def add(self, columns: list) -> None:
        """One array of values per key, in key order."""
        if not self.keys:
            return
        with self.lock:
            for k, col in enumerate(columns):
                self.pending[k].append(col)
            self.pending_rows += len(columns[0])
            self.dirty = True
        if self.pending_rows >= FOLD_ROWS:
            self.fold()

    def fold(self) -> None:
        with self.fold_lock:
            self._fold()

    def _fold(self) -> None:
        with self.lock:
            pending, self.pending = self.pending, [[] for _ in self.keys]
            self.pending_rows = 0
        for k, parts in enumerate(pending):
            if not parts:
                continue
            values = np.concatenate([np.asarray(p).reshape(-1) for p in parts])
            counts, known = self.counts[k], self.known[k]
            for v, c in collections.Counter(map(str, values.tolist())).items():
                key = v if v in known else OTHER
                counts[key] = counts.get(key, 0) + c

    def snapshot(self) -> dict:
        self.fold()
        return {key: dict(self.counts[k]) for k, key in enumerate(self.keys)}


def merge_counts(snapshots: list[dict]) -> dict:
    out: dict = {}
    for snap in snapshots:
        for key, counts in snap.items():
            target = out.setdefault(key, {})
            for v, c in counts.items():
                target[v] = target.get(v, 0) + c
    return out


class OutputCollector:
    """Exposes category and prediction counts (merged over workers) for drift detection."""

    def __init__(self, model: str, version: str, source):
        self.model = model
        self.version = version
        self.source = source  # () -> {"categories": {...}, "labels": {...}, "values": FeatureStats snapshot}

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        snap = self.source()
        m, v = self.model, self.version
        cats = CounterMetricFamily("kiln_feature_category", "Categorical input values per feature, by the training "
                                   "split's categories from the model card (others as __other__), for drift.",
                                   labels=["model", "version", "feature", "category"])
        for feature, counts in snap["categories"].items():
            for cat, n in counts.items():
                cats.add_metric([m, v, feature, cat], n)
        yield cats
        labels = CounterMetricFamily("kiln_prediction_label", "Predicted labels, by the model card's reference "
                                     "labels (others as __other__), for prediction drift.",
                                     labels=["model", "version", "label"])
        for counts in snap["labels"].values():
            for label, n in counts.items():
                labels.add_metric([m, v, label], n)
        yield labels
        hist = HistogramMetricFamily("kiln_prediction_value", "Predicted values, bucketed at the model card's "
                                     "reference histogram edges, for prediction drift.", labels=["model", "version"])
        for st in snap["values"].values():
            cum = np.cumsum(st["counts"]).tolist()
            buckets = [(floatToGoString(e), cum[i]) for i, e in enumerate(st["edges"])]
            buckets.append(("+Inf", cum[-1]))
            hist.add_metric([m, v], buckets, st["sum"])
        yield hist


class FeatureCollector:
    """Exposes merged FeatureStats snapshots as a histogram family with per-feature buckets."""

    def __init__(self, model: str, version: str, source):
        self.model = model
        self.version = version
        self.source = source  # () -> {feature: {"edges", "counts", "sum", "missing"}}

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        labels = ["model", "version", "feature"]
        hist = HistogramMetricFamily(
            "kiln_feature_value", "Numeric input values per feature, bucketed at the training histogram's "
            "bin edges from the model card (for drift detection).", labels=labels,
        )
        missing = CounterMetricFamily("kiln_feature_missing", "Inputs received missing (null/NaN) per feature.",
                                      labels=labels)
        nonfinite = CounterMetricFamily("kiln_feature_nonfinite", "Inputs received as +/-Infinity per feature, "
                                        "left out of kiln_feature_value.", labels=labels)
        for name, st in self.source().items():
            cum = np.cumsum(st["counts"]).tolist()
            buckets = [(floatToGoString(e), cum[i]) for i, e in enumerate(st["edges"])]
            buckets.append(("+Inf", cum[-1]))
            hist.add_metric([self.model, self.version, name], buckets, st["sum"])
            missing.add_metric([self.model, self.version, name], st["missing"])
            nonfinite.add_metric([self.model, self.version, name], st.get("nonfinite", 0))
        yield hist
        yield missing
        yield nonfinite


class Metrics:
    def __init__(self, model: str, version: str, runtime: str, sha256: str, card: dict, schema):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # *_created series: noise for the operator, absent in multiprocess mode
        self.multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry()
        labels = ["model", "version"]
        reg = self.registry
        self.requests = Counter("kiln_inference_requests", "Inference requests by HTTP status code.",
                                labels + ["code"], registry=reg)
        self.duration = Histogram("kiln_inference_request_duration_seconds",
                                  "Time from receiving an inference request to answering it.", labels,
                                  buckets=DURATION_BUCKETS, registry=reg).labels(model, version)
        self.in_flight = Gauge("kiln_inference_in_flight", "Inference requests being served now.", labels,
                               multiprocess_mode="livesum", registry=reg).labels(model, version)
        self.batch_size = Histogram("kiln_inference_batch_size", "Rows per model invocation.", labels,
                                    buckets=BATCH_BUCKETS, registry=reg).labels(model, version)
        info = Gauge("kiln_model_info", "The model served (always 1).", labels + ["runtime", "sha256"],
                     multiprocess_mode="max", registry=reg)
        info.labels(model, version, runtime, sha256).set(1)
        self._codes: dict[int, object] = {}
        self._model, self._version = model, version

        numeric = schema.numeric_indices
        names = [schema.names[j] for j in numeric]
        self.features = FeatureStats(names, numeric, [training_edges(card, n) for n in names])
        categorical = [j for j, c in enumerate(schema.categorical) if c]
        self._categorical = categorical
        cat_names = [schema.names[j] for j in categorical]
        self.categories = CountStats(cat_names, [training_categories(card, n) for n in cat_names])
        classifier = schema.task == "classification"
        if classifier:
            self.labels = CountStats(["label"], [reference_labels(card, schema)])
            self.values = FeatureStats([], [], [])
        else:
            self.labels = CountStats([], [])
            self.values = FeatureStats(["label"], [0], [reference_edges(card)])
        self.payload_records = Counter("kiln_payload_log_records", "Payload-log records by outcome: written; "
                                       "dropped (queue full, S3 slow or down); failed (S3 refused the object).",
                                       labels + ["outcome"], registry=reg)
        self.payload_sample_rate = Gauge("kiln_payload_log_sample_rate", "The share of inference requests the "
                                         "payload log records now, 0..1.", labels, multiprocess_mode="max",
                                         registry=reg).labels(model, version)
        self._snapshot_path = None
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            self._snapshot_path = os.path.join(self.multiproc_dir, f"kiln_features_{os.getpid()}.json")
            self.exposition = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.exposition)
            self.exposition.register(FeatureCollector(model, version, self._merged_snapshots))
            self.exposition.register(OutputCollector(model, version, self._merged_outputs))
        else:
            self.exposition = self.registry
            self.registry.register(FeatureCollector(model, version, self.features.snapshot))
            self.registry.register(OutputCollector(model, version, self.output_snapshot))
        self._last_write = 0.0

    def request(self, code: int, seconds: float) -> None:
        child = self._codes.get(code)
        if child is None:
            child = self._codes[code] = self.requests.labels(self._model, self._version, str(code))
        child.inc()
        self.duration.observe(seconds)

    def batch(self, x, rows: int) -> None:
        self.batch_size.observe(rows)
        self.features.add(x)
        if self._categorical and not isinstance(x, np.ndarray):
            self.categories.add([x[j] for j in self._categorical])

    def predicted(self, label) -> None:
        """One request's predicted labels (or values), for prediction drift."""
        if self.labels.keys:
            self.labels.add([label])
        elif self.values.names and len(label):
            self.values.add(np.asarray(label, dtype=np.float64).reshape(-1, 1))

    def output_snapshot(self) -> dict:
        return {"categories": self.categories.snapshot(), "labels": self.labels.snapshot(),
                "values": self.values.snapshot()}

    # -- multiprocess feature snapshots --
    def write_snapshot(self, force: bool = False) -> None:
        if self._snapshot_path is None:
            return
        outputs_dirty = self.categories.dirty or self.labels.dirty or self.values.dirty
        if outputs_dirty or force:
            self.categories.dirty = self.labels.dirty = self.values.dirty = False
            _write_atomic(self._snapshot_path.replace("kiln_features_", "kiln_outputs_"),
                          json.dumps(self.output_snapshot()).encode())
        if not (self.features.dirty or force):
            return
        self.features.dirty = False
        _write_atomic(self._snapshot_path, json.dumps(self.features.snapshot()).encode())
        self._last_write = time.monotonic()

    def _merged_outputs(self) -> dict:
        snaps = [self.output_snapshot()]
        mine = self._snapshot_path.replace("kiln_features_", "kiln_outputs_")
        for path in sorted(glob.glob(os.path.join(self.multiproc_dir, "kiln_outputs_*.json"))):
            if path == mine:
                continue
            try:
                with open(path, "rb") as fh:
                    snaps.append(json.loads(fh.read()))
            except (OSError, ValueError):
                continue
        return {"categories": merge_counts([s["categories"] for s in snaps]),
                "labels": merge_counts([s["labels"] for s in snaps]),
                "values": merge([s["values"] for s in snaps])}

    def _merged_snapshots(self) -> dict:
        """This worker's live histograms plus every other worker's latest snapshot (at most ~1 s old)."""
        snaps = [self.features.snapshot()]
        for path in sorted(glob.glob(os.path.join(self.multiproc_dir, "kiln_features_*.json"))):
            if path == self._snapshot_path:
                continue
            try:
                with open(path, "rb") as fh:
                    snaps.append(json.loads(fh.read()))
            except (OSError, ValueError):
                continue
        return merge(snaps)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.exposition), CONTENT_TYPE_LATEST

    def close(self) -> None:
        self.write_snapshot()
        if self.multiproc_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiproc_dir)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
