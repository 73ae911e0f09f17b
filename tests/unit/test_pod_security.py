"""Every pod Kiln creates meets the Pod Security "restricted" profile; workload pods carry no API token.

The checker is charts/pod_security.py (the Pod Security Standards' rules); it is applied to the operator's and the
gateway's pods (the rendered chart, every values file), the training Job's pod (trainingjob_builder.build_job) and
the serving Deployment's pod (deployment_builder.build_server), in their plain and their most demanding variants.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from chart_scripts import load as load_chart_script

from kiln_contract import spec as specs
from kiln_operator import deployment_builder, trainingjob_builder

REPO = Path(__file__).resolve().parents[2]



pss = load_chart_script("pod_security")

META = {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1}
ENTRY = {"version": 3, "uri": "s3://kiln/models/ml/iris/v3", "sha256": "a" * 64, "formats": ["joblib", "onnx"],
         "artifacts": {"onnx": {"file": "model.onnx", "sha256": "a" * 64},
                       "joblib": {"file": "model.joblib", "sha256": "b" * 64}}}


def training_pod(**spec) -> dict:
    base = {"model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "random_forest"}}
    tj = {"metadata": META, "spec": specs.validate("TrainingJob", {**base, **spec})}
    job = trainingjob_builder.build_job(tj, version=3, run="g1", output=ENTRY["uri"], image="kiln/trainer:0.1.0",
                                        s3_secret="kiln-s3")
    return job["spec"]["template"]


def serving_pod(**spec) -> dict:
    dep = {"metadata": META, "spec": specs.validate("Deployment", {"model": {"name": "iris"}, **spec})}
    server = deployment_builder.build_server(dep, ENTRY, track="stable", replicas=1, image="kiln/server:0.1.0",
                                             s3_secret="kiln-s3")
    return server["spec"]["template"]


WORKLOADS = {
    "trainer": lambda: training_pod(),
    "trainer-gpu": lambda: training_pod(resources={"cpu": "2", "memory": "4Gi", "gpu": 1},
                                        nodeSelector={"gpu": "yes"},
                                        tolerations=[{"key": "x", "operator": "Exists"}]),
    "server-onnx": lambda: serving_pod(),
    "server-sklearn": lambda: serving_pod(runtime="sklearn", allowUnsafeFormats=True,
                                          resources={"cpu": "1", "memory": "1Gi"}),
}


def chart_pods() -> dict[str, tuple[dict, dict]]:
    helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
    assert helm
    render = load_chart_script("render")
    out = {}
    for values_file in [None, *sorted((REPO / "charts" / "kiln" / "ci").glob("*-values.yaml"))]:
        values = yaml.safe_load(values_file.read_text()) if values_file else None
        for obj in render.objects(render.render(values)):
            found = pss.pod_of(obj)
            if found:
                source = values_file.name if values_file else "defaults"
                out[f"{source}:{obj['kind']}/{obj['metadata']['name']}"] = found
    return out


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_pods_meet_restricted(name):
    template = WORKLOADS[name]()
    assert pss.check(template["spec"], template["metadata"].get("annotations")) == []


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_workload_pods_mount_no_service_account_token(name):
    """Trainer and server never call the Kubernetes API: no token is there to steal."""
    spec = WORKLOADS[name]()["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not spec.get("serviceAccountName")  # the namespace's default account, without a token
    for c in spec["containers"]:
        assert not any("serviceaccount" in m.get("mountPath", "") for m in c.get("volumeMounts", []))
        # credentials come from a Secret by reference, never inline in the pod spec
        assert not any(e["name"].startswith("AWS_") and "value" in e for e in c["env"])
        assert c["envFrom"] == [{"secretRef": {"name": "kiln-s3"}}]


def test_every_chart_pod_meets_restricted():
    pods = chart_pods()
    assert any(k.startswith("defaults:Deployment/kiln-operator") for k in pods)
    assert any(k.startswith("defaults:Deployment/kiln-gateway") for k in pods)
    assert any("full-values.yaml:Deployment/kiln-seaweedfs" in k for k in pods)
    assert any("Job/kiln-create-bucket" in k for k in pods)
    for name, (spec, pod_annotations) in pods.items():
        assert pss.check(spec, pod_annotations) == [], name


def test_only_the_operator_and_gateway_pods_mount_a_token():
    """The two Kiln processes that call the API server; the gateway's token can only read (see its RBAC)."""
    for name, (spec, _) in chart_pods().items():
        wants_token = name.endswith(("Deployment/kiln-operator", "Deployment/kiln-gateway"))
        assert spec.get("automountServiceAccountToken") is wants_token, name
        if wants_token:
            c = spec["containers"][0]
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]


