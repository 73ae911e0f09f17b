"""Drift: live inputs and predictions from the servers' /metrics against the references in the model card,
by population stability index (PSI). Pure.

Numeric inputs: the server buckets each numeric feature at the training histogram's bin edges (e0 … e10),
so live bucket i (e(i-1), e(i)] lines up with training bin i; values at or below e0 join the
first bin, values above e10 form an overflow bin the training data never filled.

Categorical inputs: the server counts values by the training split's categories (features.distributions
frequencies), every other value as "__other__"; PSI over those categories, the training share of
"__other__" being what the trainer folded there (0 when nothing was), floored at EPSILON like an empty bin.

Predictions (scored as "output:label"): a classifier's predicted labels against the test split's predicted
label frequencies, a regressor's predicted values against the test split's predicted-value histogram (the
card's `predictions` reference, written by the trainer); the same two PSI forms.

PSI, not chi-square, for all three: one scale and one threshold for every score, independent of the sample
size (chi-square's statistic grows with the live count, so a fixed threshold would flag any tiny shift once
enough traffic has been seen), and the same 0.1 / 0.2 / 0.25 rules of thumb hold.
"""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

EPSILON = 1e-4  # share given to an empty bin, so PSI stays finite


def live_histograms(text: str) -> dict[str, dict[float, float]]:
    """{feature: {le: cumulative count}} from a server's /metrics text."""
    out: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kiln_feature_value_bucket":
                feature = out.setdefault(s.labels["feature"], {})
                le = float(s.labels["le"])
                feature[le] = feature.get(le, 0.0) + s.value
    return out


def merge(a: dict[str, dict[float, float]], b: dict[str, dict[float, float]]) -> dict[str, dict[float, float]]:
    out = {f: dict(v) for f, v in a.items()}
    for feature, buckets in b.items():
        target = out.setdefault(feature, {})
        for le, n in buckets.items():
            target[le] = target.get(le, 0.0) + n
    return out


def psi(train_counts: list[float], live_cumulative: dict[float, float]) -> tuple[float, int]:
    """(PSI, live sample count) of one feature."""
    edges = sorted(live_cumulative)
    cum = [live_cumulative[e] for e in edges]
    per_bucket = [cum[0]] + [cum[i] - cum[i - 1] for i in range(1, len(cum))]
    bins = len(train_counts)
    # buckets: (-inf, e0], (e0, e1] … (e9, e10], (e10, +inf)  → bins 1..10 plus overflow
    live = [per_bucket[0] + per_bucket[1]] + per_bucket[2:bins + 1] + [sum(per_bucket[bins + 1:])]
    train = list(train_counts) + [0.0]
    total_live, total_train = sum(live), sum(train)
    if total_live <= 0 or total_train <= 0:
        return 0.0, int(total_live)
    value = 0.0
    for lv, tr in zip(live, train, strict=True):
        p, q = max(lv / total_live, EPSILON), max(tr / total_train, EPSILON)
        value += (p - q) * math.log(p / q)
    return value, int(total_live)


def assess(distributions: dict, live: dict[str, dict[float, float]], threshold: float,
           min_samples: int) -> tuple[bool | None, dict[str, float]]:
    """(drifted?, {feature: psi}) — None when no feature has enough live values to judge."""
    scores: dict[str, float] = {}
    for feature, dist in distributions.items():
        hist = dist.get("histogram") if isinstance(dist, dict) else None
        if not hist or feature not in live:
            continue
        value, n = psi(hist["counts"], live[feature])
        if n >= min_samples:
            scores[feature] = round(value, 4)
    if not scores:
        return None, {}
    return any(v > threshold for v in scores.values()), scores


OTHER = "__other__"
OUTPUT = "output:label"  # the score key of the predictions (input features keep their own names)


def live_counts(text: str) -> dict:
    """{"categories": {feature: {category: n}}, "labels": {label: n}, "values": {le: cumulative n}} from a
    server's /metrics text (kiln_feature_category_total, kiln_prediction_label_total, kiln_prediction_value)."""
    out: dict = {"categories": {}, "labels": {}, "values": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kiln_feature_category_total":
                feature = out["categories"].setdefault(s.labels["feature"], {})
                feature[s.labels["category"]] = feature.get(s.labels["category"], 0.0) + s.value
            elif s.name == "kiln_prediction_label_total":
                out["labels"][s.labels["label"]] = out["labels"].get(s.labels["label"], 0.0) + s.value
            elif s.name == "kiln_prediction_value_bucket":
                le = float(s.labels["le"])
                out["values"][le] = out["values"].get(le, 0.0) + s.value
    return out


def merge_counts(a: dict, b: dict) -> dict:
    out = {"categories": {f: dict(v) for f, v in a.get("categories", {}).items()},
           "labels": dict(a.get("labels", {})), "values": dict(a.get("values", {}))}
    for feature, counts in b.get("categories", {}).items():
        target = out["categories"].setdefault(feature, {})
        for k, n in counts.items():
            target[k] = target.get(k, 0.0) + n
    for key in ("labels", "values"):
        for k, n in b.get(key, {}).items():
            out[key][k] = out[key].get(k, 0.0) + n
    return out


def categorical_psi(frequencies: dict, live: dict[str, float]) -> tuple[float, int]:
    """(PSI, live sample count) of category shares: training `frequencies` {value: share} vs live counts."""
    keys = [str(k) for k in frequencies if str(k) != OTHER] + [OTHER]
    train = {str(k): float(v) for k, v in frequencies.items()}
    counts = {k: 0.0 for k in keys}
    for k, n in live.items():
        counts[k if k in counts else OTHER] += n
    total_live = sum(counts.values())
    total_train = sum(train.get(k, 0.0) for k in keys)
    if total_live <= 0 or total_train <= 0:
        return 0.0, int(total_live)
    value = 0.0
    for k in keys:
        p, q = max(counts[k] / total_live, EPSILON), max(train.get(k, 0.0) / total_train, EPSILON)
        value += (p - q) * math.log(p / q)
    return value, int(total_live)


def assess_all(card: dict, live: dict[str, dict[float, float]], counts: dict, threshold: float,
               min_samples: int) -> tuple[bool | None, dict[str, float]]:
    """(drifted?, {feature or OUTPUT: psi}) over numeric and categorical inputs and the predictions — None when
    nothing has enough live values to judge."""
    distributions = (card.get("features") or {}).get("distributions") or {}
    _, scores = assess(distributions, live, threshold, min_samples)
    for feature, dist in distributions.items():
        freq = dist.get("frequencies") if isinstance(dist, dict) else None
        if not isinstance(freq, dict) or feature not in counts.get("categories", {}):
            continue
        value, n = categorical_psi(freq, counts["categories"][feature])
        if n >= min_samples:
            scores[feature] = round(value, 4)
    ref = card.get("predictions") if isinstance(card.get("predictions"), dict) else {}
    if isinstance(ref.get("frequencies"), dict) and counts.get("labels"):
        value, n = categorical_psi(ref["frequencies"], counts["labels"])
        if n >= min_samples:
            scores[OUTPUT] = round(value, 4)
    elif isinstance(ref.get("histogram"), dict) and counts.get("values"):
        value, n = psi(ref["histogram"]["counts"], counts["values"])
        if n >= min_samples:
            scores[OUTPUT] = round(value, 4)
    if not scores:
        return None, {}
    return any(v > threshold for v in scores.values()), scores
