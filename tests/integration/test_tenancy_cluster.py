"""A tenant confined to their namespace, on the local cluster (issue #11, items 2, 7 and 9).

Every test here reproduces an audit finding: a spec that reached another namespace's storage, a card
that could be edited under a served version, a training pod sent to the control plane.
"""

from __future__ import annotations

import json

import pytest
from kube_helpers import GROUP, VERSION, create, delete_and_wait, get, wait_until
from kubernetes import client

from kiln_contract import checksums, storage

pytestmark = pytest.mark.integration


def condition(obj, kind="Ready"):
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == kind), None)


def refused(custom, ns, plural, name, kind, reason):
    def check():
        c = condition(get(custom, ns, plural, name), kind)
        return c if c and c["status"] == "False" and c["reason"] == reason else None

    return wait_until(check, 30, f"{plural}/{name} refused with {reason}")


def put(uri: str, body: bytes = b"x") -> None:
    loc = storage.parse_s3(uri)
    storage.s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=body)


def exists(uri: str) -> bool:
    loc = storage.parse_s3(uri)
    return storage.s3_client().list_objects_v2(Bucket=loc.bucket, Prefix=loc.key).get("KeyCount", 0) > 0


def tj_spec(**extra) -> dict:
    return {"model": "iris", "dataset": {"uri": "builtin:iris"},
            "algorithm": {"name": "logistic_regression"}, **extra}


def test_a_model_cannot_point_its_storage_at_the_bucket_and_delete_every_namespace(custom, kiln_ns, s3_env):
    bucket = s3_env["KILN_BUCKET"]
    victim = f"s3://{bucket}/models/someone-else/iris/v1/model.onnx"
    put(victim)
    # The audit's reproduction: a Model named "models" on the bucket root, deleting its artifacts on the way out.
    create(custom, kiln_ns, "models", "Model", "models", {"storage": f"s3://{bucket}", "deleteArtifacts": True})
    cond = refused(custom, kiln_ns, "models", "models", "Ready", "StorageNotAllowed")
    assert cond["message"].startswith("spec.storage: ") and f"s3://{bucket}/models/{kiln_ns}" in cond["message"]
    # Another tenant's prefix is refused the same way, and so is a path that climbs out of one's own.
    create(custom, kiln_ns, "models", "Model", "other", {"storage": f"s3://{bucket}/models/someone-else"})
    refused(custom, kiln_ns, "models", "other", "Ready", "StorageNotAllowed")
    create(custom, kiln_ns, "models", "Model", "climb", {"storage": f"s3://{bucket}/models/{kiln_ns}/../x"})
    assert "'..'" in refused(custom, kiln_ns, "models", "climb", "Ready", "StorageNotAllowed")["message"]

    delete_and_wait(custom, kiln_ns, "models", "models", 30,
                    "the Model to go (its finalizer released without deleting anything)")
    assert exists(victim)
    events = client.CoreV1Api().list_namespaced_event(kiln_ns, field_selector="involvedObject.name=models").items
    assert any(e.reason == "StorageNotAllowed" and "not deleted" in e.message for e in events)


def test_a_model_in_its_own_storage_still_deletes_its_own_artifacts(custom, kiln_ns, s3_env):
    bucket = s3_env["KILN_BUCKET"]
    own = f"s3://{bucket}/models/{kiln_ns}/mine/sub"
    create(custom, kiln_ns, "models", "Model", "mine", {"storage": own, "deleteArtifacts": True})
    wait_until(lambda: "kiln.dev/delete-artifacts" in (get(custom, kiln_ns, "models", "mine")["metadata"]
                                                       .get("finalizers") or []), 30, "the finalizer")
    put(f"{own}/mine/v1/modelcard.json", b"{}")
    put(f"{own}/mine2/v1/model.onnx")  # a sibling whose name starts the same: not this Model's
    custom.delete_namespaced_custom_object(GROUP, VERSION, kiln_ns, "models", "mine")
    wait_until(lambda: not exists(f"{own}/mine/"), 30, "the Model's own artifacts to be deleted")
    assert exists(f"{own}/mine2/")