# -- the checker itself ------------------------------------------------------------------------------------


def good_pod() -> dict:
    return copy.deepcopy(WORKLOADS["server-onnx"]()["spec"])


def test_checker_fails_a_privileged_pod():
    pod = good_pod()
    c = pod["containers"][0]
    c["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True,
                            "capabilities": {"add": ["SYS_ADMIN"]}, "runAsUser": 0, "runAsNonRoot": False}
    pod["hostNetwork"] = True
    problems = pss.check(pod)
    joined = "\n".join(problems)
    for expected in ("privileged: must be unset or false", "allowPrivilegeEscalation: must be false",
                     "capabilities.add", "runAsUser: must not be 0", "runAsNonRoot: must be true",
                     "capabilities.drop: must include ALL", "spec.hostNetwork"):
        assert expected in joined, expected
    assert pss.check(pod, profile="baseline")  # privileged fails baseline too


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p.update(hostPID=True), "spec.hostPID"),
    (lambda p: p.update(hostIPC=True), "spec.hostIPC"),
    (lambda p: p["volumes"].append({"name": "root", "hostPath": {"path": "/"}}), "hostPath volumes are forbidden"),
    (lambda p: p["volumes"].append({"name": "n", "nfs": {"server": "x", "path": "/"}}), "volume type ['nfs']"),
    (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "must not be Unconfined"),
    (lambda p: [p["securityContext"].pop("seccompProfile"),
                p["containers"][0]["securityContext"].pop("seccompProfile")],
     "seccompProfile.type: must be RuntimeDefault or Localhost"),
    (lambda p: [p["securityContext"].pop("runAsNonRoot"),
                p["containers"][0]["securityContext"].pop("runAsNonRoot")],
     "runAsNonRoot: must be true"),
    (lambda p: p["containers"][0]["securityContext"].update(capabilities={"drop": ["ALL"], "add": ["NET_RAW"]}),
     "only NET_BIND_SERVICE may be added"),
    (lambda p: p["containers"][0]["ports"][0].update(hostPort=80), "hostPort: must be unset or 0"),
    (lambda p: p["containers"][0]["securityContext"].update(procMount="Unmasked"), "procMount"),
    (lambda p: p["securityContext"].update(sysctls=[{"name": "kernel.msgmax", "value": "1"}]), "not a safe sysctl"),
    (lambda p: p["securityContext"].update(seLinuxOptions={"type": "spc_t"}), "seLinuxOptions.type"),
    (lambda p: p["securityContext"].update(windowsOptions={"hostProcess": True}), "hostProcess"),
    (lambda p: p.setdefault("initContainers", []).append({"name": "init", "image": "kiln/trainer:0.1.0"}),
     "spec.initContainers[0].securityContext.allowPrivilegeEscalation"),
])
def test_checker_catches_each_restricted_rule(mutate, expected):
    pod = good_pod()
    assert pss.check(pod) == []
    mutate(pod)
    assert any(expected in p for p in pss.check(pod)), pss.check(pod)


def test_checker_allows_what_restricted_allows():
    pod = good_pod()
    pod["containers"][0]["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}
    pod["containers"][0]["securityContext"]["seccompProfile"] = {"type": "Localhost", "localhostProfile": "p.json"}
    pod["volumes"] += [{"name": "c", "configMap": {"name": "x"}}, {"name": "p", "persistentVolumeClaim": {
        "claimName": "x"}}, {"name": "s", "secret": {"secretName": "x"}}, {"name": "d", "downwardAPI": {"items": []}}]
    pod["securityContext"]["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    assert pss.check(pod) == []
    annotations = {"container.apparmor.security.beta.kubernetes.io/server": "unconfined"}
    assert any("AppArmor" in p for p in pss.check(pod, annotations))
