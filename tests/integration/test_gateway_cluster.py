"""The gateway/activator as its own process on the local cluster (kiln-gateway, see kiln_local.cluster).

Unknown Deployments answered 404 at once; waiting capped per Deployment; a client that goes away frees its
waiter; a trained and served iris answered through it; a Deployment scaled to zero woken by its first request;
and predictions that never notice the operator being restarted, because the gateway does not depend on it.
Requests carry the kiln-tester's token (kiln_local.cluster.tester_token): the gateway checks tokens here as in
production; test_gateway_auth.py tests who gets in.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.request

import pytest
from kube_helpers import GROUP, VERSION, create, wait_until
from kubernetes import client

from kiln_local import cluster as local
from kiln_local.gateway_client import Load, auth_headers, infer

pytestmark = pytest.mark.integration

ROWS = [[5.1, 3.5, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4], [6.3, 3.3, 6.0, 2.5]]  # one of each species


@pytest.fixture(scope="module")
def gateway(cluster):
    """The cluster's gateway process (started when it is not running, e.g. after `kiln_local up --no-operator`)."""
    local.start_gateway()
    return local.GATEWAY


def address() -> tuple[str, int]:
    host, _, port = local.GATEWAY.rpartition(":")
    return host, int(port)


def metric(name: str, missing: float | None = None) -> float:
    """A sample of the gateway's /metrics, by its full name with labels, e.g. 'kiln_gateway_waiting_requests'."""
    with urllib.request.urlopen(f"http://{local.GATEWAY_ADMIN}/metrics", timeout=5) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    if missing is not None:
        return missing
    raise AssertionError(f"{name} is not exported")


def request(method: str, path: str, body: bytes = b"", timeout: float = 10,
            token: str | None = None) -> tuple[int, dict, dict]:
    """One request through the gateway with token (None: the kiln-tester's; "": none)."""
    conn = http.client.HTTPConnection(*address(), timeout=timeout)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json", **auth_headers(token)})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), json.loads(resp.read() or b"{}")
    finally:
        conn.close()


def held(path: str, token: str | None = None) -> socket.socket:
    """A request sent and left waiting for its answer; closing the socket is the client going away."""
    sock = socket.create_connection(address(), timeout=10)
    auth = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(token).items())
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: gateway\r\n{auth}\r\n".encode())
    return sock


def status_of(custom, ns, plural, name) -> dict:
    return custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name).get("status") or {}


def known_to_the_gateway(path: str) -> bool:
    """True once a request for path waits instead of being answered 404 (the Deployment is in the table)."""
    sock = held(path)
    sock.settimeout(0.5)
    try:
        return not sock.recv(64).startswith(b"HTTP/1.1 404")
    except TimeoutError:
        return True
    finally:
        sock.close()


def serve_iris(custom, ns: str, deployment_spec: dict | None = None) -> dict:
    """Train iris (a few seconds), serve it, wait until the Kiln Deployment is Ready; its status."""
    create(custom, ns, "models", "Model", "iris", {"promotion": {"policy": "auto"}})
    create(custom, ns, "trainingjobs", "TrainingJob", "iris", {
        "model": "iris", "dataset": {"uri": "builtin:iris"},
        "algorithm": {"name": "random_forest", "params": {"n_estimators": 20, "random_state": 0}},
        "export": {"formats": ["onnx"]}})
    trained = wait_until(lambda: (s := status_of(custom, ns, "trainingjobs", "iris")).get("phase") in (
        "Succeeded", "Failed") and s, 180, "training iris", interval=0.5)
    assert trained["phase"] == "Succeeded", trained
    create(custom, ns, "deployments", "Deployment", "iris", deployment_spec or {"model": {"name": "iris"}})

    def serving():
        st = status_of(custom, ns, "deployments", "iris")
        return any(c["type"] == "Ready" and c["status"] == "True" and c["reason"] == "Serving"
                   for c in st.get("conditions", [])) and st

    return wait_until(serving, 120, "iris to be served", interval=0.5)


def test_a_deployment_that_does_not_exist_is_404_at_once(gateway, namespace):
    t0 = time.monotonic()
    status, headers, body = request("POST", f"/{namespace}/nothing-here/v2/models/x/infer", b"{}")
    assert status == 404 and "nothing-here" in body["error"], body
    assert headers["Content-Type"].startswith("application/json")
    assert time.monotonic() - t0 < 5
    # the caller is checked first: without a token nothing is said about what exists
    status, headers, body = request("POST", f"/{namespace}/nothing-here/v2/models/x/infer", b"{}", token="")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), body
    for path in ("/Not_A_Namespace/x/y", "/a%2Fb/iris/v2/models/iris", f"/{namespace}%2Fx/iris/v2"):
        for token in (None, ""):  # refused before any check: names the API server could never hold
            status, _, body = request("GET", path, token=token)
            assert status == 404 and "<namespace>/<deployment>" in body["error"], (path, body)


