"""ONNX for scikit-learn's decision trees and random forests (classifiers and regressors) that gives
scikit-learn's labels on every row, ties included, and its regression values in float64.

skl2onnx's converter uses TreeEnsembleClassifier, which adds the trees' class probabilities in
float32: where two classes tie in scikit-learn (10 trees against 10), float32 rounding decides the
tie, and sometimes for the other class. Here the graph does what scikit-learn does, in the same
precision:

1. the features are cast to float32 (scikit-learn's trees do the same), then to double, and ONE
   TreeEnsembleRegressor (ai.onnx.ml opset 3, thresholds as a double tensor) gives, per tree, the
   index of the leaf the row reaches — leaf numbers are small integers, exact in any precision;
2. a double table [all nodes of all trees, classes] holds each leaf's class probabilities,
   normalised exactly as DecisionTreeClassifier.predict_proba normalises them; Gather + ReduceSum
   over trees + Div by the tree count give RandomForestClassifier.predict_proba in float64;
3. ArgMax (first index on ties, as numpy's argmax) picks the class; Gather maps it to the label.
   Probabilities leave the graph in the input's precision; the label comes from the double sums.

Regressors use the same leaf table (one column: the leaf's value), summed and divided in float64.
Registered for the Pipeline's final step by `register()` (kiln_trainer.onnx_export).
"""

from __future__ import annotations

import numpy as np

_registered = False


def _leaf_tables(estimators, classifier: bool = True) -> tuple[np.ndarray, list[int]]:
    """(table [sum of node counts, n_classes (1 for a regressor)] float64, offset of each tree's first node)."""
    tables, offsets, offset = [], [], 0
    for est in estimators:
        tree = est.tree_
        value = np.asarray(tree.value[:, 0, :], dtype=np.float64)
        if classifier:
            # DecisionTreeClassifier.predict_proba: proba / proba.sum(axis=1), a zero sum left alone
            normalizer = value.sum(axis=1)[:, np.newaxis]
            normalizer[normalizer == 0.0] = 1.0
            value = value / normalizer
        tables.append(value)
        offsets.append(offset)
        offset += tree.node_count
    return np.vstack(tables), offsets


def _ensemble_attributes(estimators) -> dict:
    """TreeEnsembleRegressor attributes whose target t (one per tree) is the node id of t's leaf."""
    from onnx import helper
    from onnx.onnx_pb import TensorProto

    a = {k: [] for k in ("nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes",
                         "nodes_truenodeids", "nodes_falsenodeids", "nodes_missing_value_tracks_true",
                         "target_treeids", "target_nodeids", "target_ids")}
    values, weights = [], []
    for t, est in enumerate(estimators):
        tree = est.tree_
        missing_left = getattr(tree, "missing_go_to_left", None)
        for node in range(tree.node_count):
            left, right = int(tree.children_left[node]), int(tree.children_right[node])
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(node)
            if left == -1:  # a leaf
                a["nodes_featureids"].append(0)
                a["nodes_modes"].append("LEAF")
                a["nodes_truenodeids"].append(0)
                a["nodes_falsenodeids"].append(0)
                a["nodes_missing_value_tracks_true"].append(0)
                values.append(0.0)
                a["target_treeids"].append(t)
                a["target_nodeids"].append(node)
                a["target_ids"].append(t)
                weights.append(float(node))
            else:
                a["nodes_featureids"].append(int(tree.feature[node]))
                a["nodes_modes"].append("BRANCH_LEQ")
                a["nodes_truenodeids"].append(left)
                a["nodes_falsenodeids"].append(right)
                a["nodes_missing_value_tracks_true"].append(
                    int(bool(missing_left[node])) if missing_left is not None else 0)
                values.append(float(tree.threshold[node]))
    a["nodes_values_as_tensor"] = helper.make_tensor("nodes_values", TensorProto.DOUBLE, [len(values)], values)
    a["target_weights_as_tensor"] = helper.make_tensor("target_weights", TensorProto.DOUBLE, [len(weights)],
                                                       weights)
    a["n_targets"] = len(estimators)
    a["aggregate_function"] = "SUM"
    a["post_transform"] = "NONE"
    return a


