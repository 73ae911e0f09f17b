"""ONNX export of the whole Pipeline (skl2onnx; xgboost through onnxmltools' converter), the
parity check against scikit-learn on the test split, and the card's `signature`.

Classifiers are converted with zipmap disabled, so the outputs are `label` and
`probabilities` (a float matrix, columns in features.classes order); regressors output one
prediction tensor [-1, 1] (`variable` for most estimators); the card's signature names them.
Parity: labels identical and probabilities within 1e-4 (regression: |diff| <= 1e-4 *
max(1, |prediction|)). Numeric inputs are float64 where the converters allow it (`export`
tries float64, then float32); tree classifiers use kiln_trainer.onnx_trees, which breaks
ties as scikit-learn does. An export that fails to convert or fails parity is not shipped:
the card records why (`exportWithheld`, kiln_contract.card), and joblib stays.
"""

from __future__ import annotations

import logging

import numpy as np

from kiln_trainer import onnx_trees
from kiln_trainer.algorithms import CLASSIFICATION
from kiln_trainer.preprocessing import FeatureLayout

log = logging.getLogger(__name__)

TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
TOLERANCE = 1e-4
LABEL = "label"


class ExportError(Exception):
    """ONNX is not available for this model; the message says why (goes into the card)."""


_xgb_registered = False
_patched = False


def _patch_skl2onnx() -> None:
    """skl2onnx 1.20 passes Python/numpy booleans for nodes_missing_value_tracks_true when it
    converts HistGradientBoosting*; protobuf 7 refuses booleans in an ints attribute. Coerce
    them to int (same meaning) until skl2onnx does."""
    global _patched
    if _patched:
        return
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    _patched = True


def register_xgboost() -> None:
    """Teach skl2onnx the xgboost estimators (onnxmltools' converter)."""
    global _xgb_registered
    if _xgb_registered:
        return
    try:
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from skl2onnx import update_registered_converter
        from skl2onnx.common.shape_calculator import (
            calculate_linear_classifier_output_shapes,
            calculate_linear_regressor_output_shapes,
        )
        from xgboost import XGBClassifier, XGBRegressor
    except ImportError as exc:
        raise ExportError(f"ONNX export of xgboost needs onnxmltools: {exc}") from exc
    update_registered_converter(
        XGBClassifier, "XGBoostXGBClassifier", calculate_linear_classifier_output_shapes, convert_xgboost,
        options={"nocl": [True, False], "zipmap": [True, False, "columns"]},
    )
    update_registered_converter(
        XGBRegressor, "XGBoostXGBRegressor", calculate_linear_regressor_output_shapes, convert_xgboost,
    )
    _xgb_registered = True


def _relabel(model, classes) -> None:
    """Map a label output of class indices (xgboost needs 0..n-1) back to the real classes."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    index_name = "label_index"
    for node in graph.node:
        node.output[:] = [index_name if o == LABEL else o for o in node.output]
    values = np.asarray(classes)
    if values.dtype.kind in "iub":
        tensor = numpy_helper.from_array(values.astype(np.int64), name="kiln_classes")
        elem = TensorProto.INT64
    else:
        tensor = helper.make_tensor("kiln_classes", TensorProto.STRING, [len(values)],
                                    [str(v).encode() for v in values])
        elem = TensorProto.STRING
    graph.initializer.append(tensor)
    graph.node.append(helper.make_node("Gather", ["kiln_classes", index_name], [LABEL], axis=0,
                                       name="KilnClassLabels"))
    for out in graph.output:
        if out.name == LABEL:
            out.type.tensor_type.elem_type = elem


def _rename_inputs(model, names: list[str]) -> None:
    """Name the graph's inputs (one per raw column, in features.names order) by the contract's rule
    (kiln_contract.card.onnx_input_name), whatever skl2onnx made of the column names."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != len(names):
        raise ExportError(f"the ONNX graph has {len(inputs)} inputs for {len(names)} columns")
    rename = {i.name: n for i, n in zip(inputs, names, strict=True) if i.name != n}
    if not rename:
        return
    taken = {o for node in graph.node for o in node.output} | initializers
    clash = [n for n in rename.values() if n in taken]
    if clash:
        raise ExportError(f"ONNX input name {clash[0]!r} is already used inside the graph")
    for inp in inputs:
        inp.name = rename.get(inp.name, inp.name)
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]


