"""Bring the whole local Kiln up or down: control plane, CRDs, node simulator, SeaweedFS, operator, gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from kiln_local import controlplane, procs, s3
from kiln_local.paths import KUBECONFIG, LOGS, REPO, STATE

OPERATOR_HEALTH = "http://127.0.0.1:18089/healthz"
OPERATOR_LISTEN = "127.0.0.1:18091"  # the operator's /metrics and the activator's POST /wake/<namespace>/<name>
GATEWAY = "127.0.0.1:18090"  # the gateway/activator: http://GATEWAY/<namespace>/<deployment>/v2/...
GATEWAY_ADMIN = "127.0.0.1:18092"  # the gateway's /healthz, /readyz and /metrics
# The gateway checks tokens here as in production: its clients (gateway_client, demo, benches) send the token of
# this ServiceAccount, which may create deployments/predict in every namespace (ensure_tester, tester_token).
TESTER_NAMESPACE, TESTER = "default", "kiln-tester"
TESTER_TOKEN = STATE / "gateway-token.json"
TOKEN_SECONDS = 24 * 3600
SERVING_SECRET = "kiln-s3-read"  # serving pods' S3 credentials: read and list only
# Where this cluster's tests keep what Models read besides their own storage (kiln_operator.tenancy).
READ_PREFIXES = '{"*": ["s3://BUCKET/byo/{namespace}", "s3://BUCKET/datasets/{namespace}"]}'
ORDER = ("kiln-gateway", "kiln-operator", "nodesim")  # stopped first, before what they talk to


def kubectl(*args: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([controlplane.binary("kubectl") or "kubectl", f"--kubeconfig={KUBECONFIG}", *args],
                          check=check, capture_output=capture, text=True)


def _step(n: int, total: int, what: str) -> float:
    print(f"[kiln] {n}/{total} {what}", flush=True)
    return time.monotonic()


def up(operator: bool = True) -> None:
    t0 = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    total = 7 if operator else 5
    _step(1, total, "control-plane binaries, etcd, kube-apiserver, controller-manager, scheduler")
    controlplane.up()
    _step(2, total, "CRDs (crds/)")
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingjobs.kiln.dev",
            "crd/models.kiln.dev", "crd/deployments.kiln.dev")
    kubectl("api-resources")  # refreshes kubectl's discovery cache, or `kubectl get kiln` misses the new kinds
    _step(3, total, "node simulator")
    procs.start("nodesim", [sys.executable, "-m", "kiln_local.nodesim"], env={"KUBECONFIG": str(KUBECONFIG)})
    procs.wait_for(_node_ready, "simulated node Ready", 60, "nodesim")
    # Pods are admitted once the "default" ServiceAccount has its token (1.20's token controller).
    procs.wait_for(lambda: kubectl("get", "serviceaccount", "default", "-o", "jsonpath={.secrets[0].name}",
                                   check=False).stdout.strip(),
                   "default ServiceAccount token", 60, "kube-controller-manager")
    _step(4, total, "SeaweedFS (S3 on loopback)")
    env = s3.up()
    _step(5, total, f"S3 credentials Secrets kiln-s3 and {SERVING_SECRET} (read-only) in namespace default")
    _s3_secret(env)
    ensure_tester()
    if operator:
        _step(6, total, "operator from the working tree (kopf run)")
        start_operator(env)
        _step(7, total, "gateway/activator from the working tree (python -m kiln_operator.gateway)")
        start_gateway()
    print(f"[kiln] local cluster up in {time.monotonic() - t0:.0f}s\n"
          f"       export KUBECONFIG={KUBECONFIG}\n"
          f"       kubectl get nodes; kubectl get kiln; kubectl explain trainingjob.spec.split\n"
          f"       logs: {LOGS}/", flush=True)


def _node_ready() -> bool:
    out = kubectl("get", "node", "kiln-node", "-o",
                  "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return out.stdout.strip() == "True"


def copy_s3_secrets(core, namespace: str) -> None:
    """Make namespace ready for Kiln workloads: the S3 Secrets of namespace default (core: a CoreV1Api)."""
    from kubernetes import client

    for name in ("kiln-s3", SERVING_SECRET):
        src = core.read_namespaced_secret(name, "default")
        core.create_namespaced_secret(namespace, client.V1Secret(
            metadata=client.V1ObjectMeta(name=name), data=src.data, type=src.type))


def _s3_secret(env: dict[str, str]) -> None:
    """kiln-s3 (read-write, training pods) and kiln-s3-read (read-only, serving pods) in namespace default."""
    writer = {k: v for k, v in env.items() if k not in s3.READER_KEYS}
    for name, values in (("kiln-s3", writer), (SERVING_SECRET, s3.reader_env(env))):
        manifest = kubectl("create", "secret", "generic", name, "--dry-run=client", "-o", "yaml",
                           *(f"--from-literal={k}={v}" for k, v in values.items())).stdout
        subprocess.run([controlplane.binary("kubectl") or "kubectl", f"--kubeconfig={KUBECONFIG}", "apply", "-f", "-"],
                       input=manifest, text=True, check=True, capture_output=True)


def start_operator(env: dict[str, str], source: Path | None = None) -> None:
    """The operator from the working tree, or from source (another checkout's root: bench/bench_scale.py runs
    the timer-driven baseline that way)."""
    # The timer-driven operator ran a gateway inside unless KILN_GATEWAY was empty; the gateway is its own now.
    extra = {"PYTHONPATH": f"{source / 'operator'}:{source / 'contract'}", "KILN_GATEWAY": ""} if source else {}
    procs.start("kiln-operator", [
        sys.executable, "-m", "kopf", "run", "--all-namespaces", "--standalone", "--log-format=json",
        f"--liveness={OPERATOR_HEALTH}", "-m", "kiln_operator",
    ], env={**env, "KUBECONFIG": str(KUBECONFIG), "KILN_LOG_FORMAT": "json", "KILN_OPERATOR_LISTEN": OPERATOR_LISTEN,
            "KILN_S3_SERVING_SECRET": SERVING_SECRET,
            "KILN_READ_PREFIXES": READ_PREFIXES.replace("BUCKET", env.get("KILN_BUCKET", s3.BUCKET)),
            # bench_scale.py holds its training pods with a scheduler name no scheduler serves
            "KILN_ALLOWED_SCHEDULER_NAMES": "default-scheduler,kiln-bench-*",
            **extra}, cwd=str(source or REPO))
    procs.wait_for(_operator_live, "operator liveness", 60, "kiln-operator")


def restart_operator(kill: bool = False) -> None:
    """Stop the operator (SIGTERM, or SIGKILL with kill=True) and start it again; the gateway keeps serving."""
    if kill:
        procs.kill("kiln-operator")
    else:
        procs.stop("kiln-operator", grace=20)
    start_operator(s3.read_env())


def start_gateway() -> None:
    """The gateway/activator as its own process, as the chart runs it in its own Deployment."""
    procs.start("kiln-gateway", [sys.executable, "-m", "kiln_operator.gateway"], env={
        "KUBECONFIG": str(KUBECONFIG), "KILN_LOG_FORMAT": "json", "KILN_GATEWAY_LISTEN": GATEWAY,
        "KILN_GATEWAY_ADMIN_LISTEN": GATEWAY_ADMIN, "KILN_WAKE_URL": f"http://{OPERATOR_LISTEN}",
        # No Service endpoints to leave here: stop at once.
        "KILN_GATEWAY_DRAIN_SECONDS": "0",
        # As in production: every request needs a token the API server accepts and RBAC allows (the admin
        # kubeconfig lets the gateway send the reviews).
        "KILN_GATEWAY_AUTH": "kubernetes",
    }, cwd=str(REPO))
    procs.wait_for(_gateway_ready, "gateway readiness (first list of pods and Kiln Deployments)", 60, "kiln-gateway")


def restart_gateway() -> None:
    procs.stop("kiln-gateway", grace=20)
    start_gateway()


_TESTER_RBAC = f"""apiVersion: v1
kind: ServiceAccount
metadata: {{name: {TESTER}, namespace: {TESTER_NAMESPACE}}}
---
# What a prediction client needs from the gateway (the chart's <release>-predictor), here in every namespace.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: {TESTER}-predict}}
rules:
  - apiGroups: [kiln.dev]
    resources: [deployments/predict]
    verbs: [create]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: {TESTER}-predict}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: {TESTER}-predict}}