def test_waiting_is_capped_and_clients_that_go_away_free_their_waiters(gateway, custom, namespace):
    # A Deployment of a Model that does not exist: known to the gateway, never a ready pod.
    create(custom, namespace, "deployments", "Deployment", "ghost",
           {"model": {"name": "ghost"}, "replicas": {"min": 0, "max": 1}})
    path = f"/{namespace}/ghost/v2/health/ready"
    wait_until(lambda: known_to_the_gateway(path), 30, "the gateway to see the Deployment")
    wait_until(lambda: metric("kiln_gateway_waiting_requests") == 0, 30, "earlier waiters to be gone")
    cap = 100  # KILN_GATEWAY_MAX_WAITING's default, which the local cluster keeps
    waiting = []
    try:
        for _ in range(cap):
            waiting.append(held(path))
        wait_until(lambda: metric("kiln_gateway_waiting_requests") >= cap, 30, f"{cap} waiting requests")
        t0 = time.monotonic()
        status, headers, body = request("GET", path)
        assert status == 503 and headers.get("Retry-After") == "1" and "already wait" in body["error"], body
        assert time.monotonic() - t0 < 5
    finally:
        for sock in waiting:
            sock.close()
    # every client went away: every waiter is released, nothing is left behind
    wait_until(lambda: metric("kiln_gateway_waiting_requests") == 0, 30, "the waiters to be freed")

    # a request still waiting when its Deployment is deleted is answered 404 at once
    sock = held(path)
    wait_until(lambda: metric("kiln_gateway_waiting_requests") == 1, 30, "one waiter")
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "deployments", "ghost")
    sock.settimeout(30)
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 404") and b"deleted" in answer, answer


def test_a_served_model_answers_through_the_gateway_as_it_does_directly(gateway, custom, kiln_ns):
    serve_iris(custom, kiln_ns)
    status, answer = infer(kiln_ns, "iris", "iris", ROWS)
    assert status == 200, answer
    labels = next(o for o in answer["outputs"] if o["name"] == "label")["data"]
    assert [int(x) for x in labels] == [0, 1, 2]
    pod = next(p for p in client.CoreV1Api().list_namespaced_pod(kiln_ns, label_selector="kiln.dev/deployment=iris")
               .items if p.status.pod_ip)
    conn = http.client.HTTPConnection(pod.status.pod_ip, 8080, timeout=10)
    conn.request("POST", "/v2/models/iris/infer", json.dumps({"inputs": [
        {"name": "input", "shape": [len(ROWS), 4], "datatype": "FP32", "data": ROWS}]}),
        {"Content-Type": "application/json"})
    direct = conn.getresponse()
    assert direct.status == 200 and json.loads(direct.read()) == answer
    conn.close()
    # the pod's own paths and errors come back as the pod gives them
    status, _, body = request("POST", f"/{kiln_ns}/iris/v2/models/iris/infer", b"not json")
    assert 400 <= status < 500 and body, body
    status, _, _ = request("GET", f"/{kiln_ns}/iris/v2/health/ready")
    assert status == 200


def test_steady_load_through_the_gateway_while_the_operator_restarts_twice(gateway, custom, kiln_ns):
    """0 failed requests, and neither the Kiln Deployment's replicas nor its apps/v1 Deployment's change."""
    before = serve_iris(custom, kiln_ns, {"model": {"name": "iris"}, "replicas": {"min": 1, "max": 3},
                                          "autoscaling": {"metric": "concurrency", "target": 10}})
    apps = client.AppsV1Api()

    def server_replicas() -> dict[str, int]:
        return {d.metadata.name: d.spec.replicas for d in apps.list_namespaced_deployment(
            kiln_ns, label_selector="kiln.dev/deployment=iris").items}

    servers = server_replicas()
    assert servers and before["replicas"] == 1, (servers, before)
    with Load(kiln_ns, "iris", "iris", ROWS[1], workers=2, pause=0.01, limit=120) as load:
        for _ in range(2):
            time.sleep(3)
            local.restart_operator()
        time.sleep(5)  # the restarted operator reconciles everything once more under load
    assert load.failures == [], load.failures[:5]
    assert load.ok > 200, load.ok
    after = status_of(custom, kiln_ns, "deployments", "iris")
    assert after["replicas"] == before["replicas"] and server_replicas() == servers, (after, server_replicas())


def test_a_deployment_scaled_to_zero_is_woken_by_the_first_request(gateway, custom, core, kiln_ns):
    """The gateway holds the request, asks the operator (POST /wake) and answers once the pod's Ready event comes."""
    serve_iris(custom, kiln_ns, {"model": {"name": "iris"}, "replicas": {"min": 1, "max": 1}})
    custom.patch_namespaced_custom_object(GROUP, VERSION, kiln_ns, "deployments", "iris", {"spec": {
        "replicas": {"min": 0, "max": 1}, "autoscaling": {"scaleToZeroAfter": 5}}})
    wait_until(lambda: status_of(custom, kiln_ns, "deployments", "iris").get("replicas") == 0 and not
               core.list_namespaced_pod(kiln_ns, label_selector="kiln.dev/deployment=iris").items, 120,
               "scale to zero", interval=0.5)
    wakes = metric('kiln_gateway_wakes_total{outcome="accepted"}', missing=0.0)
    status, answer = infer(kiln_ns, "iris", "iris", ROWS, timeout=150)
    assert status == 200, answer
    assert metric('kiln_gateway_wakes_total{outcome="accepted"}') > wakes
    assert status_of(custom, kiln_ns, "deployments", "iris")["replicas"] >= 1
