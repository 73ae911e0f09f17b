"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as loopback processes."""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
import urllib.request
from pathlib import Path

from kiln_local import pki, procs
from kiln_local.paths import BIN, KUBECONFIG, REPO, STATE

# Defaults are the shared simulator cluster's; a second instance (kiln_local.realnode) sets its own.
ETCD_PORT = int(os.environ.get("KILN_ETCD_PORT", "23790"))
ETCD_PEER_PORT = int(os.environ.get("KILN_ETCD_PEER_PORT", "23800"))
ETCD_METRICS_PORT = int(os.environ.get("KILN_ETCD_METRICS_PORT", "23810"))
API_PORT = int(os.environ.get("KILN_API_PORT", "16443"))
API_ADDRESS = os.environ.get("KILN_API_ADDRESS", "127.0.0.1")  # bind and advertise address
API_URL = f"https://{API_ADDRESS}:{API_PORT}"
SERVICE_CIDR = os.environ.get("KILN_SERVICE_CIDR", "10.0.0.0/24")
# Job.spec.ttlSecondsAfterFinished is alpha (off) in 1.20 and on by default from 1.21.
FEATURE_GATES = "TTLAfterFinished=true"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
BUILT = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")


def binary(name: str) -> str | None:
    """Where a binary comes from: KUBEBUILDER_ASSETS (envtest layout), the build cache, PATH."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    for candidate in ([Path(assets) / name] if assets else []) + [BIN / name]:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name) if name in ("etcd", "kubectl") else None


def ensure_binaries() -> None:
    missing = [b for b in BUILT if binary(b) is None]
    if binary("etcd") is None:
        missing.append("etcd")
    if missing:
        print(f"[kiln] missing {', '.join(missing)}: building from Debian's kubernetes source (cold: minutes)",
              flush=True)
        subprocess.run(["bash", str(REPO / "tests/cluster/build-binaries.sh")], check=True)


def write_kubeconfig(path: Path = KUBECONFIG) -> Path:
    p = pki.PKI

    def b64(name: str) -> str:
        return base64.b64encode((p / name).read_bytes()).decode()

    path.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: kiln-local
  cluster:
    server: {API_URL}
    certificate-authority-data: {b64('ca.crt')}
users:
- name: kiln-admin
  user:
    client-certificate-data: {b64('admin.crt')}
    client-key-data: {b64('admin.key')}
contexts:
- name: kiln-local
  context: {{cluster: kiln-local, user: kiln-admin, namespace: default}}
current-context: kiln-local
""")
    path.chmod(0o600)
    return path


def _healthy() -> bool:
    ctx = ssl.create_default_context(cafile=str(pki.PKI / "ca.crt"))
    ctx.load_cert_chain(str(pki.PKI / "admin.crt"), str(pki.PKI / "admin.key"))
    with urllib.request.urlopen(f"{API_URL}/readyz", context=ctx, timeout=2) as resp:
        return resp.status == 200


def up(apiserver_flags: tuple[str, ...] = ()) -> None:
    """apiserver_flags: more kube-apiserver flags (a real node's: kiln_local.realnode)."""
    ensure_binaries()
    p = pki.ensure()
    write_kubeconfig()
    etcd_url = f"http://127.0.0.1:{ETCD_PORT}"
    procs.start("etcd", [
        binary("etcd"), "--name=kiln", f"--data-dir={STATE / 'etcd'}",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{ETCD_PEER_PORT}",
        f"--initial-cluster=kiln=http://127.0.0.1:{ETCD_PEER_PORT}",
        f"--listen-metrics-urls=http://127.0.0.1:{ETCD_METRICS_PORT}",
        "--quota-backend-bytes=2147483648", "--logger=zap",
    ])
    procs.start("kube-apiserver", [
        binary("kube-apiserver"), f"--etcd-servers={etcd_url}",
        f"--bind-address={API_ADDRESS}", f"--advertise-address={API_ADDRESS}", f"--secure-port={API_PORT}",
        "--insecure-port=0",
        f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={p / 'sa.pub'}", f"--service-account-signing-key-file={p / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--authorization-mode=Node,RBAC",
        "--allow-privileged=true", "--enable-priority-and-fairness=false",
        "--profiling=false", "--v=1", f"--feature-gates={FEATURE_GATES}", *apiserver_flags,
    ])
    procs.wait_for(_healthy, "kube-apiserver", 90, "kube-apiserver")
    kubeconfig = str(KUBECONFIG)
    procs.start("kube-controller-manager", [
        binary("kube-controller-manager"), f"--kubeconfig={kubeconfig}",
        f"--service-account-private-key-file={p / 'sa.key'}", f"--root-ca-file={p / 'ca.crt'}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--port=0", "--secure-port=0", "--controllers=*,-nodeipam,-csrsigning,-bootstrapsigner,-tokencleaner",
        "--node-monitor-grace-period=40s", "--pod-eviction-timeout=5m", "--v=1",
        f"--feature-gates={FEATURE_GATES}",
    ])
    procs.start("kube-scheduler", [
        binary("kube-scheduler"), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
        "--port=0", "--secure-port=0", "--v=1",
    ])


def down() -> None:
    for name in reversed(COMPONENTS):
        procs.stop(name)