def _summed(scope, operator, container, classifier: bool) -> str:
    """Nodes computing the estimator's float64 predict_proba (classifier) or predict [N, 1]; returns
    the name of that double tensor."""
    from onnx.onnx_pb import TensorProto

    op = operator.raw_operator
    estimators = list(op.estimators_) if hasattr(op, "estimators_") else [op]
    n_trees = len(estimators)

    def name(seed: str) -> str:
        return scope.get_unique_variable_name(seed)

    x = operator.inputs[0].full_name
    x32, x64 = name("kiln_tree_x32"), name("kiln_tree_x64")
    container.add_node("Cast", x, x32, to=TensorProto.FLOAT, name=scope.get_unique_operator_name("Cast"))
    container.add_node("Cast", x32, x64, to=TensorProto.DOUBLE, name=scope.get_unique_operator_name("Cast"))

    leaves = name("kiln_tree_leaves")
    container.add_node("TreeEnsembleRegressor", x64, leaves, op_domain="ai.onnx.ml", op_version=3,
                       name=scope.get_unique_operator_name("KilnTreeLeaves"), **_ensemble_attributes(estimators))
    table, offsets = _leaf_tables(estimators, classifier)
    leaves_i = name("kiln_tree_leaf_ids")
    container.add_node("Cast", leaves, leaves_i, to=TensorProto.INT64, name=scope.get_unique_operator_name("Cast"))
    offsets_name, table_name = name("kiln_tree_offsets"), name("kiln_tree_table")
    container.add_initializer(offsets_name, TensorProto.INT64, [n_trees], offsets)
    container.add_initializer(table_name, TensorProto.DOUBLE, list(table.shape), table.ravel().tolist())
    flat = name("kiln_tree_rows")
    container.add_node("Add", [leaves_i, offsets_name], flat, name=scope.get_unique_operator_name("Add"))
    per_tree = name("kiln_tree_proba_per_tree")
    container.add_node("Gather", [table_name, flat], per_tree, axis=0, name=scope.get_unique_operator_name("Gather"))
    summed, axes = name("kiln_tree_proba_sum"), name("kiln_tree_axes")
    container.add_initializer(axes, TensorProto.INT64, [1], [1])
    container.add_node("ReduceSum", [per_tree, axes], summed, keepdims=0,
                       name=scope.get_unique_operator_name("ReduceSum"))
    proba64 = summed
    if hasattr(op, "estimators_"):  # a forest divides the sum by the number of trees
        count, proba64 = name("kiln_tree_count"), name("kiln_tree_proba")
        container.add_initializer(count, TensorProto.DOUBLE, [], [float(n_trees)])
        container.add_node("Div", [summed, count], proba64, name=scope.get_unique_operator_name("Div"))
    return proba64


def _out_type(variable):
    from onnx.onnx_pb import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType

    return TensorProto.DOUBLE if isinstance(variable.type, DoubleTensorType) else TensorProto.FLOAT


def convert_tree_regressor(scope, operator, container):
    value = _summed(scope, operator, container, classifier=False)
    container.add_node("Cast", value, operator.outputs[0].full_name, to=_out_type(operator.outputs[0]),
                       name=scope.get_unique_operator_name("Cast"))


def convert_tree_classifier(scope, operator, container):
    from onnx.onnx_pb import TensorProto

    classes = np.asarray(operator.raw_operator.classes_)
    proba64 = _summed(scope, operator, container, classifier=True)

    def name(seed: str) -> str:
        return scope.get_unique_variable_name(seed)

    index = name("kiln_tree_argmax")
    container.add_node("ArgMax", proba64, index, axis=1, keepdims=0, select_last_index=0,
                       name=scope.get_unique_operator_name("ArgMax"))
    labels = name("kiln_tree_classes")
    if classes.dtype.kind in "iub":
        container.add_initializer(labels, TensorProto.INT64, [len(classes)], [int(c) for c in classes])
    else:
        container.add_initializer(labels, TensorProto.STRING, [len(classes)], [str(c).encode() for c in classes])
    container.add_node("Gather", [labels, index], operator.outputs[0].full_name, axis=0,
                       name=scope.get_unique_operator_name("Gather"))
    container.add_node("Cast", proba64, operator.outputs[1].full_name, to=_out_type(operator.outputs[1]),
                       name=scope.get_unique_operator_name("Cast"))


def register() -> None:
    """Make skl2onnx use convert_tree_classifier for both estimators (process-wide, once)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    options = {"zipmap": [True, False, "columns"], "nocl": [True, False]}
    for cls, alias in ((RandomForestClassifier, "SklearnRandomForestClassifier"),
                       (DecisionTreeClassifier, "SklearnDecisionTreeClassifier")):
        update_registered_converter(cls, alias, calculate_linear_classifier_output_shapes,
                                    convert_tree_classifier, options=options, overwrite=True)
    for cls, alias in ((RandomForestRegressor, "SklearnRandomForestRegressor"),
                       (DecisionTreeRegressor, "SklearnDecisionTreeRegressor")):
        update_registered_converter(cls, alias, calculate_linear_regressor_output_shapes,
                                    convert_tree_regressor, overwrite=True)
    _registered = True
