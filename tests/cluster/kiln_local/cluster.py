"""Bring the whole local Kiln up or down: control plane, CRDs, node simulator, SeaweedFS, operator, gateway."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from kiln_local import controlplane, procs, s3
from kiln_local.paths import KUBECONFIG, LOGS, REPO, STATE

OPERATOR_HEALTH = "http://127.0.0.1:18089/healthz"
OPERATOR_LISTEN = "127.0.0.1:18091"  # the operator's /metrics and the activator's POST /wake/<namespace>/<name>
GATEWAY = "127.0.0.1:18090"  # the gateway/activator: http://GATEWAY/<namespace>/<deployment>/v2/...
GATEWAY_ADMIN = "127.0.0.1:18092"  # the gateway's /healthz, /readyz and /metrics
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
    _step(5, total, "S3 credentials Secret kiln-s3 in namespace default")
    _s3_secret(env)
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


def _s3_secret(env: dict[str, str]) -> None:
    manifest = kubectl("create", "secret", "generic", "kiln-s3", "--dry-run=client", "-o", "yaml",
                       *(f"--from-literal={k}={v}" for k, v in env.items())).stdout
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
    }, cwd=str(REPO))
    procs.wait_for(_gateway_ready, "gateway readiness (first list of pods and Kiln Deployments)", 60, "kiln-gateway")


def restart_gateway() -> None:
    procs.stop("kiln-gateway", grace=20)
    start_gateway()


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
