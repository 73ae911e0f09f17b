"""Who gets through the gateway on the local cluster: the real API server checks the tokens, RBAC decides.

Two tenant namespaces, A and B, each serving iris, each with a ServiceAccount `client` bound (RoleBinding, in its own
namespace only) to a ClusterRole with the chart's predictor rule (create on deployments/predict, kiln.dev), and a
ServiceAccount `stranger` in A bound to nothing. Tokens come from the TokenRequest API, as `kubectl create token`
makes them.
"""

from __future__ import annotations

import time
import uuid

import pytest
from kube_helpers import GROUP, VERSION, wait_until
from kubernetes import client
from test_gateway_cluster import ROWS, request, serve_iris, status_of

from kiln_local import cluster as local
from kiln_local.gateway_client import infer

pytestmark = pytest.mark.integration

# The rule of the chart's <release>-predictor ClusterRole (charts/kiln/templates/gateway/predictor-role.yaml; its
# rules are pinned by tests/unit/test_chart.py), under a name of this test's own.
PREDICT_RULE = client.V1PolicyRule(api_groups=["kiln.dev"], resources=["deployments/predict"], verbs=["create"])


@pytest.fixture(scope="module")
def gateway(cluster):
    """The cluster's gateway process (started when it is not running), which checks tokens."""
    local.start_gateway()
    return local.GATEWAY


@pytest.fixture
def predictor_role():
    rbac = client.RbacAuthorizationV1Api()
    name = f"t-predictor-{uuid.uuid4().hex[:6]}"
    rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name=name), rules=[PREDICT_RULE]))
    yield name
    rbac.delete_cluster_role(name)


@pytest.fixture
def tenant_b(core):
    """A second namespace ready for Kiln workloads (kiln_ns is the first)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(lambda: any(sa.metadata.name == "default" and sa.secrets
                           for sa in core.list_namespaced_service_account(name).items), 30, "the default account")
    local.copy_s3_secrets(core, name)
    yield name
    core.delete_namespace(name)


def service_account(core, ns: str, name: str, role: str | None = None) -> str:
    """ServiceAccount ns/name, bound to role in ns when given; a token of it."""
    core.create_namespaced_service_account(ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
    if role:
        client.RbacAuthorizationV1Api().create_namespaced_role_binding(ns, client.V1RoleBinding(
            metadata=client.V1ObjectMeta(name=f"{name}-predicts"),
            role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
            subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=ns)]))
    return local.request_token(ns, name)[0]


def test_tenants_reach_their_own_models_only_and_refused_requests_never_wake_one(
        gateway, custom, core, kiln_ns, tenant_b, predictor_role):
    a, b = kiln_ns, tenant_b
    serve_iris(custom, a)
    serve_iris(custom, b)
    token_a = service_account(core, a, "client", predictor_role)
    token_b = service_account(core, b, "client", predictor_role)
    stranger = service_account(core, a, "stranger")
    elsewhere = local.request_token(a, "client", audiences=["not-the-api-server"])[0]
    infer_a, infer_b = f"/{a}/iris/v2/models/iris/infer", f"/{b}/iris/v2/models/iris/infer"

    # no token, a garbage token, a token meant for another audience: 401 with the challenge
    for token in ("", "garbage", elsewhere):
        status, headers, body = request("POST", infer_a, b"{}", token=token)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), (token[:10], body)
    # each tenant's token on its own model
    for ns, token in ((a, token_a), (b, token_b)):
        status, answer = infer(ns, "iris", "iris", ROWS, token=token)
        assert status == 200, answer
        assert [int(x) for x in next(o for o in answer["outputs"] if o["name"] == "label")["data"]] == [0, 1, 2]
    # A's token on B's model, its metadata and health, and on a Deployment B does not have: the same 403
    for method, path in (("POST", infer_b), ("GET", f"/{b}/iris/v2/models/iris"), ("GET", f"/{b}/iris/v2/health/ready"),
                         ("GET", f"/{b}/nothing-here/v2/models/x")):
        status, _, body = request(method, path, b"{}" if method == "POST" else b"", token=token_a)
        assert status == 403, (path, body)
        assert f'namespace "{b}"' in body["error"] and f"system:serviceaccount:{a}:client" in body["error"], body
    # a ServiceAccount bound to nothing, in A itself
    status, _, body = request("POST", infer_a, b"{}", token=stranger)
    assert status == 403 and f'Kiln Deployment "iris" in namespace "{a}"' in body["error"], body
    # within its own namespace a tenant learns what exists
    status, _, body = request("GET", f"/{a}/nothing-here/v2/models/x", token=token_a)
    assert status == 404, body

    # A's model scaled to zero: refused requests neither wait nor wake it
    custom.patch_namespaced_custom_object(GROUP, VERSION, a, "deployments", "iris", {"spec": {
        "replicas": {"min": 0, "max": 1}, "autoscaling": {"scaleToZeroAfter": 5}}})

    def serving_pods() -> list:
        return core.list_namespaced_pod(a, label_selector="kiln.dev/deployment=iris").items

    wait_until(lambda: status_of(custom, a, "deployments", "iris").get("replicas") == 0 and not serving_pods(), 120,
               "scale to zero", interval=0.5)
    for token, expected in (("", 401), ("garbage", 401), (token_b, 403), (stranger, 403)):
        t0 = time.monotonic()
        status, _, body = request("POST", infer_a, b"{}", token=token)
        assert status == expected and time.monotonic() - t0 < 5, body
    time.sleep(6)  # longer than the gateway's wake interval and the operator's reaction to one
    assert status_of(custom, a, "deployments", "iris").get("replicas") == 0 and not serving_pods()
    # its own client wakes it
    status, answer = infer(a, "iris", "iris", ROWS, timeout=150, token=token_a)
    assert status == 200, answer
