"""What each feature column holds, decided once before the split: real-world exports carry
booleans, nullable integers, dates, free text, constants and identifiers next to the numbers.

    booleans            (True/False, "true"/"false" in any case, nullable) -> numeric 0/1, NaN missing
    nullable integers   (Parquet Int64, CSV integers with blanks)          -> numeric (float64, NaN missing)
    datetimes           (datetime64 columns; strings that are ISO dates)   -> refused, naming the column
    free text           (long, mostly distinct strings with spaces)        -> refused, naming the column
    constant columns    (one value, or none, in every row)                 -> dropped, a warning in the card
    identifier-like     (a distinct string or consecutive integer per row) -> kept, a warning in the card
    high-cardinality    (categorical, more levels than features.maxCategories) -> the most frequent levels
                        kept, the rest folded into one by the encoder (kiln_trainer.preprocessing)

Datetimes are refused rather than expanded: expanded parts (year, month, …) would be inputs the
user never sent, and the server would have to parse dates in both runtimes (ONNX has no date
type). The message says how to derive the parts in the export, or to drop the column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kiln_trainer.errors import BadInput

TRUE_FALSE = {"true": 1.0, "false": 0.0}
SAMPLE = 2000  # values looked at when judging a string column
MIN_ROWS_FOR_ID = 20
TEXT_MIN_MEDIAN_LENGTH = 25
TEXT_MIN_DISTINCT_SHARE = 0.5
TEXT_MIN_SPACED_SHARE = 0.5
DATE_SHARE = 0.9
_DATE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}([T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?\s*$"
                   r"|^\s*\d{1,2}/\d{1,2}/\d{4}(\s+\d{1,2}:\d{2}(:\d{2})?)?\s*$")


@dataclass
class Inspected:
    X: pd.DataFrame
    booleans: list[str] = field(default_factory=list)
    constant: list[str] = field(default_factory=list)
    identifiers: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _show(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "…")


def _strings(s: pd.Series) -> pd.Series:
    """The non-missing values of an object/str column, as str, at most SAMPLE of them."""
    values = s.dropna()
    if len(values) > SAMPLE:
        values = values.sample(SAMPLE, random_state=0)
    return values.map(str)


def is_string_column(s: pd.Series) -> bool:
    """Object, str and category columns: what the model takes as strings unless converted here."""
    return not (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s)
                or pd.api.types.is_datetime64_any_dtype(s) or pd.api.types.is_timedelta64_dtype(s))


def boolean_values(s: pd.Series) -> pd.Series | None:
    """A column of booleans (Python bools, or the strings true/false in any case; missing allowed)
    as float 0/1 with NaN; None when the column holds anything else."""
    if pd.api.types.is_bool_dtype(s):
        return pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan), index=s.index, name=s.name)
    if not is_string_column(s):
        return None
    values = s.dropna()
    if values.empty:
        return None
    kinds = set(map(type, values.head(SAMPLE)))
    if kinds <= {bool, np.bool_}:
        if not all(isinstance(v, bool | np.bool_) for v in values):
            return None
        return s.map(lambda v: float(v) if isinstance(v, bool | np.bool_) else np.nan).astype("float64")
    if kinds <= {str}:
        if not values.head(SAMPLE).str.strip().str.lower().isin(TRUE_FALSE).all():
            return None  # decided on a sample first: most string columns are not booleans
        lowered = values.str.strip().str.lower()
        if not lowered.isin(TRUE_FALSE).all():
            return None
        out = s.astype(object).map(lambda v: TRUE_FALSE[v.strip().lower()] if isinstance(v, str) else np.nan)
        return out.astype("float64")
    return None


def looks_like_dates(s: pd.Series) -> str | None:
    """An example value when the column holds dates or times, else None."""
    if pd.api.types.is_datetime64_any_dtype(s) or isinstance(s.dtype, pd.PeriodDtype):
        values = s.dropna()
        return str(values.iloc[0]) if len(values) else "a datetime"
    if not is_string_column(s):
        return None
    values = _strings(s)
    if values.empty:
        return None
    kinds = set(map(type, s.dropna().head(50)))
    if kinds and not kinds <= {str}:  # datetime/date objects in an object column
        import datetime as dt

        if any(issubclass(k, dt.date | pd.Timestamp) for k in kinds):
            return str(s.dropna().iloc[0])
        return None
    matched = values.str.match(_DATE)
    if matched.mean() >= DATE_SHARE:
        return values[matched].iloc[0]
    return None


def looks_like_text(s: pd.Series) -> bool:
    """Free text: long strings, mostly distinct, mostly with spaces (a comment, a description)."""
    if not is_string_column(s):
        return False
    values = _strings(s)
    if len(values) < 10:
        return False
    lengths = values.str.len()
    return bool(lengths.median() >= TEXT_MIN_MEDIAN_LENGTH
                and values.nunique() / len(values) >= TEXT_MIN_DISTINCT_SHARE
                and values.str.contains(r"\s", regex=True).mean() >= TEXT_MIN_SPACED_SHARE)


def is_constant(s: pd.Series) -> bool:
    """One value in every row (or none in any): no information for a model."""
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)  # min/max: no hashing of a million floats
        nan = np.isnan(v)
        if nan.all():
            return True
        return not nan.any() and float(v.min()) == float(v.max())
    return s.nunique(dropna=True) <= 1 and (s.isna().all() or not s.isna().any())


def looks_like_identifier(s: pd.Series) -> bool:
    """A distinct value in every row that is a string, or an integer run (1, 2, 3, … in any order)."""
    n = len(s)
    string, integer = is_string_column(s), pd.api.types.is_integer_dtype(s)
    if n < MIN_ROWS_FOR_ID or not (string or integer) or s.isna().any():
        return False
    if integer:  # a run: max - min == n - 1 and every value distinct
        values = s.to_numpy(dtype=np.int64)
        return int(values.max()) - int(values.min()) == n - 1 and s.nunique() == n
    return s.nunique() == n


def inspect(X: pd.DataFrame) -> Inspected:
    """Check and convert the feature columns (see the module's docstring)."""
    dupes = X.columns[X.columns.duplicated()].unique().tolist()
    if dupes:
        raise BadInput("spec.dataset", f"the dataset has several columns named {_show(str(dupes[0]))}; "
                       "rename them in the export")
    out = Inspected(X)
    columns, converted = {}, {}
    for name in X.columns:
        s = X[name]
        example = looks_like_dates(s)
        if example is not None:
            raise BadInput(f"dataset column {_show(name)}",
                           f"holds dates/times (e.g. {example!r}); Kiln does not expand datetimes: derive numeric "
                           "columns (year, month, day of week, seconds since the epoch) in the export, or list it in "
                           "spec.cleaning.dropColumns")
        as_bool = boolean_values(s)
        if as_bool is not None:
            out.booleans.append(name)
            s = converted[name] = as_bool
        elif looks_like_text(s):
            raise BadInput(f"dataset column {_show(name)}",
                           "holds free text (long, mostly distinct strings); Kiln does not encode text: list it in "
                           "spec.cleaning.dropColumns, or derive categories or numbers from it in the export")
        elif isinstance(s.dtype, pd.CategoricalDtype):
            s = converted[name] = s.astype(object)
        if is_constant(s):
            out.constant.append(name)
            continue
        if looks_like_identifier(s):
            out.identifiers.append(name)
            out.warnings.append(f"column {_show(name)} has a distinct value in every row and looks like an "
                                "identifier: it cannot generalise; list it in spec.cleaning.dropColumns unless it "
                                "carries meaning")
        columns[name] = s
    if out.constant:
        out.warnings.append(f"constant column(s) dropped (one value in every row): "
                            f"{', '.join(_show(c) for c in out.constant[:20])}")
    if not columns:
        raise BadInput("spec.dataset.features", "no feature columns are left: every one is constant")
    # the frame as it came, less the dropped columns, with the converted ones replaced: columns left
    # alone are not copied (copy-on-write), which matters for a table of a million rows
    converted = {c: v for c, v in converted.items() if c in columns}
    kept = X.drop(columns=out.constant) if out.constant else X
    out.X = kept.assign(**converted) if converted else kept
    return out


def kept_levels(s: pd.Series, cap: int) -> tuple[list[str], int]:
    """(levels kept, sorted: the `cap` most frequent, ties broken by value; how many levels there are).

    `s` holds the training split's values as the encoder receives them (str)."""
    counts = s.value_counts(dropna=False)
    levels = sorted(((str(v), int(c)) for v, c in counts.items()), key=lambda kv: (-kv[1], kv[0]))
    return sorted(v for v, _ in levels[:cap]), len(levels)
