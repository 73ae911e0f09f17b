"""charts/kiln rendered and linted by Helm's own engine (helm-python-sdk: Helm v4's Go SDK, no helm binary)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from chart_scripts import load as load_chart_script

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kiln"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))

helm_python = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed (pip install -e '.[dev]')")



chart = load_chart_script("render")


def values_of(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def rendered(values: dict | None = None, **kw) -> list[dict]:
    return chart.objects(chart.render(values, **kw))


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def operator_container(objs: list[dict]) -> dict:
    dep = one(objs, "Deployment", "kiln-operator")
    return dep["spec"]["template"]["spec"]["containers"][0]


def gateway_container(objs: list[dict]) -> dict:
    dep = one(objs, "Deployment", "kiln-gateway")
    return dep["spec"]["template"]["spec"]["containers"][0]


def env_of(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# -- lint and render ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_helm_lint_has_no_errors_or_warnings(values_file):
    report = chart.lint(values_of(values_file) if values_file else None)
    assert report["errors"] == []
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == []


def test_lint_reports_a_broken_template(tmp_path):
    broken = tmp_path / "kiln"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.deeper }}\n")
    report = chart.lint(chart=broken)
    assert report["errors"], report


def test_defaults_render_the_operator_the_gateway_their_rbac_and_services():
    objs = rendered()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    assert kinds == ["ClusterRole/kiln-gateway", "ClusterRole/kiln-gateway-auth", "ClusterRole/kiln-operator",
                     "ClusterRole/kiln-operator-cluster", "ClusterRole/kiln-predictor",
                     "ClusterRoleBinding/kiln-gateway", "ClusterRoleBinding/kiln-gateway-auth",
                     "ClusterRoleBinding/kiln-operator",
                     "ClusterRoleBinding/kiln-operator-cluster", "Deployment/kiln-gateway", "Deployment/kiln-operator",
                     "NetworkPolicy/kiln-gateway", "NetworkPolicy/kiln-operator",
                     "PodDisruptionBudget/kiln-gateway", "Service/kiln-gateway", "Service/kiln-operator",
                     "ServiceAccount/kiln-gateway", "ServiceAccount/kiln-operator",
                     "ValidatingAdmissionPolicy/kiln-operator-protected-namespaces",
                     "ValidatingAdmissionPolicyBinding/kiln-operator-protected-namespaces"]
    assert all(o["metadata"].get("namespace") in (None, "kiln-system") for o in objs)
    dep = one(objs, "Deployment", "kiln-operator")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kiln-operator" and pod["automountServiceAccountToken"] is True
    c = pod["containers"][0]
    assert c["image"] == "kiln/operator:0.1.0"
    assert c["command"] == ["python", "-m", "kopf", "run"]
    assert c["args"] == ["--standalone", "--log-format=json", "--liveness=http://$(POD_IP):8080/healthz",
                         "--all-namespaces", "-m", "kiln_operator"]
    # POD_IP comes first: the kubelet expands $(VAR) only from variables defined before
    assert c["env"][0] == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    env = env_of(c)
    assert env["KILN_OPERATOR_LISTEN"] == "$(POD_IP):8082" and "KILN_GATEWAY" not in env
    assert {k: env[k] for k in ("KILN_TRAINER_IMAGE", "KILN_SERVER_IMAGE", "KILN_ALLOWED_IMAGES", "KILN_S3_SECRET",
                                "KILN_BUCKET", "AWS_REGION", "KILN_WATCH_TIMEOUT")} == {
        "KILN_TRAINER_IMAGE": "kiln/trainer:0.1.0", "KILN_SERVER_IMAGE": "kiln/server:0.1.0",
        "KILN_ALLOWED_IMAGES": "kiln/", "KILN_S3_SECRET": "kiln-s3", "KILN_BUCKET": "kiln",
        "AWS_REGION": "us-east-1", "KILN_WATCH_TIMEOUT": "300"}
    assert "KILN_S3_ENDPOINT" not in env and "envFrom" not in c  # AWS S3 with ServiceAccount credentials
    # Tenancy: each namespace its own prefixes; nothing that schedules onto control-plane nodes. The operator
    # reads these with the same code that enforces them.
    from kiln_operator import settings as operator_settings
    from kiln_operator import tenancy
    assert env["KILN_S3_SERVING_SECRET"] == "kiln-s3"
    assert tenancy.parse_prefix_map(env["KILN_STORAGE_PREFIXES"], "x") == {}
    assert tenancy.parse_prefix_map(env["KILN_READ_PREFIXES"], "x") == {"*": ["s3://kiln/datasets/{namespace}"]}
    assert env["KILN_ALLOWED_TOLERATION_KEYS"] == "nvidia.com/gpu,kiln.dev/*"
    assert env["KILN_ALLOWED_NODE_SELECTOR_KEYS"] == operator_settings.DEFAULT_NODE_SELECTOR_KEYS
    assert env["KILN_ALLOWED_SCHEDULER_NAMES"] == "default-scheduler"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"health": 8080, "http": 8082}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    svc = one(objs, "Service", "kiln-operator")
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "http": (8082, "http"), "health": (8080, "health")}
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert one(objs, "ServiceAccount", "kiln-operator")["automountServiceAccountToken"] is False
    assert one(objs, "ServiceAccount", "kiln-gateway")["automountServiceAccountToken"] is False


def test_the_gateway_is_its_own_deployment_of_the_operator_image():
    objs = rendered()
    dep = one(objs, "Deployment", "kiln-gateway")
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "kiln-gateway" and pod["automountServiceAccountToken"] is True
    c = pod["containers"][0]
    assert c["image"] == operator_container(objs)["image"]
    assert c["command"] == ["python", "-m", "kiln_operator.gateway"] and "args" not in c
    assert c["env"][0]["name"] == "POD_IP"
    env = env_of(c)
    assert env["KILN_GATEWAY_AUTH"] == "kubernetes"  # every prediction carries a token unless turned off
    assert env["KILN_GATEWAY_LISTEN"] == "$(POD_IP):8081" and env["KILN_GATEWAY_ADMIN_LISTEN"] == "$(POD_IP):8080"
    assert env["KILN_WAKE_URL"] == "http://kiln-operator.kiln-system.svc:8082" and env["KILN_WATCH_NAMESPACES"] == ""
    assert not any(k.startswith(("AWS_", "KILN_S3")) for k in env) and "envFrom" not in c  # no S3 access
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8081, "admin": 8080}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    # the operator's Service and the gateway's select their own pods only
    operator_labels = one(objs, "Deployment", "kiln-operator")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = dep["spec"]["template"]["metadata"]["labels"]
    gw_svc, op_svc = one(objs, "Service", "kiln-gateway"), one(objs, "Service", "kiln-operator")
    assert gw_svc["spec"]["selector"].items() <= gateway_labels.items()
    assert not op_svc["spec"]["selector"].items() <= gateway_labels.items()
    assert not gw_svc["spec"]["selector"].items() <= operator_labels.items()
    assert gw_svc["spec"]["ports"] == [{"name": "http", "port": 8081, "targetPort": "http", "protocol": "TCP"}]
    pdb = one(objs, "PodDisruptionBudget", "kiln-gateway")
    assert pdb["spec"]["minAvailable"] == 1 and pdb["spec"]["selector"]["matchLabels"].items() <= gateway_labels.items()
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["podAffinityTerm"]["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values_file", [None, CHART / "ci" / "full-values.yaml"], ids=["defaults", "full"])
def test_the_gateway_reads_every_setting_the_chart_gives_it(values_file, monkeypatch):
    """The chart's env names and the gateway's (kiln_operator.gateway.config) stay in step."""
    from kiln_operator.gateway import config

    values = values_of(values_file) if values_file else {}
    objs = rendered(values)
    env = {k: v for k, v in env_of(gateway_container(objs)).items() if isinstance(v, str)}
    for name in [n for n in os.environ if n.startswith("KILN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("$(POD_IP)", "10.0.0.7"))
    settings = config.load()
    gw = {**values_of(CHART / "values.yaml")["gateway"], **values.get("gateway", {})}
    host = "10.0.0.7" if gw["listenAddress"] == "$(POD_IP)" else gw["listenAddress"]
    assert settings.listen == (host, gw["port"]) and settings.admin_listen == (host, gw["adminPort"])
    assert settings.wait_seconds == gw["waitSeconds"] and settings.max_waiting == gw["maxWaiting"]
    assert settings.max_body == gw["maxBodyBytes"] and settings.drain_seconds == gw["drainSeconds"]
    assert settings.namespaces == tuple(values.get("operator", {}).get("watchNamespaces", ()))
    assert settings.auth == gw["auth"]
    assert settings.wake_url.startswith("http://kiln-operator.kiln-system.svc:")
    assert settings.wake_url.endswith(f":{values.get('operator', {}).get('httpPort', 8082)}")
    consumed = {"POD_IP", "KILN_GATEWAY_LISTEN", "KILN_GATEWAY_ADMIN_LISTEN", "KILN_WATCH_NAMESPACES", "KILN_WAKE_URL",
                "KILN_GATEWAY_WAIT_SECONDS", "KILN_GATEWAY_MAX_WAITING", "KILN_GATEWAY_MAX_BODY_BYTES",
                "KILN_GATEWAY_DRAIN_SECONDS", "KILN_LOG_FORMAT", "KILN_WATCH_TIMEOUT", "KILN_GATEWAY_UPSTREAM_TIMEOUT",
                "KILN_GATEWAY_AUTH"}
    source = "".join(p.read_text() for p in (REPO / "operator" / "kiln_operator" / "gateway").glob("*.py"))
    for name in env:
        assert name in consumed and (name == "POD_IP" or f'"{name}"' in source), name


def test_a_disabled_gateway_leaves_nothing_of_it():
    objs = rendered({"gateway": {"enabled": False}, "networkPolicy": {"enabled": True},
                     "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}})
    assert not [o for o in objs if "gateway" in o["metadata"]["name"]]
    netpol = one(objs, "NetworkPolicy", "kiln-operator")
    assert [r["ports"][0]["port"] for r in netpol["spec"]["ingress"]] == ["health"]  # no peerless rule: not open
    assert "KilnGatewayDown" not in json.dumps(one(objs, "PrometheusRule"))


def policy_peers(policy: dict, port: str) -> list[dict] | None:
    """The peers of the ingress rule for port; None when the rule admits every peer."""
    rule = next(r for r in policy["spec"]["ingress"] if [p["port"] for p in r["ports"]] == [port])
    return rule.get("from")


def test_network_policies_are_on_by_default_and_the_gateway_takes_authenticated_traffic_from_anyone():
    objs = rendered()
    gw_labels = one(objs, "Deployment", "kiln-gateway")["spec"]["selector"]["matchLabels"]
    gw_policy = one(objs, "NetworkPolicy", "kiln-gateway")
    assert gw_policy["spec"]["podSelector"]["matchLabels"] == gw_labels
    assert policy_peers(gw_policy, "http") is None  # every request carries a token the gateway checks
    assert policy_peers(gw_policy, "admin") is None  # probes and Prometheus
    op_policy = one(objs, "NetworkPolicy", "kiln-operator")
    assert policy_peers(op_policy, "http") == [{"podSelector": {"matchLabels": gw_labels}}]  # /wake, gateway only
    assert policy_peers(op_policy, "health") is None
    # all namespaces: the chart cannot know where serving pods live, so it makes no policy for them
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "NetworkPolicy"] == ["kiln-operator", "kiln-gateway"]


def test_serving_pods_in_watched_namespaces_are_reachable_only_from_the_gateway_and_the_operator():
    from kiln_contract import spec as specs
    from kiln_operator import deployment_builder

    values = {"operator": {"watchNamespaces": ["team-a", "team-b"]},
              "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]}}
    objs = rendered(values)
    serving = sorted((o for o in objs if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == "kiln-serving"),
                     key=lambda o: o["metadata"]["namespace"])
    assert [o["metadata"]["namespace"] for o in serving] == ["team-a", "team-b"]
    meta = {"name": "iris", "namespace": "team-a", "uid": "u-1", "generation": 1}
    dep = {"metadata": meta, "spec": specs.validate("Deployment", {"model": {"name": "iris"}})}
    entry = {"version": 1, "uri": "s3://k/m/v1", "sha256": "a" * 64, "formats": ["onnx"],
             "artifacts": {"onnx": {"file": "model.onnx", "sha256": "a" * 64}}}
    template = deployment_builder.build_server(dep, entry, track="stable", replicas=1, image="kiln/server:0.1.0",
                                               s3_secret="kiln-s3")["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    in_release = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kiln-system"}}}
    for policy in serving:
        selector = policy["spec"]["podSelector"]
        # it selects the pods the operator builds, and only serving pods
        assert selector["matchLabels"].items() <= pod_labels.items()
        assert [(e["key"], e["operator"]) for e in selector["matchExpressions"]] == [("kiln.dev/deployment", "Exists")]
        assert "kiln.dev/deployment" in pod_labels
        assert policy["spec"]["policyTypes"] == ["Ingress"] and len(policy["spec"]["ingress"]) == 1
        assert "http" in {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert policy_peers(policy, "http") == [
            {**in_release, "podSelector": {"matchLabels": one(objs, "Deployment", "kiln-gateway")["spec"][
                "selector"]["matchLabels"]}},
            {**in_release, "podSelector": {"matchLabels": one(objs, "Deployment", "kiln-operator")["spec"][
                "selector"]["matchLabels"]}},
            *values["networkPolicy"]["metricsFrom"]]
    # without the gateway, clients call each Deployment's Service: no policy would let them
    without_gateway = rendered({**values, "gateway": {"enabled": False}})
    assert not [o for o in without_gateway if o["metadata"]["name"] == "kiln-serving"]
    assert not [o for o in rendered({**values, "networkPolicy": {"enabled": False}}) if o["kind"] == "NetworkPolicy"]


def test_gateway_auth_none_drops_the_review_rights_and_needs_a_network_policy_peer_list():
    with pytest.raises(helm_python.HelmError, match=re.escape("networkPolicy.gatewayFrom")):
        chart.render({"gateway": {"auth": "none"}})
    with pytest.raises(helm_python.HelmError, match="auth"):
        chart.render({"gateway": {"auth": "off"}})
    peers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}]
    objs = rendered({"gateway": {"auth": "none"}, "networkPolicy": {"gatewayFrom": peers}})
    assert env_of(gateway_container(objs))["KILN_GATEWAY_AUTH"] == "none"
    assert policy_peers(one(objs, "NetworkPolicy", "kiln-gateway"), "http") == peers
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRole"} == {
        "kiln-operator", "kiln-operator-cluster", "kiln-gateway"}
    objs = rendered({"gateway": {"auth": "none"}, "networkPolicy": {"enabled": False}})  # a trusted dev cluster
    assert not [o for o in objs if o["kind"] == "NetworkPolicy"]


def test_the_rendered_kopf_command_line_parses():
    from click.testing import CliRunner
    from kopf import cli

    for values in ({}, {"operator": {"watchNamespaces": ["a", "b"]}}):
        c = operator_container(rendered(values))
        argv = [a.replace("$(POD_IP)", "127.0.0.1") for a in c["args"]]
        ctx = cli.run.make_context("run", list(argv))
        assert ctx.params["standalone"] is True and ctx.params["modules"] == ("kiln_operator",)
        assert ctx.params["liveness_endpoint"] == "http://127.0.0.1:8080/healthz"
        assert bool(ctx.params["clusterwide"]) != bool(ctx.params["namespaces"])  # kopf refuses both
    assert CliRunner().invoke(cli.main, ["run", "--nonsense"]).exit_code != 0  # the parse above can fail


def leaves(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict) and v:
            yield from leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def test_ci_values_files_set_every_option():
    """Every key of values.yaml is set by ci/full-values.yaml or, where options exclude each other, another ci file."""
    covered = {leaf for path in CI_VALUES for leaf in leaves(values_of(path))}
    missing = [k for k in leaves(values_of(CHART / "values.yaml"))
               if not any(c == k or c.startswith(k + ".") for c in covered)]
    assert not missing, f"no ci/*-values.yaml sets {missing}"


def test_full_values_exercise_every_option():
    values = values_of(CHART / "ci" / "full-values.yaml")
    objs = rendered(values)
    kinds = {o["kind"] for o in objs}
    assert {"PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy", "Job", "PersistentVolumeClaim", "Secret",
            "RoleBinding", "PodDisruptionBudget"} <= kinds
    c = operator_container(objs)
    pod = one(objs, "Deployment", "kiln-operator")["spec"]["template"]
    assert c["image"] == "acme/kiln-operator@" + values["image"]["digest"] and c["imagePullPolicy"] == "Always"
    assert "--namespace=team-a" in c["args"] and "--namespace=team-b" in c["args"]
    assert "--all-namespaces" not in c["args"] and "--log-format=full" in c["args"]
    assert "--liveness=http://0.0.0.0:9080/healthz" in c["args"]
    env = env_of(c)
    assert env["KILN_OPERATOR_LISTEN"] == "0.0.0.0:9082" and env["KILN_ALLOWED_IMAGES"] == "acme/kiln-,acme/ml-team-"
    assert env["KILN_TRAINER_IMAGE"] == "acme/kiln-trainer:0.1.0-rc1" and env["KILN_S3_SECRET"] == "team-s3"
    assert env["KILN_DEFAULT_STORAGE"] == "s3://ml-models/registry" and env["KILN_EXTRA"] == "1"
    assert env["KILN_S3_ENDPOINT"] == "http://kiln-seaweedfs.kiln-system.svc:8333"
    assert c["envFrom"] == [{"secretRef": {"name": "kiln-s3"}}]
    assert "AWS_SECRET_ACCESS_KEY" not in env  # credentials only through the Secret
    assert pod["metadata"]["labels"]["team"] == "platform" and "checksum/s3-secret" in pod["metadata"]["annotations"]
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "kiln-sa" and spec["priorityClassName"] == "system-cluster-critical"
    assert spec["nodeSelector"] == {"kubernetes.io/os": "linux"} and spec["tolerations"][0]["key"] == "dedicated"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}] and "nodeAffinity" in spec["affinity"]
    secret = one(objs, "Secret", "kiln-s3")
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "trial-access-key",
                                    "AWS_SECRET_ACCESS_KEY": "trial-secret-key"}
    job = one(objs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "ml-models"
    assert one(objs, "ConfigMap")["metadata"]["namespace"] == "monitoring"
    assert one(objs, "PodMonitor", "kiln-serving")["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    assert one(objs, "Service", "kiln-operator")["spec"]["type"] == "NodePort"
    assert one(objs, "Service", "kiln-gateway")["spec"]["type"] == "LoadBalancer"
    seaweed = one(objs, "Deployment", "kiln-seaweedfs")["spec"]["template"]["spec"]
    assert seaweed["securityContext"]["runAsUser"] == 20001
    assert one(objs, "PersistentVolumeClaim")["spec"]["storageClassName"] == "standard"
    gw = one(objs, "Deployment", "kiln-gateway")
    gw_pod = gw["spec"]["template"]["spec"]
    assert gw["spec"]["replicas"] == 3 and gw_pod["serviceAccountName"] == "kiln-gw-sa"
    assert gw_pod["terminationGracePeriodSeconds"] == 30  # drainSeconds 10, then 20 s for requests in flight
    assert "requiredDuringSchedulingIgnoredDuringExecution" in gw_pod["affinity"]["podAntiAffinity"]
    gw_env = env_of(gw_pod["containers"][0])
    assert gw_env["KILN_GATEWAY_LISTEN"] == "0.0.0.0:9081" and gw_env["KILN_GATEWAY_ADMIN_LISTEN"] == "0.0.0.0:9083"
    assert gw_env["KILN_WATCH_NAMESPACES"] == "team-a,team-b" and gw_env["KILN_WAKE_URL"].endswith(":9082")
    assert gw_env["KILN_LOG_FORMAT"] == "plain" and gw_env["KILN_GATEWAY_UPSTREAM_TIMEOUT"] == "30"
    assert gw_pod["containers"][0]["resources"]["limits"]["cpu"] == "2"
    assert one(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 2
    assert one(objs, "ServiceAccount", "kiln-gw-sa")["metadata"]["annotations"] == {"acme.kiln/role": "gateway"}
    # predictions only from team-a; the operator's /wake and /metrics only from the gateway and monitoring
    gw_netpol = one(objs, "NetworkPolicy", "kiln-gateway")
    assert gw_netpol["spec"]["podSelector"]["matchLabels"] == gw["spec"]["selector"]["matchLabels"]
    traffic = next(r for r in gw_netpol["spec"]["ingress"] if r["ports"][0]["port"] == "http")
    assert traffic["from"] == values["networkPolicy"]["gatewayFrom"]
    op_netpol = one(objs, "NetworkPolicy", "kiln-operator")
    http = next(r for r in op_netpol["spec"]["ingress"] if r["ports"][0]["port"] == "http")
    assert http["from"] == [{"podSelector": {"matchLabels": gw["spec"]["selector"]["matchLabels"]}},
                            *values["networkPolicy"]["metricsFrom"]]


def test_production_values_use_an_existing_secret_and_no_gateway():
    objs = rendered(values_of(CHART / "ci" / "production-values.yaml"))
    assert not [o for o in objs if o["kind"] in ("Secret", "ServiceAccount")]
    assert not [o for o in objs if "gateway" in o["metadata"]["name"]]
    c = operator_container(objs)
    env = env_of(c)
    assert c["envFrom"] == [{"secretRef": {"name": "kiln-s3"}}]
    assert env["KILN_S3_ENDPOINT"] == "http://minio.storage.svc:9000"
    assert [p["name"] for p in one(objs, "Service")["spec"]["ports"]] == ["http", "health"]
    binding = one(objs, "ClusterRoleBinding", "kiln-operator")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kiln-operator-managed",
                                    "namespace": "kiln-system"}]
    assert one(objs, "Job")["spec"]["template"]["spec"]["containers"][0]["envFrom"] == c["envFrom"]


@pytest.mark.parametrize("values, message", [
    ({"imagee": {"tag": "x"}}, "imagee"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"s3": {"bucket": "Not_A_Bucket"}}, "bucket"),
    ({"operator": {"watchNamespaces": ["Bad Name"]}}, "watchNamespaces"),
    ({"images": {"allowed": ["kiln/,evil/"]}}, "allowed"),
    ({"s3": {"existingSecret": "mine", "accessKeyId": "a", "secretAccessKey": "b"}}, "not both"),
    ({"s3": {"accessKeyId": "a"}}, "go together"),
    ({"seaweedfs": {"enabled": True}}, "seaweedfs.enabled needs"),
])
def test_bad_values_are_refused_with_the_field_named(values, message):
    with pytest.raises(helm_python.HelmError, match=re.escape(message)):
        chart.render(values)


def test_all_namespaces_deny_the_operator_writes_in_protected_namespaces():
    """RBAC cannot exclude kube-system from a ClusterRole; the admission policy does (Kubernetes 1.30+)."""
    policy = one(rendered(), "ValidatingAdmissionPolicy", "kiln-operator-protected-namespaces")
    selector = policy["spec"]["matchConstraints"]["namespaceSelector"]["matchExpressions"][0]
    assert selector["values"] == ["kube-system", "kube-public", "kube-node-lease", "kiln-system"]
    assert policy["spec"]["matchConditions"][0]["expression"] == \
        'request.userInfo.username == "system:serviceaccount:kiln-system:kiln-operator"'
    rules = policy["spec"]["matchConstraints"]["resourceRules"][0]
    # every workload resource the operator may write, configmaps included (kube-system's hold the cluster's own)
    written = {res for (group, res), verbs in EXPECTED_RULES.items()
               if group in ("", "apps", "batch", "autoscaling", "policy") and verbs & {"create", "patch", "delete"}}
    assert written == {"services", "configmaps", "deployments", "jobs", "horizontalpodautoscalers",
                       "poddisruptionbudgets", "events"}
    assert written <= set(rules["resources"]) and "DELETE" in rules["operations"]
    assert policy["spec"]["failurePolicy"] == "Fail" and policy["spec"]["validations"][0]["expression"] == "false"
    binding = one(rendered(), "ValidatingAdmissionPolicyBinding", "kiln-operator-protected-namespaces")
    assert binding["spec"] == {"policyName": "kiln-operator-protected-namespaces", "validationActions": ["Deny"]}
    for values in ({"operator": {"watchNamespaces": ["team-a"]}}, {"rbac": {"protectedNamespaces": []}}):
        assert not [o for o in rendered(values) if o["kind"].startswith("ValidatingAdmissionPolicy")]


def test_watch_namespaces_bind_the_namespaced_rules_per_namespace_only():
    objs = rendered({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    for role in ("kiln-operator", "kiln-gateway"):
        bindings = [o for o in objs if o["kind"] == "RoleBinding" and o["roleRef"]["name"] == role]
        assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
        assert all(b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                    "name": role} for b in bindings)
        assert all(b["subjects"][0]["name"] == role for b in bindings)
    assert env_of(gateway_container(objs))["KILN_WATCH_NAMESPACES"] == "team-a,team-b"
    # the namespaced rules are not granted cluster-wide; token and access reviews are cluster-scoped questions
    assert [b["roleRef"]["name"] for b in objs if b["kind"] == "ClusterRoleBinding"] == [
        "kiln-gateway-auth", "kiln-operator-cluster"]
    cluster_rules = one(objs, "ClusterRole", "kiln-operator-cluster")["rules"]
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]} in cluster_rules


# -- RBAC --------------------------------------------------------------------------------------------------


def rbac_rules(objs: list[dict]) -> list[dict]:
    return [r for o in objs if o["kind"] in ("ClusterRole", "Role") for r in o["rules"]]


@pytest.mark.parametrize("values_file", [None, *CI_VALUES], ids=lambda p: p.name if p else "defaults")
def test_rbac_has_no_wildcards(values_file):
    rules = rbac_rules(rendered(values_of(values_file) if values_file else None))
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(key) or []), f"wildcard in {key}: {rule}"
        assert "nonResourceURLs" not in rule


def test_rbac_has_no_wildcards_check_can_fail():
    objs = rendered()
    one(objs, "ClusterRole", "kiln-operator")["rules"].append({"apiGroups": [""], "resources": ["*"], "verbs": ["get"]})
    assert any("*" in r["resources"] for r in rbac_rules(objs))


WRITES = {"get", "list", "watch", "create", "patch", "delete"}  # watched, applied (server-side) and pruned
EXPECTED_RULES = {
    # (apiGroup, resource): verbs -- each justified by a call in operator/kiln_operator/ or kopf
    ("kiln.dev", "trainingjobs"): {"get", "list", "watch", "patch"},
    ("kiln.dev", "models"): {"get", "list", "watch", "patch"},
    ("kiln.dev", "deployments"): {"get", "list", "watch", "patch"},
    ("kiln.dev", "trainingjobs/status"): {"patch"},
    ("kiln.dev", "deployments/status"): {"patch"},
    ("kiln.dev", "models/status"): {"update"},
    ("kiln.dev", "trainingjobs/finalizers"): {"update"},
    ("kiln.dev", "deployments/finalizers"): {"update"},
    ("kiln.dev", "models/finalizers"): {"update"},
    ("", "events"): {"create"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "delete"},
    ("", "pods"): {"list", "watch"},
    ("", "services"): WRITES,
    ("", "configmaps"): WRITES,  # the payload-logging ConfigMap a Deployment's servers follow (sampleRate)
    ("apps", "deployments"): WRITES,
    ("autoscaling", "horizontalpodautoscalers"): WRITES,
    ("policy", "poddisruptionbudgets"): WRITES,
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
}
# The gateway reads and writes nothing; it asks who sent a request and whether they may (reviews are not objects).
EXPECTED_GATEWAY_RULES = {("", "pods"): {"get", "list", "watch"}, ("kiln.dev", "deployments"): {"get", "list", "watch"}}
EXPECTED_GATEWAY_AUTH_RULES = {("authentication.k8s.io", "tokenreviews"): {"create"},
                               ("authorization.k8s.io", "subjectaccessreviews"): {"create"}}
# What a prediction client needs, and all it gets: the subresource the gateway's SubjectAccessReview names.
EXPECTED_PREDICTOR_RULES = {("kiln.dev", "deployments/predict"): {"create"}}


def grants(rules: list[dict]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                out.setdefault((group, resource), set()).update(rule["verbs"])
    return out


def role_rules(objs: list[dict], *names: str) -> list[dict]:
    return [r for o in objs if o["kind"] == "ClusterRole" and o["metadata"]["name"] in names for r in o["rules"]]


def test_rbac_is_exactly_what_the_operator_and_the_gateway_use():
    objs = rendered()
    assert grants(role_rules(objs, "kiln-operator", "kiln-operator-cluster")) == EXPECTED_RULES
    assert grants(role_rules(objs, "kiln-gateway")) == EXPECTED_GATEWAY_RULES
    assert grants(role_rules(objs, "kiln-gateway-auth")) == EXPECTED_GATEWAY_AUTH_RULES
    assert grants(role_rules(objs, "kiln-predictor")) == EXPECTED_PREDICTOR_RULES
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "ClusterRole"} == {
        "kiln-operator", "kiln-operator-cluster", "kiln-gateway", "kiln-gateway-auth", "kiln-predictor"}
    for name in ("kiln-gateway", "kiln-gateway-auth"):
        binding = one(objs, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kiln-gateway", "namespace": "kiln-system"}]
    # nobody is bound to the predictor role by the chart: namespace admins and editors hold it (aggregation), so
    # RBAC lets them bind it in their namespaces
    assert not [b for b in objs if b["kind"] in ("RoleBinding", "ClusterRoleBinding")
                and b["roleRef"]["name"] == "kiln-predictor"]
    labels = one(objs, "ClusterRole", "kiln-predictor")["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels


def test_rbac_covers_every_child_the_builders_make():
    """Every object the pure builders produce can be got, created and patched (kube.ensure / ensure_job)."""
    from kiln_contract import spec as specs
    from kiln_operator import deployment_builder, trainingjob_builder

    meta = {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1}
    tj = {"metadata": meta, "spec": specs.validate("TrainingJob", {
        "model": "iris", "dataset": {"uri": "builtin:iris"}, "algorithm": {"name": "knn"}})}
    dep = {"metadata": meta, "spec": specs.validate("Deployment", {"model": {"name": "iris"},
                                                                   "replicas": {"min": 2, "max": 3}})}
    entry = {"version": 1, "uri": "s3://kiln/models/ml/iris/v1", "sha256": "a" * 64, "formats": ["onnx"],
             "artifacts": {"onnx": {"file": "model.onnx", "sha256": "a" * 64}}}
    children = [
        (trainingjob_builder.build_job(tj, version=1, run="g1", output=entry["uri"], image="kiln/trainer:0.1.0",
                                       s3_secret="kiln-s3"), {"get", "create"}),
        (deployment_builder.build_service(dep), {"get", "create", "patch"}),
        (deployment_builder.build_server(dep, entry, track="stable", replicas=1, image="kiln/server:0.1.0",
                                         s3_secret="kiln-s3"), {"get", "create", "patch", "list", "delete"}),
        (deployment_builder.build_hpa(dep, "iris-v1", "autoscaling/v2"), {"get", "create", "patch"}),
        (deployment_builder.build_pdb(dep, "policy/v1"), {"get", "create", "patch"}),
    ]
    plural = {"Job": "jobs", "Service": "services", "Deployment": "deployments",
              "HorizontalPodAutoscaler": "horizontalpodautoscalers", "PodDisruptionBudget": "poddisruptionbudgets"}
    granted = grants(rbac_rules(rendered()))
    for manifest, verbs in children:
        group = manifest["apiVersion"].rpartition("/")[0]
        key = (group, plural[manifest["kind"]])
        assert verbs <= granted.get(key, set()), f"{key} needs {verbs - granted.get(key, set())}"
        owner = manifest["metadata"]["ownerReferences"][0]
        assert "update" in granted[("kiln.dev", f"{owner['kind'].lower()}s/finalizers")]


# -- monitoring ----------------------------------------------------------------------------------------------


def test_dashboard_and_rules_use_metrics_the_server_exports():
    objs = rendered(values_of(CHART / "ci" / "full-values.yaml"))
    dashboard = json.loads(one(objs, "ConfigMap")["data"]["kiln.json"])
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("p99", "throughput", "replicas", "input distribution", "missing", "training runs", "error"):
        assert wanted in titles, wanted
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = [r["expr"] for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    sources = [REPO / "server-image" / "kiln_server" / "metrics.py", REPO / "operator" / "kiln_operator" /
               "operator_metrics.py", REPO / "operator" / "kiln_operator" / "gateway" / "metrics.py"]
    metrics_source = "".join(p.read_text() for p in sources)
    used = set(re.findall(r"\bkiln_[a-z_]+", " ".join(exprs + rules)))
    assert used
    for name in used:
        base = re.sub(r"_(bucket|count|sum|total)$", "", name)
        assert f'"{base}' in metrics_source, f"{name} is exported by none of {[p.name for p in sources]}"
    assert any("histogram_quantile(0.99" in e for e in exprs)
    # the operator's and the gateway's own metrics, each on the dashboard
    for name in ("kiln_operator_reconciles_total", "kiln_operator_reconcile_duration_seconds_bucket",
                 "kiln_operator_spec_to_action_seconds_bucket", "kiln_operator_api_requests_total",
                 "kiln_operator_jobs_started_total", "kiln_operator_versions_registered_total",
                 "kiln_operator_promotions_total", "kiln_operator_rollouts_total", "kiln_operator_rollbacks_total",
                 "kiln_operator_queue_depth", "kiln_gateway_requests_total",
                 "kiln_gateway_request_duration_seconds_bucket", "kiln_gateway_waiting_requests",
                 "kiln_gateway_wakes_total"):
        assert name in " ".join(exprs), name
    assert {r["alert"] for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"] if "alert" in r} == {
        "KilnServingLatencyHigh", "KilnServingErrorRateHigh", "KilnOperatorDown", "KilnTrainingRunFailed",
        "KilnGatewayDown", "KilnGatewayRequestsWaiting"}
    assert "{{ $labels.model }}" in json.dumps(one(objs, "PrometheusRule"))  # Prometheus templating survives Helm
    monitor = one(objs, "PodMonitor", "kiln-serving")
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "kiln-server",
                                                          "app.kubernetes.io/managed-by": "kiln"}


def test_podmonitor_selects_the_pods_the_operator_builds():
    from kiln_contract import spec as specs
    from kiln_operator import deployment_builder

    meta = {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1}
    dep = {"metadata": meta, "spec": specs.validate("Deployment", {"model": {"name": "iris"}})}
    entry = {"version": 1, "uri": "s3://k/m/v1", "sha256": "a" * 64, "formats": ["onnx"],
             "artifacts": {"onnx": {"file": "model.onnx", "sha256": "a" * 64}}}
    server = deployment_builder.build_server(dep, entry, track="stable", replicas=1, image="kiln/server:0.1.0",
                                             s3_secret="kiln-s3")
    template = server["spec"]["template"]
    monitor = one(rendered({"monitoring": {"podMonitor": {"enabled": True}}}), "PodMonitor", "kiln-serving")
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    port = monitor["spec"]["podMetricsEndpoints"][0]["port"]
    assert port in {p["name"] for p in template["spec"]["containers"][0]["ports"]}


@pytest.mark.parametrize("name, port", [("kiln-operator", "http"), ("kiln-gateway", "admin")])
def test_podmonitors_scrape_the_operator_and_the_gateway_metrics_ports(name, port):
    objs = rendered({"monitoring": {"podMonitor": {"enabled": True}}})
    monitor = one(objs, "PodMonitor", name)
    template = one(objs, "Deployment", name)["spec"]["template"]
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["kiln-system"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == port
    assert monitor["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert port in {p["name"] for p in template["spec"]["containers"][0]["ports"]}


def test_notes_tell_how_to_reach_the_gateway_and_what_each_namespace_needs():
    notes = chart.render()["kiln/templates/NOTES.txt"]
    assert "kiln-gateway.kiln-system.svc:8081/<namespace>/<deployment>/v2/models/<model>/infer" in notes
    assert 'needs the Secret "kiln-s3"' in notes and "pod-security.kubernetes.io/enforce=restricted" in notes