subjects:
  - {{kind: ServiceAccount, name: {TESTER}, namespace: {TESTER_NAMESPACE}}}
"""


def ensure_tester() -> None:
    """The gateway's test client: ServiceAccount default/kiln-tester, allowed to predict everywhere (idempotent)."""
    subprocess.run([controlplane.binary("kubectl") or "kubectl", f"--kubeconfig={KUBECONFIG}", "apply", "-f", "-"],
                   input=_TESTER_RBAC, text=True, check=True, capture_output=True)


def request_token(namespace: str, service_account: str, seconds: int = 3600, audiences: list[str] | None = None
                  ) -> tuple[str, str]:
    """(token, ServiceAccount uid): a token of that ServiceAccount from the TokenRequest API, as `kubectl create
    token` makes (this cluster's kubectl predates that command)."""
    from kubernetes import client, config

    with config.new_client_from_config(str(KUBECONFIG)) as api:
        core = client.CoreV1Api(api)
        uid = core.read_namespaced_service_account(service_account, namespace).metadata.uid
        answer = core.create_namespaced_service_account_token(service_account, namespace, {
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": seconds, "audiences": audiences or []}})
    return answer.status.token, uid


_tester_lock = threading.Lock()
_tester_token: str | None = None


def tester_token() -> str:
    """The token of default/kiln-tester for the gateway: minted for 24 h, kept in .kiln/gateway-token.json and
    reused by every process until it has under an hour left or its ServiceAccount was made anew. The first call
    of a process creates the ServiceAccount and its rights when they are missing."""
    global _tester_token
    with _tester_lock:
        if _tester_token is None:
            _tester_token = _fresh_tester_token()
        return _tester_token


def _fresh_tester_token() -> str:
    import json

    from kubernetes import client, config

    ensure_tester()
    with config.new_client_from_config(str(KUBECONFIG)) as api:
        uid = client.CoreV1Api(api).read_namespaced_service_account(TESTER, TESTER_NAMESPACE).metadata.uid
    try:
        cached = json.loads(TESTER_TOKEN.read_text())
        if cached["uid"] == uid and cached["expires"] > time.time() + 3600:
            return cached["token"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    token, uid = request_token(TESTER_NAMESPACE, TESTER, TOKEN_SECONDS)
    TESTER_TOKEN.parent.mkdir(parents=True, exist_ok=True)
    # A credential: readable by its owner only, and replaced whole (another process may be reading it).
    partial = TESTER_TOKEN.with_name(f".{TESTER_TOKEN.name}.{os.getpid()}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"token": token, "uid": uid, "expires": time.time() + TOKEN_SECONDS - 60}, out)
    os.replace(partial, TESTER_TOKEN)
    return token


def _gateway_ready() -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://{GATEWAY_ADMIN}/readyz", timeout=2) as resp:
        return resp.status == 200


def _operator_live() -> bool:
    import urllib.request

    with urllib.request.urlopen(OPERATOR_HEALTH, timeout=2) as resp:
        return resp.status == 200


def down() -> None:
    for name in ORDER:
        procs.stop(name, grace=20)
    s3.down()
    controlplane.down()
    print("[kiln] local cluster stopped", flush=True)


def status() -> int:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "nodesim", s3.NAME,
             "kiln-operator", "kiln-gateway")
    code = 0
    for name in names:
        pid = procs.running(name)
        print(f"{name:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        code |= pid is None
    return code


def environ() -> dict[str, str]:
    """Environment for a client of the local cluster: KUBECONFIG plus the S3 settings."""
    return {"KUBECONFIG": str(KUBECONFIG), **s3.read_env(), **{k: v for k, v in os.environ.items()
                                                               if k == "PATH"}}
