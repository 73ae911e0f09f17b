"""A Model with 5,000 versions on the real API server (issue #13, "a Model that stays small").

The versions' model cards are written to SeaweedFS as a cluster rebuilt from Git would find them; the
Model adopts them from storage. Status keeps the newest versions (and what aliases use); the rest are in the
history index in the Model's storage. Aliases still reach any version, a new run is numbered after all of
them, and a Model deleted and made again finds every version once more.
"""

from __future__ import annotations

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from kube_helpers import GROUP, VERSION, create, delete_and_wait, get, model_versions, wait_until
from kubernetes import client

from kiln_contract import card as cards
from kiln_contract import storage

pytestmark = pytest.mark.integration
VERSIONS = 5000
KEEP = 20  # the operator's KILN_STATUS_VERSIONS default


def a_card(n: int) -> bytes:
    accuracy = 0.80 + (n % 97) / 1000
    return cards.dumps({
        "metrics": {"accuracy": accuracy, "f1_macro": accuracy - 0.01, "precision_macro": accuracy,
                    "recall_macro": accuracy, "roc_auc": 0.99},
        "gates": [{"metric": "accuracy", "op": ">=", "value": 0.5, "actual": accuracy, "passed": True}],
        "params": {"C": 1.0, "max_iter": 200}, "task": "classification",
        "artifacts": [{"file": "model.onnx", "format": "onnx", "sha256": f"{n:064x}", "bytes": 1000}],
        "dataset": {"uri": "builtin:iris", "sha256": "c" * 64, "rows": 150},
        "features": {}, "libraries": {"scikit-learn": "1.9.1", "onnx": "1.23.2"}, "spec": {}, "timings": {},
        "device": {}, cards.CREATED_AT: f"2026-01-01T00:00:{n % 60:02d}Z", "model": "many", "version": n,
    })


def write_cards(store: str, model: str) -> None:
    s3 = storage.s3_client()

    def put(n: int) -> None:
        loc = storage.parse_s3(storage.card_uri(storage.version_prefix(store, model, n)))
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=a_card(n))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1, VERSIONS + 1)))


@pytest.fixture
def store(kiln_ns, s3_env):
    """The namespace's default Model storage; its objects are removed afterwards (10,000 of them)."""
    uri = f"s3://{s3_env['KILN_BUCKET']}/models/{kiln_ns}"
    yield uri
    from kiln_operator import artifacts

    artifacts.delete_prefix(uri)


def all_versions(custom, ns: str, store: str) -> tuple[dict, set[int]]:
    bucket = storage.parse_s3(store).bucket
    return get(custom, ns, "models", "many"), set(model_versions(custom, ns, "many", bucket))


def adopted(custom, ns: str):
    def check():
        status = get(custom, ns, "models", "many").get("status") or {}
        return status if (status.get("history") or {}).get("count") and status.get("latestVersion") else None

    return wait_until(check, 240, "the Model to adopt its 5,000 versions from storage", interval=1)


def test_a_model_with_5000_versions_stays_small(custom, kiln_ns, store):
    write_cards(store, "many")
    create(custom, kiln_ns, "models", "Model", "many", {"promotion": {"policy": "auto"}})
    status = adopted(custom, kiln_ns)

    model, found = all_versions(custom, kiln_ns, store)
    assert found == set(range(1, VERSIONS + 1)), "every version is in status or in the history index"
    size = len(json.dumps(model))
    print(f"Model object with {VERSIONS} versions: {size} bytes, {len(status['versions'])} versions in status")
    assert size < 128 * 1024, f"{size} bytes: far under the API server's ~1.5 MiB limit"
    assert status["latestVersion"] == VERSIONS and status["history"]["highest"] < VERSIONS
    in_status = [v["version"] for v in status["versions"]]
    assert in_status[-KEEP:] == list(range(VERSIONS - KEEP + 1, VERSIONS + 1))
    production = status["aliases"]["production"]
    assert production in in_status, "what an alias points at stays in status"

    started = time.monotonic()
    out = subprocess.run(["kubectl", "get", "mdl", "many", "-n", kiln_ns], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    print(f"kubectl get mdl: {time.monotonic() - started:.2f} s")
    assert "many" in out and str(VERSIONS) in out

    # An alias may point at any version: the old entry comes back into status from the index.
    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "many",
                                          {"spec": {"aliases": {"old": 7}}})

    def pinned():
        st = get(custom, kiln_ns, "models", "many")["status"]
        entry = next((v for v in st["versions"] if v["version"] == 7), None)
        return entry if (st.get("aliases") or {}).get("old") == 7 and entry else None

    entry = wait_until(pinned, 60, "alias old → version 7, its entry back in status")
    assert entry["state"] == "Registered" and entry["sha256"] == f"{7:064x}"
    assert entry["uri"] == storage.version_prefix(store, "many", 7)


def test_a_model_made_again_finds_every_version_and_numbers_after_them(custom, kiln_ns, store):
    write_cards(store, "many")
    create(custom, kiln_ns, "models", "Model", "many", {})
    first = adopted(custom, kiln_ns)
    delete_and_wait(custom, kiln_ns, "models", "many", 60, "the Model to go")
    create(custom, kiln_ns, "models", "Model", "many", {})
    again = adopted(custom, kiln_ns)
    assert again["history"]["count"] == first["history"]["count"]
    _, found = all_versions(custom, kiln_ns, store)
    assert found == set(range(1, VERSIONS + 1))
    events = client.CoreV1Api().list_namespaced_event(kiln_ns, field_selector="involvedObject.name=many").items
    assert sum(1 for e in events if e.reason == "Rebuilt" and f"rebuilt {VERSIONS} versions" in e.message) >= 2

    # A new run is numbered after every version, those in the index included.
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "next",
           {"model": "many", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "logistic_regression"}})
    tj = wait_until(lambda: (get(custom, kiln_ns, "trainingjobs", "next").get("status") or {}).get("modelVersion"),
                    60, "the run's version")
    assert tj == VERSIONS + 1
