"""The training data's distribution per raw feature, kept in the model card as the reference
a drift check (PSI) compares serving traffic against.

numeric:      count, missing, mean, std, min, max, quantiles, and a 10-bin histogram
              {edges (11, ascending), counts (10)} over [min, max]
categorical:  count, missing, frequencies {value: share} of the most common values
              (the rest summed under "__other__")
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kiln_trainer.preprocessing import NUMERIC, FeatureLayout

BINS = 10
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
MAX_CATEGORIES = 50
OTHER = "__other__"


def numeric(series: pd.Series) -> dict:
    values = series.dropna().to_numpy(dtype=float)
    out = {"kind": NUMERIC, "count": int(values.size), "missing": int(series.isna().sum())}
    if values.size == 0:
        return out
    lo, hi = float(values.min()), float(values.max())
    counts, edges = np.histogram(values, bins=BINS, range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
    out.update({
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "min": lo,
        "max": hi,
        "quantiles": {f"p{round(q * 100):02d}": float(np.quantile(values, q)) for q in QUANTILES},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    })
    return out


def categorical(series: pd.Series) -> dict:
    present = series.dropna().astype(str)
    freq = present.value_counts(normalize=True, sort=True)
    top = freq.iloc[:MAX_CATEGORIES]
    frequencies = {str(k): float(v) for k, v in top.items()}
    if len(freq) > MAX_CATEGORIES:
        frequencies[OTHER] = float(freq.iloc[MAX_CATEGORIES:].sum())
    return {"kind": "categorical", "count": int(present.size), "missing": int(series.isna().sum()),
            "distinct": int(freq.size), "frequencies": frequencies}


def profile(X: pd.DataFrame, layout: FeatureLayout) -> dict:
    """Per raw feature of X (the training split, before the Pipeline: missing values still missing)."""
    return {c: numeric(X[c]) if layout.kinds[c] == NUMERIC else categorical(X[c]) for c in layout.names}
