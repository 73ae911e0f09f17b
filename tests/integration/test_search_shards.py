"""A hyperparameter search across pods on the local cluster: shard Jobs, progress in status, the same
best candidate and test metrics as the one-pod search, and cancellation by deletion and suspension."""

from __future__ import annotations

import json

import pytest
from kube_helpers import GROUP, VERSION, create, get, wait_until
from kubernetes import client

pytestmark = pytest.mark.integration

# 4 × 3 × 2 = 24 candidates
GRID = {"max_depth": [2, 3, 5, None], "min_samples_leaf": [1, 4, 16], "criterion": ["gini", "entropy"]}


def spec(model: str, **search) -> dict:
    return {"model": model, "dataset": {"uri": "builtin:breast_cancer"},
            "algorithm": {"name": "decision_tree"}, "split": {"seed": 7},
            "export": {"formats": ["joblib"]},
            "search": {"method": "grid", "space": GRID, "trials": 50, "cvFolds": 3, **search}}


def status(custom, ns, name) -> dict:
    return get(custom, ns, "trainingjobs", name).get("status") or {}


def finished(custom, ns, name, timeout=600) -> dict:
    return wait_until(lambda: (st := status(custom, ns, name)).get("phase") in ("Succeeded", "Failed") and st,
                      timeout, f"TrainingJob {name} to finish", interval=0.5)


def card_of(st: dict) -> dict:
    from kiln_contract import storage

    loc = storage.parse_s3(storage.card_uri(st["artifactURI"]))
    return json.loads(storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())


def test_a_search_across_4_pods_gives_the_one_pod_result_and_shows_progress(custom, kiln_ns, s3_env):
    create(custom, kiln_ns, "models", "Model", "bc", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "one", spec("bc"))
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "many", spec("bc", parallelism=4, shards=8))

    seen = []

    def progress():
        st = status(custom, kiln_ns, "many")
        search = st.get("search") or {}
        if search:
            seen.append((st.get("phase"), search.get("done"), search.get("progress")))
        return st.get("phase") in ("Succeeded", "Failed") and st

    many = wait_until(progress, 900, "the search across pods to finish", interval=0.3)
    one = finished(custom, kiln_ns, "one")
    assert one["phase"] == "Succeeded" and many["phase"] == "Succeeded", (one, many)
    # progress appeared while it ran: a count between 0 and 24 while the run was not finished
    assert any(phase in ("Pending", "Running") and 0 < done < 24 for phase, done, _ in seen), seen
    print("progress seen:", sorted(set(seen), key=lambda s: (s[1] or 0)))
    assert many["search"]["done"] == 24 and many["search"]["progress"].startswith("24/24 best=")
    assert sorted(many["search"]["completed"]) == list(range(8))

    # the shards ran as 8 Jobs (each its own pod) and one training Job; the one-pod run as one Job
    jobs = {j.metadata.name for j in client.BatchV1Api().list_namespaced_job(kiln_ns).items}
    version = many["modelVersion"]
    assert {f"many-v{version}-s{k}" for k in range(8)} | {f"many-v{version}", f"one-v{one['modelVersion']}"} == jobs

    c1, c4 = card_of(one), card_of(many)
    assert c4["search"]["bestParams"] == c1["search"]["bestParams"]
    assert c4["search"]["bestScore"] == c1["search"]["bestScore"]
    assert c4["search"]["results"] == c1["search"]["results"] and len(c4["search"]["results"]) == 24
    assert c4["metrics"] == c1["metrics"] and many["metrics"] == one["metrics"]
    assert c4["params"] == c1["params"]
    assert many["search"]["bestScore"] == pytest.approx(c1["search"]["bestScore"])

    from kiln_local.cluster import kubectl  # kubectl get tj shows the progress column

    table = kubectl("get", "tj", "-n", kiln_ns, "many").stdout
    assert "SEARCH" in table and "24/24 best=" in table


def pods_of(ns: str) -> list:
    return client.CoreV1Api().list_namespaced_pod(ns).items


@pytest.mark.parametrize("how", ["delete", "suspend"])
def test_cancelling_a_search_leaves_no_pod_and_no_version(custom, kiln_ns, s3_env, how):
    create(custom, kiln_ns, "models", "Model", "bc", {})
    slow = spec("bc", parallelism=2, shards=12)
    slow["algorithm"] = {"name": "random_forest", "params": {"n_estimators": 60}}
    slow["search"]["cvFolds"] = 5
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "s", slow)
    wait_until(lambda: any(p.status.phase == "Running" for p in pods_of(kiln_ns)), 300, "a shard pod running")
    st = status(custom, kiln_ns, "s")
    assert st["search"]["stage"] == "shards", st
    version = st["modelVersion"]
    if how == "delete":
        custom.delete_namespaced_custom_object(GROUP, VERSION, kiln_ns, "trainingjobs", "s")
    else:
        custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "trainingjobs", "s", {"spec": {"suspend": True}})
        st = finished(custom, kiln_ns, "s", timeout=120)
        assert st["phase"] == "Failed" and any(c["reason"] == "Cancelled" for c in st["conditions"])
    wait_until(lambda: not pods_of(kiln_ns), 180, "every pod of the run gone")
    wait_until(lambda: not client.BatchV1Api().list_namespaced_job(kiln_ns).items, 120, "every Job gone")

    def cancelled():
        versions = (get(custom, kiln_ns, "models", "bc").get("status") or {}).get("versions") or []
        entry = next((v for v in versions if v["version"] == version), None)
        return entry and entry["state"] == "Failed" and entry

    entry = wait_until(cancelled, 60, "the reserved version to be Failed")
    assert entry["reason"].startswith("Cancelled")
    model = get(custom, kiln_ns, "models", "bc")["status"]
    assert not [v for v in model.get("versions", []) if v["state"] in ("Registered", "Rejected")]
    assert not pods_of(kiln_ns)
