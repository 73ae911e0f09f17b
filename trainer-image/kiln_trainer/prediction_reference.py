"""The reference a prediction-drift check compares serving answers with: what the trained model predicted on
the held-out (test) split, kept in the model card under `predictions`.

classification  {"kind": "categorical", "split": "test", "count", "frequencies": {label: share}}
                labels written as str() of the Python value, as the server counts them
regression      {"kind": "numeric", "split": "test", "count", "mean", "std", "min", "max", "quantiles",
                 "histogram": {"edges": [11 ascending], "counts": [10]}}  (as a numeric feature's profile)

The server counts predicted labels by these labels (others as "__other__") and buckets predicted values at
these edges; the operator scores them by PSI as "output:label" (kiln_operator.drift).
"""

from __future__ import annotations

import collections

import numpy as np
import pandas as pd

from kiln_trainer import distributions

MAX_LABELS = 50  # as distributions.MAX_CATEGORIES: the rest are summed under "__other__"


def _label(v) -> str:
    return str(v.item() if isinstance(v, np.generic) else v)


def reference(task: str, predicted) -> dict:
    values = np.asarray(predicted).reshape(-1)
    if task == "classification":
        counts = collections.Counter(_label(v) for v in values.tolist())
        total = sum(counts.values())
        ranked = counts.most_common()
        freq = {k: n / total for k, n in ranked[:MAX_LABELS]} if total else {}
        if len(ranked) > MAX_LABELS:
            freq[distributions.OTHER] = sum(n for _, n in ranked[MAX_LABELS:]) / total
        return {"kind": "categorical", "split": "test", "count": int(total), "frequencies": freq}
    return {**distributions.numeric(pd.Series(values.astype(float))), "split": "test"}
