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


def test_null_means_unset_where_the_schema_allows_it_and_stays_a_value_in_params():
    spec = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "random_forest",
            "params": {"max_features": None}}, "search": None,
            "evaluation": {"gates": [{"metric": "accuracy", "op": ">=", "value": 0.5}]}}
    out = specs.spec_without_nulls("TrainingJob", spec)
    assert "search" not in out and out["evaluation"] == spec["evaluation"]
    assert out["algorithm"]["params"] == {"max_features": None}, "a null estimator param means None, not unset"
    validated = specs.validate("Model", {"retention": None, "promotion": {"policy": "auto"}})
    assert "retention" not in validated and validated["promotion"]["policy"] == "auto"


def test_every_optional_object_and_list_of_a_spec_is_nullable():
    """Else a GitOps sync that removes it from Git fails on the API server (kubernetes/kubernetes#103011)."""
    def walk(schema, path):
        required = set(schema.get("required") or [])
        for name, sub in (schema.get("properties") or {}).items():
            if sub.get("type") in ("object", "array") and name not in required:
                assert sub.get("nullable") is True, f"{path}.{name} is optional but not nullable"
            if sub.get("type") == "object":
                walk(sub, f"{path}.{name}")
            elif sub.get("type") == "array" and isinstance(sub.get("items"), dict):
                walk(sub["items"], f"{path}.{name}[]")

    for kind in specs.KIND_FILES:
        walk(specs.spec_schema(kind), f"{kind}.spec")