def test_datasets_and_byo_artifacts_are_read_only_from_the_namespaces_prefixes(custom, kiln_ns, s3_env):
    bucket = s3_env["KILN_BUCKET"]
    create(custom, kiln_ns, "models", "Model", "iris", {})
    other = f"s3://{bucket}/models/someone-else/iris/v1/train.csv"
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "steal",
           tj_spec(dataset={"uri": other, "target": "y"}))
    cond = refused(custom, kiln_ns, "trainingjobs", "steal", "Succeeded", "StorageNotAllowed")
    assert cond["message"].startswith("spec.dataset.uri: ")
    assert get(custom, kiln_ns, "trainingjobs", "steal")["status"]["phase"] == "Failed"

    create(custom, kiln_ns, "models", "Model", "byo", {"versions": [
        {"uri": f"s3://{bucket}/byo/someone-else/m.joblib", "sha256": "0" * 64}]})
    cond = refused(custom, kiln_ns, "models", "byo", "Ready", "StorageNotAllowed")
    assert cond["message"].startswith("spec.versions[0].uri: ")
    # Nothing started, nothing reserved: no Job, no version on either Model.
    assert client.BatchV1Api().list_namespaced_job(kiln_ns).items == []
    for name in ("iris", "byo"):
        assert not (get(custom, kiln_ns, "models", name).get("status") or {}).get("versions")


@pytest.mark.parametrize("extra,field", [
    ({"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                       "effect": "NoSchedule"}]}, "spec.tolerations[0].key"),
    ({"tolerations": [{"operator": "Exists"}]}, "spec.tolerations[0].key"),
    ({"nodeSelector": {"node-role.kubernetes.io/control-plane": "true"}},
     "spec.nodeSelector.node-role.kubernetes.io/control-plane"),
    # a scheduler the platform team has not allowed (the local cluster's operator allows default-scheduler and
    # kiln-bench-*): refused before any Job, not left Pending for a scheduler that may place it anywhere
    ({"schedulerName": "my-own-scheduler"}, "spec.schedulerName"),
])
def test_training_pods_cannot_be_sent_to_control_plane_nodes(custom, kiln_ns, extra, field):
    create(custom, kiln_ns, "models", "Model", "iris", {})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "cp", tj_spec(**extra))
    cond = refused(custom, kiln_ns, "trainingjobs", "cp", "Succeeded", "SchedulingNotAllowed")
    assert cond["message"].startswith(f"{field}: ")
    assert client.BatchV1Api().list_namespaced_job(kiln_ns).items == []


def test_the_card_is_pinned_and_serving_pods_get_read_only_credentials(custom, kiln_ns):
    create(custom, kiln_ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
    create(custom, kiln_ns, "trainingjobs", "TrainingJob", "t", tj_spec())

    def registered():
        vs = (get(custom, kiln_ns, "models", "iris").get("status") or {}).get("versions") or []
        return vs and vs[0]["state"] == "Registered" and vs[0]

    entry = wait_until(registered, 180, "version 1 registered", interval=0.5)
    card_uri = storage.card_uri(entry["uri"])
    loc = storage.parse_s3(card_uri)
    body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    assert entry["cardSha256"] == checksums.sha256_bytes(body)

    create(custom, kiln_ns, "deployments", "Deployment", "iris", {"model": {"name": "iris"}})

    def served():
        items = client.AppsV1Api().list_namespaced_deployment(kiln_ns).items
        return items and items[0]

    dep = wait_until(served, 60, "the serving Deployment")
    container = dep.spec.template.spec.containers[0]
    env = {e.name: e.value for e in container.env}
    assert env["KILN_EXPECTED_CARD_SHA256"] == entry["cardSha256"]
    assert [e.secret_ref.name for e in container.env_from] == ["kiln-s3-read"]

    def ready():
        c = condition(get(custom, kiln_ns, "deployments", "iris"))
        return c and c["status"] == "True" and c["reason"] == "Serving"

    wait_until(ready, 120, "serving with read-only credentials", interval=0.5)

    # The audit's reproduction: the card's feature order reversed in storage. A new pod must refuse it.
    card = json.loads(body)
    card["features"]["names"] = list(reversed(card["features"]["names"]))
    storage.s3_client().put_object(Bucket=loc.bucket, Key=loc.key, Body=json.dumps(card).encode())
    core = client.CoreV1Api()
    for pod in core.list_namespaced_pod(kiln_ns, label_selector="app.kubernetes.io/name=kiln-server").items:
        core.delete_namespaced_pod(pod.metadata.name, kiln_ns)

    def refused_to_start():
        for pod in core.list_namespaced_pod(kiln_ns, label_selector="app.kubernetes.io/name=kiln-server").items:
            for cs in pod.status.container_statuses or []:
                term = (cs.state.terminated or (cs.last_state and cs.last_state.terminated))
                if term and "card" in (term.message or "") and "sha256" in (term.message or ""):
                    return term.message
        return None

    message = wait_until(refused_to_start, 60, "the new pod to refuse the edited card", interval=0.5)
    assert checksums.sha256_bytes(json.dumps(card).encode()) not in message  # the actual digest is not echoed
