"""Cleaning before the split: choose target and feature columns, drop columns, drop duplicate
rows, and apply the missing-value policy. Row-removing steps are counted; imputation is
not done here but inside the model Pipeline (kiln_trainer.preprocessing), so serving
repeats it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from kiln_trainer import columns
from kiln_trainer.errors import BadInput

log = logging.getLogger(__name__)

MIN_ROWS = 10


@dataclass
class Cleaned:
    X: pd.DataFrame
    y: pd.Series
    target: str
    counts: dict = field(default_factory=dict)
    columns: columns.Inspected | None = None


def _columns_list(frame: pd.DataFrame, limit: int = 20) -> str:
    cols = [str(c) for c in frame.columns]
    return ", ".join(cols[:limit]) + (" …" if len(cols) > limit else "")


def clean(frame: pd.DataFrame, dataset_spec: dict, cleaning_spec: dict, default_target: str | None) -> Cleaned:
    frame = frame.set_axis([str(c) for c in frame.columns], axis=1)  # copy-on-write: no copy of the data
    dupes = frame.columns[frame.columns.duplicated()].unique().tolist()
    if dupes:
        raise BadInput("spec.dataset", f"the dataset has several columns named {dupes[0]!r}; rename them in the export")
    target = dataset_spec.get("target") or default_target
    if not target:
        raise BadInput("spec.dataset.target", f"required for this dataset; columns: {_columns_list(frame)}")
    if target not in frame.columns:
        raise BadInput("spec.dataset.target", f"no column {target!r}; columns: {_columns_list(frame)}")

    dropped = list(cleaning_spec.get("dropColumns") or [])
    for i, col in enumerate(dropped):
        if col not in frame.columns:
            raise BadInput(f"spec.cleaning.dropColumns[{i}]", f"no column {col!r}; columns: {_columns_list(frame)}")
        if col == target:
            raise BadInput(f"spec.cleaning.dropColumns[{i}]", f"{col!r} is the target")

    wanted = dataset_spec.get("features")
    if wanted:
        for i, col in enumerate(wanted):
            if col not in frame.columns:
                raise BadInput(f"spec.dataset.features[{i}]", f"no column {col!r}; columns: {_columns_list(frame)}")
            if col == target:
                raise BadInput(f"spec.dataset.features[{i}]", f"{col!r} is the target")
            if col in dropped:
                raise BadInput(f"spec.dataset.features[{i}]", f"{col!r} is also in spec.cleaning.dropColumns")
        if len(set(wanted)) != len(wanted):
            raise BadInput("spec.dataset.features", "lists a column twice")
        features = list(wanted)
    else:
        features = [c for c in frame.columns if c != target and c not in dropped]
    if not features:
        raise BadInput("spec.dataset.features", "no feature columns are left")

    rows_in = len(frame)
    frame = frame[features + [target]]
    removed = {"dropDuplicates": 0, "missingTarget": 0, "missing": 0}

    if cleaning_spec.get("dropDuplicates"):
        before = len(frame)
        frame = frame.drop_duplicates()
        removed["dropDuplicates"] = before - len(frame)

    before = len(frame)
    frame = frame[frame[target].notna()]
    removed["missingTarget"] = before - len(frame)  # a label cannot be imputed

    policy = cleaning_spec.get("missing", "drop")
    imputed_cells = 0
    if policy == "drop":
        before = len(frame)
        frame = frame.dropna(subset=features)
        removed["missing"] = before - len(frame)
    else:
        imputed_cells = int(frame[features].isna().sum().sum())

    if len(frame) < MIN_ROWS:
        raise BadInput("spec.cleaning", f"only {len(frame)} rows left after cleaning (of {rows_in}); need {MIN_ROWS}")
    frame = frame.reset_index(drop=True)
    inspected = columns.inspect(frame[features])

    counts = {
        "rowsIn": rows_in,
        "rowsOut": len(frame),
        "rowsRemoved": removed,
        "droppedColumns": dropped,
        "missingPolicy": policy,
        "imputedCells": imputed_cells,
        "constantColumns": inspected.constant,
        "booleanColumns": inspected.booleans,
        "identifierLike": inspected.identifiers,
    }
    log.info("cleaning: %d → %d rows (removed %s)", rows_in, len(frame), removed)
    return Cleaned(inspected.X, frame[target], target, counts, inspected)
