"""Feature engineering inside the model: one ColumnTransformer (imputation, scaling, polynomial
terms on numeric columns; imputation and one-hot encoding on categorical columns) that
becomes the first step of the saved Pipeline, so a server feeds raw columns only.

FeatureLayout also fixes how raw columns are handed to the model — the rule of the ONNX
signature in kiln_contract.card: all-numeric features travel as ONE float matrix (input
"input", columns in features.names order); with categorical features, one input per raw
column. Such an input is named as its column when the column's name is a plain identifier
(`[A-Za-z_][A-Za-z0-9_]*`, at most 64 characters, none of the graph's reserved names);
otherwise `c<position>_<the name with other characters as _, cut to 40>`; the signature's
`feature` key maps each input back to the user's column (kiln_contract.card.onnx_input_name).
Servers speak the user's names; the ONNX names never leave the card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    PolynomialFeatures,
    RobustScaler,
    StandardScaler,
)

from kiln_contract.card import onnx_input_names

NUMERIC = "numeric"
CATEGORICAL = "categorical"
SCALERS = {"standard": StandardScaler, "minmax": MinMaxScaler, "robust": RobustScaler}
ONNX_MATRIX_INPUT = "input"
MISSING_CATEGORY = ""  # how a missing categorical value is fed to the model (both runtimes)
# Estimators invariant to per-feature scaling: the scaler is left out (same model, and no
# float32 rounding of scaled values to move samples across split thresholds in ONNX).
SCALE_INVARIANT = frozenset({"decision_tree", "random_forest", "gradient_boosting", "xgboost"})
_MATRIX_COLUMN = re.compile(r"\bx(\d+)\b")


def column_kind(series: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return NUMERIC
    return CATEGORICAL


@dataclass
class FeatureLayout:
    names: list[str]
    kinds: dict[str, str]

    @classmethod
    def of(cls, X: pd.DataFrame) -> FeatureLayout:
        return cls(list(X.columns), {c: column_kind(X[c]) for c in X.columns})

    @property
    def numeric(self) -> list[str]:
        return [c for c in self.names if self.kinds[c] == NUMERIC]

    @property
    def categorical(self) -> list[str]:
        return [c for c in self.names if self.kinds[c] == CATEGORICAL]

    @property
    def all_numeric(self) -> bool:
        return not self.categorical

    def normalise(self, X: pd.DataFrame) -> pd.DataFrame:
        """Numeric columns as float64 (NaN = missing), categorical ones as Python str objects
        ("" = missing, the form an ONNX string tensor can carry)."""
        out = {}
        for c in self.names:
            s = X[c]
            if self.kinds[c] == NUMERIC:
                out[c] = as_float(s)
            else:
                values = s.astype(object)
                out[c] = values.map(str).where(values.notna(), MISSING_CATEGORY).astype(object)
        return pd.DataFrame(out, index=X.index)

    @property
    def onnx_names(self) -> list[str]:
        """ONNX input name per raw column (one input per column; see the module's docstring)."""
        return onnx_input_names(self.names)

    def model_input(self, X: pd.DataFrame):
        """What the Pipeline is fitted on and called with: a float matrix when all numeric."""
        X = self.normalise(X)
        return X.to_numpy(dtype=np.float64) if self.all_numeric else X

    def onnx_feed(self, X: pd.DataFrame, double: bool = False) -> dict[str, np.ndarray]:
        X = self.normalise(X)
        ftype = np.float64 if double else np.float32
        if self.all_numeric:
            return {ONNX_MATRIX_INPUT: X.to_numpy(dtype=ftype)}
        feed = {}
        for c, onnx_name in zip(self.names, self.onnx_names, strict=True):
            if self.kinds[c] == NUMERIC:
                feed[onnx_name] = X[c].to_numpy(dtype=ftype).reshape(-1, 1)
            else:
                feed[onnx_name] = X[c].to_numpy(dtype=object).reshape(-1, 1)
        return feed

    def onnx_initial_types(self, double: bool = False) -> list:
        """skl2onnx's initial types: named as the raw columns (its ColumnTransformer converter finds
        columns by these names); kiln_trainer.onnx_export renames the graph's inputs afterwards."""
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType, StringTensorType

        num = DoubleTensorType if double else FloatTensorType
        if self.all_numeric:
            return [(ONNX_MATRIX_INPUT, num([None, len(self.names)]))]
        return [(c, num([None, 1]) if self.kinds[c] == NUMERIC else StringTensorType([None, 1])) for c in self.names]

    def signature_inputs(self, double: bool = False) -> list[dict]:
        fp = "FP64" if double else "FP32"
        if self.all_numeric:
            return [{"name": ONNX_MATRIX_INPUT, "datatype": fp, "shape": [-1, len(self.names)]}]
        return [
            {"name": o, "feature": c, "datatype": fp if self.kinds[c] == NUMERIC else "BYTES", "shape": [-1, 1]}
            for c, o in zip(self.names, self.onnx_names, strict=True)
        ]


def as_float(s: pd.Series) -> pd.Series:
    """A numeric or boolean column as float64, missing values (None, pd.NA, NaN) as NaN: nullable
    integer and boolean columns (Parquet's Int64, boolean) cannot be cast with astype alone."""
    if s.dtype == np.float64:
        return s
    return pd.Series(s.to_numpy(dtype=np.float64, na_value=np.nan), index=s.index, name=s.name)


def build_preprocessor(layout: FeatureLayout, features_spec: dict, missing_policy: str,
                       scale: bool = True, categories: dict | None = None) -> ColumnTransformer:
    """`categories`: the levels each categorical column keeps ({column: sorted levels}); the others,
    and levels never seen, are folded into one (one-hot: all zeros; ordinal: -1). None: all levels."""
    impute = missing_policy != "drop"
    num_steps = []
    if impute:
        num_steps.append(("impute", SimpleImputer(strategy=missing_policy)))
    scaling = features_spec.get("scaling", "none")
    if scaling != "none" and scale:
        num_steps.append(("scale", SCALERS[scaling]()))
    degree = int(features_spec.get("polynomialDegree", 1))
    if degree > 1:
        num_steps.append(("poly", PolynomialFeatures(degree=degree, include_bias=False)))

    cat_steps = []
    if impute:
        # mean and median have no meaning for strings: categorical columns take the most frequent value
        cat_steps.append(("impute", SimpleImputer(missing_values=MISSING_CATEGORY, strategy="most_frequent")))
    cats = [categories[c] for c in layout.categorical] if categories else "auto"
    if features_spec.get("oneHot", True):
        cat_steps.append(("onehot", OneHotEncoder(categories=cats, handle_unknown="ignore", sparse_output=False)))
    else:
        cat_steps.append(("ordinal", OrdinalEncoder(categories=cats, handle_unknown="use_encoded_value",
                                                    unknown_value=-1)))

    num = Pipeline(num_steps) if num_steps else "passthrough"
    if layout.all_numeric:
        # fitted on a float matrix: columns by position
        transformers = [("num", num, list(range(len(layout.names))))]
    else:
        transformers = []
        if layout.numeric:
            transformers.append(("num", num, layout.numeric))
        transformers.append(("cat", Pipeline(cat_steps), layout.categorical))
    return ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)


def transformed_names(preprocessor: ColumnTransformer, layout: FeatureLayout) -> list[str]:
    """Names of the columns the estimator sees, for importances ("num__x0" → raw names)."""
    try:
        names = list(preprocessor.get_feature_names_out())
    except Exception:  # some transformers cannot name their output
        return []
    out = []
    for n in names:
        n = n.split("__", 1)[-1]
        if layout.all_numeric:
            # matrix columns are x0, x1, … (possibly combined by polynomial terms: "x0 x1", "x0^2")
            n = _MATRIX_COLUMN.sub(lambda m: layout.names[int(m.group(1))], n)
        out.append(n)
    return out
