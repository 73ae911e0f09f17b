"""The foundation, against the real local cluster: CRDs, schema validation, node simulator, Jobs, operator."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from kube_helpers import wait_until
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

GROUP, VERSION = "kiln.dev", "v1alpha1"
KINDS = {"trainingjobs": "TrainingJob", "models": "Model", "deployments": "Deployment"}


def tj(name: str, spec: dict) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


VALID = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "random_forest"}}


def test_every_crd_is_established(kube):
    ext = client.ApiextensionsV1Api(kube)
    for plural, kind in KINDS.items():
        crd = ext.read_custom_resource_definition(f"{plural}.{GROUP}")
        established = {c.type: c.status for c in crd.status.conditions}
        assert established.get("Established") == "True", plural
        assert crd.spec.names.kind == kind
        assert "kiln" in crd.spec.names.categories
        assert crd.spec.versions[0].subresources.status is not None


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s["algorithm"].update(name="deep_magic"), "spec.algorithm.name"),
    (lambda s: s.update(split={"testFraction": 1.5}), "spec.split.testFraction"),
    (lambda s: s.pop("model"), "spec.model"),
])
def test_invalid_trainingjobs_are_rejected_naming_the_field(custom, namespace, mutate, field):
    spec = json.loads(json.dumps(VALID))
    mutate(spec)
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", tj("bad", spec))
    assert err.value.status == 422
    assert field in json.loads(err.value.body)["message"]
    # nothing half-written
    assert custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs")["items"] == []


def test_operator_from_the_working_tree_handles_a_trainingjob_create(custom, namespace):
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", tj("iris", VALID))

    def observed():
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "trainingjobs", "iris")
        status = obj.get("status") or {}
        return status if status.get("observedGeneration") == obj["metadata"]["generation"] else None

    status = wait_until(observed, 30, "operator to write status.observedGeneration")
    assert status["phase"] in ("Pending", "Running", "Succeeded", "Failed")
    assert status["conditions"] and all("lastTransitionTime" in c for c in status["conditions"])


def test_simulated_node_is_ready_with_gpu_capacity(core):
    node = core.read_node("kiln-node")
    ready = {c.type: c.status for c in node.status.conditions}["Ready"]
    assert ready == "True"
    assert node.status.capacity["nvidia.com/gpu"] == "1"
    assert not node.spec.taints


def _pod(name: str, image: str, command: list[str], restart: str = "Never", **extra) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(restart_policy=restart, termination_grace_period_seconds=5, containers=[
            client.V1Container(name="main", image=image, command=command, **extra)]),
    )


def test_trainer_image_pod_runs_to_succeeded_with_termination_message(core, namespace):
    script = ("import os, json; "
              "open(os.environ['KILN_TERMINATION_LOG'], 'w').write(json.dumps({'ip': os.environ['POD_IP']}))")
    env = [client.V1EnvVar(name="POD_IP", value_from=client.V1EnvVarSource(
        field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")))]
    core.create_namespaced_pod(namespace, _pod("trainer", "ghcr.io/kiln/kiln-trainer:0.1.0",
                                                ["python", "-c", script], env=env))

    pod = wait_until(lambda: (p := core.read_namespaced_pod("trainer", namespace)).status.phase == "Succeeded" and p,
                     60, "trainer pod to succeed")
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == 0 and term.reason == "Completed"
    assert json.loads(term.message) == {"ip": pod.status.pod_ip}
    assert pod.status.pod_ip.startswith("127.1.")


def test_failing_container_reports_its_exit_code(core, namespace):
    core.create_namespaced_pod(namespace, _pod("fails", "kiln/trainer:dev", ["python", "-c", "raise SystemExit(3)"]))
    pod = wait_until(lambda: (p := core.read_namespaced_pod("fails", namespace)).status.phase == "Failed" and p,
                     60, "pod to fail")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3


def test_batch_job_runs_to_complete(kube, namespace):
    batch = client.BatchV1Api(kube)
    job = client.V1Job(
        metadata=client.V1ObjectMeta(name="hello"),
        spec=client.V1JobSpec(backoff_limit=0, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never",
            containers=[client.V1Container(name="main", image="kiln/trainer:dev",
                                           command=["python", "-c", "print('done')"])]))),
    )
    batch.create_namespaced_job(namespace, job)
    wait_until(lambda: (batch.read_namespaced_job("hello", namespace).status.succeeded or 0) >= 1, 90,
               "Job to complete")
    conditions = {c.type: c.status for c in batch.read_namespaced_job("hello", namespace).status.conditions}
    assert conditions.get("Complete") == "True"


def test_deleted_pods_process_is_gone(core, namespace):
    from kiln_local.paths import STATE

    core.create_namespaced_pod(namespace, _pod("sleeper", "kiln/server:dev",
                                               ["python", "-c", "import time; time.sleep(600)"], restart="Always"))
    pidfile = Path(STATE) / "pods" / f"{namespace}_sleeper" / "main.pid"
    wait_until(lambda: core.read_namespaced_pod("sleeper", namespace).status.phase == "Running"
               and pidfile.exists(), 60, "sleeper to run")
    pid = int(pidfile.read_text())
    os.kill(pid, 0)  # it is alive now
    core.delete_namespaced_pod("sleeper", namespace)

    def gone():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"

    wait_until(gone, 30, "the pod's process to exit")
    wait_until(lambda: not any(p.metadata.name == "sleeper" for p in core.list_namespaced_pod(namespace).items),
               30, "the pod object to be removed")


def test_readiness_probe_gates_ready(core, namespace):
    script = ("import http.server, os, time; time.sleep(2); "
              "http.server.HTTPServer((os.environ['POD_IP'], 8080), http.server.SimpleHTTPRequestHandler)"
              ".serve_forever()")
    env = [client.V1EnvVar(name="POD_IP", value_from=client.V1EnvVarSource(
        field_ref=client.V1ObjectFieldSelector(field_path="status.podIP")))]
    probe = client.V1Probe(http_get=client.V1HTTPGetAction(path="/", port=8080), period_seconds=1)
    core.create_namespaced_pod(namespace, _pod("web", "kiln/server:dev", ["python", "-c", script],
                                               restart="Always", env=env, readiness_probe=probe))
    wait_until(lambda: core.read_namespaced_pod("web", namespace).status.phase == "Running", 60, "web to run")
    t_running = time.monotonic()
    pod = wait_until(lambda: (p := core.read_namespaced_pod("web", namespace)).status.container_statuses[0].ready
                     and p, 30, "readiness")
    assert time.monotonic() - t_running >= 1.0  # not ready before the server listened
    assert {c.type: c.status for c in pod.status.conditions}["Ready"] == "True"


def test_unknown_image_stays_pending_with_an_event(core, namespace):
    core.create_namespaced_pod(namespace, _pod("nginx", "nginx:1.25", ["nginx"]))

    def event():
        evs = core.list_namespaced_event(namespace, field_selector="involvedObject.name=nginx").items
        return next((e for e in evs if e.reason == "ErrImagePull"), None)

    ev = wait_until(event, 30, "ErrImagePull event")
    assert "nginx:1.25" in ev.message
    pod = core.read_namespaced_pod("nginx", namespace)
    assert pod.status.phase == "Pending"
    assert pod.status.container_statuses[0].state.waiting.reason == "ErrImagePull"


def test_pod_waits_for_a_missing_secret_then_runs(core, namespace):
    env = [client.V1EnvVar(name="TOKEN", value_from=client.V1EnvVarSource(
        secret_key_ref=client.V1SecretKeySelector(name="late", key="token")))]
    script = "import os; open(os.environ['KILN_TERMINATION_LOG'], 'w').write(os.environ['TOKEN'])"
    core.create_namespaced_pod(namespace, _pod("waits", "kiln/trainer:dev", ["python", "-c", script], env=env))

    def config_error():
        cs = core.read_namespaced_pod("waits", namespace).status.container_statuses
        return cs and cs[0].state.waiting and cs[0].state.waiting.reason == "CreateContainerConfigError" and cs[0]

    cs = wait_until(config_error, 30, "CreateContainerConfigError")
    assert 'secret "late" not found' in cs.state.waiting.message
    core.create_namespaced_secret(namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="late"),
                                                             string_data={"token": "s3cr3t"}))
    pod = wait_until(lambda: (p := core.read_namespaced_pod("waits", namespace)).status.phase == "Succeeded" and p,
                     60, "the pod to run once the Secret exists")
    assert pod.status.container_statuses[0].state.terminated.message == "s3cr3t"
