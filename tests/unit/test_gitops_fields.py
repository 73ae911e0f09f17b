"""What keeps a GitOps applier's view of Kiln objects drift-free: status writes that leave its field ownership
alone, and null read as unset (a server-side apply that drops an optional object leaves it null)."""

from kiln_contract import spec as specs
from kiln_operator import kube


def test_a_status_put_carries_the_cached_spec_and_metadata_but_not_managed_fields():
    obj = {"apiVersion": "kiln.dev/v1alpha1", "kind": "Model",
           "metadata": {"name": "iris", "namespace": "t", "resourceVersion": "7", "labels": {"team": "a"},
                        "annotations": {"x": "y"}, "managedFields": [{"manager": "argocd-controller"}]},
           "spec": {"promotion": {"policy": "auto"}}, "status": {"latestVersion": 1}}
    body = kube.status_put_body(obj, "iris", "t", {"latestVersion": 2})
    assert body["spec"] == obj["spec"] and body["status"] == {"latestVersion": 2}
    assert body["metadata"]["labels"] == {"team": "a"} and body["metadata"]["annotations"] == {"x": "y"}
    assert body["metadata"]["resourceVersion"] == "7" and "managedFields" not in body["metadata"]
    assert obj["metadata"]["managedFields"], "the cached object is left as it was"


def test_null_means_unset_everywhere_in_a_spec():
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris", "sha256": None}, "algorithm": {"name": "knn"},
            "search": None, "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.5}]}}
    assert specs.without_nulls(spec) == {"model": "iris", "dataset": {"uri": "builtin:iris"},
                                         "algorithm": {"name": "knn"},
                                         "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.5}]}}
    validated = specs.validate("Model", {"retention": None, "promotion": {"policy": "auto"}})
    assert "retention" not in validated and validated["promotion"]["policy"] == "auto"
