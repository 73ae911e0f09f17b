"""Input drift: live feature histograms from the servers' /metrics against the training distributions
in the model card, by population stability index (PSI). Pure.

The server buckets each numeric feature at the training histogram's bin edges (e0 … e10), so
live bucket i (e(i-1), e(i)] lines up with training bin i; values at or below e0 join the
first bin, values above e10 form an overflow bin the training data never filled.
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
