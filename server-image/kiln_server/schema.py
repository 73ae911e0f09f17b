"""What a model takes and gives, as the server sees it: raw features in, label (+ probabilities) out.

Built from the model card (features.names are the raw input columns, in order) and the
loaded runtime. A feature is *categorical* when the model takes it as strings (BYTES);
every other feature is numeric.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# numpy dtype kind/size -> Open Inference Protocol datatype
_V2_TYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.uint16): "UINT16",
    np.dtype(np.uint32): "UINT32",
    np.dtype(np.uint64): "UINT64",
    np.dtype(np.float16): "FP16",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def v2_datatype(dtype: np.dtype) -> str:
    return _V2_TYPES.get(np.dtype(dtype), "BYTES")


@dataclass
class Schema:
    names: list[str]
    categorical: list[bool]
    task: str  # "classification" | "regression"
    classes: list | None
    float_dtype: np.dtype  # what numeric features are built as (float32 for ONNX, float64 for sklearn)
    # Filled at warm-up:
    label_datatype: str = "FP64"
    proba_datatype: str = "FP64"
    n_classes: int = 0
    nan_ok: np.ndarray = field(default=None)  # bool per feature: may this feature be NaN?
    # {feature: ONNX input name} where they differ (the card's signature maps them; clients never see
    # ONNX names: every input is named as the user's column)
    onnx_inputs: dict = field(default_factory=dict)
    # features trained from boolean columns (the card's features.booleans): numeric 0/1 to the model,
    # and JSON true/false is accepted for them in V1 feature values
    booleans: frozenset = frozenset()
    index: dict[str, int] = field(init=False)

    def __post_init__(self):
        self.index = {n: i for i, n in enumerate(self.names)}
        if self.nan_ok is None:
            self.nan_ok = np.ones(len(self.names), dtype=bool)

    @property
    def n_features(self) -> int:
        return len(self.names)

    @property
    def all_numeric(self) -> bool:
        return not any(self.categorical)

    @property
    def numeric_indices(self) -> list[int]:
        return [i for i, c in enumerate(self.categorical) if not c]

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification" and self.n_classes > 0

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("label", "probabilities") if self.is_classifier else ("label",)

    def input_metadata(self) -> list[dict]:
        """The inputs as $metadata_tensor objects: one [-1, n] tensor, or one [-1] tensor per feature."""
        if self.all_numeric:
            return [{"name": "input", "datatype": v2_datatype(self.float_dtype), "shape": [-1, self.n_features]}]
        return [
            {"name": n, "datatype": "BYTES" if c else v2_datatype(self.float_dtype), "shape": [-1]}
            for n, c in zip(self.names, self.categorical, strict=True)
        ]

    def output_metadata(self) -> list[dict]:
        out = [{"name": "label", "datatype": self.label_datatype, "shape": [-1]}]
        if self.is_classifier:
            out.append({"name": "probabilities", "datatype": self.proba_datatype, "shape": [-1, self.n_classes]})
        return out


def card_features(card: dict) -> tuple[list[str], dict, dict]:
    """(names, dtypes by name, categories by name) from a card, tolerant of list or mapping forms."""
    features = card.get("features") or {}
    names = [str(n) for n in features.get("names") or []]
    dtypes = features.get("dtypes") or {}
    if isinstance(dtypes, list):
        dtypes = dict(zip(names, dtypes, strict=False))
    categories = features.get("categories") or {}
    if isinstance(categories, list):
        categories = {c: [] for c in categories}
    return names, dtypes, categories


STRING_DTYPES = ("object", "category", "string", "str", "bytes")


def categorical_from_card(card: dict) -> list[bool]:
    """Which raw features are strings, from the card alone (the sklearn runtime's view)."""
    names, dtypes, categories = card_features(card)
    out = []
    for n in names:
        dt = str(dtypes.get(n, "")).lower()
        values = categories.get(n) or []
        stringy = dt.startswith(STRING_DTYPES) or any(isinstance(v, str) for v in values)
        out.append(stringy)
    return out


def booleans_from_card(card: dict) -> frozenset:
    """Names of the features the trainer made from boolean columns (features.booleans)."""
    values = (card.get("features") or {}).get("booleans") or []
    return frozenset(str(v) for v in values if isinstance(v, str))