def convert(pipeline, layout: FeatureLayout, task: str, algorithm: str, encoded_classes=None,
            double: bool = False) -> bytes:
    """The Pipeline as ONNX; numeric inputs in float64 (`double`) or float32."""
    try:
        from skl2onnx import convert_sklearn
    except ImportError as exc:
        raise ExportError(f"skl2onnx is not installed: {exc}") from exc
    _patch_skl2onnx()
    onnx_trees.register()
    if algorithm == "xgboost":
        register_xgboost()
    estimator = pipeline.steps[-1][1]
    options = {id(estimator): {"zipmap": False}} if task == CLASSIFICATION else None
    try:
        model = convert_sklearn(pipeline, initial_types=layout.onnx_initial_types(double), options=options,
                                target_opset=TARGET_OPSET)
    except Exception as exc:  # converters raise anything from RuntimeError to NotImplementedError
        raise ExportError(f"skl2onnx cannot convert this pipeline: {type(exc).__name__}: {exc}") from exc
    if not layout.all_numeric:
        _rename_inputs(model, layout.onnx_names)
    if encoded_classes is not None:
        _relabel(model, encoded_classes)
    model.doc_string = "Kiln model: a whole scikit-learn Pipeline (imputation, scaling, encoding, estimator)"
    return model.SerializeToString()


def session(onnx_bytes: bytes):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def output_names(onnx_bytes: bytes) -> list[str]:
    import onnx

    return [o.name for o in onnx.load_model_from_string(onnx_bytes).graph.output]


def parity(onnx_bytes: bytes, layout: FeatureLayout, X, expected_labels, expected_proba, task: str,
           double: bool = False) -> dict:
    """Compare ONNX Runtime with scikit-learn on X (the test split).

    Outputs are taken by position: label (or prediction) first, then probabilities.
    """
    try:
        sess = session(onnx_bytes)
        outputs = sess.run(None, layout.onnx_feed(X, double))
    except Exception as exc:  # onnxruntime's own pybind errors: a graph it cannot load or run
        raise ExportError(f"ONNX Runtime cannot run the exported graph: {type(exc).__name__}: {exc}") from exc
    report = {"rows": int(len(X)), "tolerance": TOLERANCE, "inputs": "FP64" if double else "FP32"}
    if task == CLASSIFICATION:
        got = np.asarray(outputs[0]).ravel()
        mismatches = int(np.sum(got.astype(str) != np.asarray(expected_labels).astype(str)))
        report["labelMismatches"] = mismatches
        diff = 0.0
        if expected_proba is not None:
            diff = float(np.max(np.abs(np.asarray(outputs[1], dtype=float) - expected_proba)))
        report["maxAbsDiff"] = diff
        report["passed"] = mismatches == 0 and diff <= TOLERANCE
    else:
        got = np.asarray(outputs[0], dtype=float).ravel()
        expected = np.asarray(expected_labels, dtype=float).ravel()
        diff = np.abs(got - expected)
        report["maxAbsDiff"] = float(diff.max()) if diff.size else 0.0
        report["relative"] = True
        report["passed"] = bool(np.all(diff <= TOLERANCE * np.maximum(1.0, np.abs(expected))))
    return report


def signature(layout: FeatureLayout, task: str, has_proba: bool, outputs: list[str], double: bool = False) -> dict:
    """The card's `signature` (rule in kiln_contract.card); outputs named as in the graph."""
    if task == CLASSIFICATION:
        names = {"label": outputs[0]}
        if len(outputs) > 1:
            names["probabilities" if has_proba else "scores"] = outputs[1]  # scores: decision values
    else:
        names = {"label": outputs[0]}
    return {"inputs": layout.signature_inputs(double), "outputs": names}


def export(pipeline, layout: FeatureLayout, task: str, algorithm: str, encoded_classes, X_test, expected_labels,
           expected_proba) -> tuple[bytes, dict, bool]:
    """(ONNX bytes, parity report, double) of the first export that matches scikit-learn on the
    test split: numeric inputs in float64 first (scikit-learn computes in float64: no rounding of
    inputs or scaled values), then float32 (converters without float64 support: xgboost's).
    Raises ExportError with each attempt's reason when none matches."""
    reasons = []
    last_check = None
    for double in (True, False):
        what = "float64" if double else "float32"
        try:
            data = convert(pipeline, layout, task, algorithm, encoded_classes, double)
            check = parity(data, layout, X_test, expected_labels, expected_proba, task, double)
        except ExportError as exc:
            text = " ".join(str(exc).split())
            reasons.append(f"{what} inputs: {text[:300]}{'…' if len(text) > 300 else ''}")
            continue
        if check["passed"]:
            return data, check, double
        last_check = check
        reasons.append(f"{what} inputs: parity with scikit-learn failed on the test split: "
                       f"{check.get('labelMismatches', 0)} label mismatches, max abs diff {check['maxAbsDiff']:.3g}")
    err = ExportError("; ".join(reasons))
    err.parity = last_check
    raise err
