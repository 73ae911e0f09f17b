"""A real node for the local cluster: Kiln's images in real containers under a real kubelet.

    KILN_STATE_DIR=.kiln-node python -m kiln_local.realnode up|down|status

A second, separate instance beside the simulator cluster (`make cluster-up`, .kiln/): its own state directory
(.kiln-node/), its own ports, its own containerd. What `up` starts, in this order:

1. the network: a bridge kiln0 with 198.18.0.1/24 and the whole 198.18.0.0/15 (reserved for benchmarking, never
   routed) routed to it before anything else starts, so that no packet for a pod or a Service address can follow
   the default route off the machine; forwarding on, with a KILN-NODE chain that drops anything forwarded between
   the bridge and any other interface;
2. etcd (loopback), kube-apiserver on 198.18.0.1 (Service CIDR 198.19.0.0/24, kubelets dialled by InternalIP),
   controller-manager, scheduler (kiln_local.controlplane with this instance's ports);
3. containerd with a config, root, state and socket of its own (CRI plugin; Debian's runc; restrict_oom_score_adj);
   the images (kiln_local.images) imported into it;
4. the kubelet (compiled from the same source tree: tests/cluster/build-node.sh) on 198.18.0.1; CNI bridge +
   host-local + portmap + loopback from Debian's containernetworking-plugins (pods in 198.18.0.0/24 from .16, the
   bridge their gateway); kube-proxy (iptables); a cluster DNS on 198.18.0.1:53 (kiln_local.clusterdns);
5. SeaweedFS on 198.18.0.1 (S3 for pods and tests alike).

`down` removes everything it made: pods and their network namespaces, containerd's and the kubelet's mounts, the
processes (containerd's shims included), the bridge and the route, the iptables chains (KUBE-*, CNI-*, KILN-NODE)
and the sysctls it changed. containerd's content store (the imported images) stays, for the next `up`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

_REPO = Path(__file__).resolve().parents[3]
# Before kiln_local.paths is read: this instance's own state and ports (each overridable).
DEFAULTS = {
    "KILN_STATE_DIR": str(_REPO / ".kiln-node"),
    "KILN_API_ADDRESS": "198.18.0.1", "KILN_API_PORT": "26443",
    "KILN_ETCD_PORT": "23890", "KILN_ETCD_PEER_PORT": "23900", "KILN_ETCD_METRICS_PORT": "23910",
    "KILN_SERVICE_CIDR": "198.19.0.0/24", "KILN_APISERVER_EXTRA_SANS": "IP:198.18.0.1,IP:198.19.0.1",
    "KILN_S3_HOST": "198.18.0.1", "KILN_S3_PORT": "18433", "KILN_WEED_MASTER_PORT": "19433",
    "KILN_WEED_VOLUME_PORT": "18180", "KILN_WEED_FILER_PORT": "18988",
}
for _k, _v in DEFAULTS.items():
    os.environ.setdefault(_k, _v)
os.environ["KILN_STATE_DIR"] = str(Path(os.environ["KILN_STATE_DIR"]).resolve())  # containerd needs it absolute

from kiln_local import controlplane, images, procs, s3  # noqa: E402
from kiln_local.paths import BIN, KUBECONFIG, LOGS, REPO, STATE  # noqa: E402

if STATE.resolve() == (REPO / ".kiln").resolve():
    raise SystemExit("[kiln] the real node never runs in .kiln/ (the simulator cluster's state): "
                     "set KILN_STATE_DIR=.kiln-node")

BRIDGE = "kiln0"
NODE_IP = "198.18.0.1"
RANGE = "198.18.0.0/15"
# Pods share the bridge's subnet, the bridge's address their gateway (the CNI bridge plugin refuses a bridge that
# holds another address than its gateway's); the first 15 addresses are the node's.
POD_CIDR = "198.18.0.0/24"
POD_RANGE_START = "198.18.0.16"
POD_GATEWAY = NODE_IP
SERVICE_CIDR = os.environ["KILN_SERVICE_CIDR"]
NODE = "kiln-realnode"
CHAIN = "KILN-NODE"
CONTAINERD = STATE / "containerd"
SOCKET = CONTAINERD / "containerd.sock"
KUBELET = STATE / "kubelet"
CNI = STATE / "cni"
NODE_DIR = STATE / "node"
SAVED = NODE_DIR / "saved.json"  # what up changed on the machine, for down to put back
COMPONENTS = ("kube-proxy", "clusterdns", "kubelet", "containerd")
# The kubelet and kube-proxy set these; down puts the machine's own values back.
SYSCTLS = ("net/ipv4/ip_forward", "net/ipv4/conf/all/route_localnet", "vm/overcommit_memory", "vm/panic_on_oom",
           "kernel/panic", "kernel/panic_on_oops", "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
PACKAGES = {"containerd": "containerd", "runc": "runc", "buildah": "buildah", "debootstrap": "debootstrap",
            "iptables": "iptables", "ctr": "containerd"}


def say(msg: str) -> None:
    print(f"[kiln] {msg}", flush=True)


def sh(*argv: str, check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(argv), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc


def prerequisites() -> list[str]:
    """What this machine lacks for a real node (each with its remedy); empty when it has everything."""
    why = []
    if os.geteuid() != 0:
        why.append("a real node needs root (network, mounts, containerd)")
    for tool, package in PACKAGES.items():
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            why.append(f"{tool} missing (Debian package {package}): run tests/cluster/build-node.sh")
    for plugin in ("bridge", "host-local", "loopback", "portmap"):
        if not Path(f"/usr/lib/cni/{plugin}").exists():
            why.append(f"/usr/lib/cni/{plugin} missing (Debian package containernetworking-plugins)")
    for b in ("kubelet", "kube-proxy", "pause", "kube-apiserver", "kubectl"):
        if not (BIN / b).exists():
            why.append(f"{BIN / b} missing: run tests/cluster/build-node.sh")
    if not Path("/proc/sys/net/bridge").exists():
        sh("modprobe", "br_netfilter", check=False)
    return why


# -- the machine: sysctls, bridge, route, iptables ---------------------------------------------------------------

def _sysctl(key: str, value: str | None = None) -> str | None:
    path = Path("/proc/sys") / key
    try:
        old = path.read_text().strip()
        if value is not None and old != value:
            path.write_text(value)
        return old
    except OSError:
        return None


def network_up() -> None:
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not SAVED.exists():
        SAVED.write_text(json.dumps({"sysctls": {k: _sysctl(k) for k in SYSCTLS},
                                     "netns": sorted(_netns()), "pod_logs": sorted(_pod_logs()),
                                     "log_dirs": [d for d in LOG_DIRS if Path(d).is_dir()]}))
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "replace", f"{NODE_IP}/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    # The whole benchmarking range goes to the bridge: an address no rule translates stays here.
    sh("ip", "route", "replace", RANGE, "dev", BRIDGE, "src", NODE_IP)
    _sysctl("net/ipv4/ip_forward", "1")
    # Forwarding is for pods and Services only: nothing between the bridge and another interface.
    if sh("iptables", "-t", "filter", "-L", CHAIN, "-n", check=False).returncode != 0:
        sh("iptables", "-t", "filter", "-N", CHAIN)
        sh("iptables", "-t", "filter", "-A", CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP")
        sh("iptables", "-t", "filter", "-A", CHAIN, "-o", BRIDGE, "!", "-i", BRIDGE, "-j", "DROP")
    if sh("iptables", "-t", "filter", "-C", "FORWARD", "-j", CHAIN, check=False).returncode != 0:
        sh("iptables", "-t", "filter", "-I", "FORWARD", "1", "-j", CHAIN)


LOG_DIRS = ("/var/log/pods", "/var/log/containers")


def _pod_logs() -> set[str]:
    """The kubelet writes container logs under /var/log/pods (fixed in 1.20), linked from /var/log/containers."""
    return {str(p) for d in map(Path, LOG_DIRS) if d.is_dir() for p in d.iterdir()}


def _netns() -> set[str]:
    return {p.name for p in Path("/run/netns").glob("*")} if Path("/run/netns").is_dir() else set()


def _ours(chain: str) -> bool:
    return chain.startswith(("KUBE-", "CNI-")) or chain == CHAIN


def iptables_clean() -> None:
    """Every rule jumping to a KUBE-*, CNI-* or KILN-NODE chain, then those chains (iptables and ip6tables)."""
    for tool in ("iptables", "ip6tables"):
        if shutil.which(tool) is None:
            continue
        for table in ("filter", "nat", "mangle"):
            dump = sh(f"{tool}-save", "-t", table, check=False).stdout
            chains = [line[1:].split()[0] for line in dump.splitlines() if line.startswith(":")]
            for line in dump.splitlines():
                m = re.match(r"-A (\S+) (.*)", line)
                if m and not _ours(m.group(1)) and re.search(r"-j (KUBE-|CNI-|KILN-NODE)", m.group(2)):
                    sh(tool, "-t", table, "-D", m.group(1), *_split(m.group(2)), check=False)
            ours = [c for c in chains if _ours(c)]
            for c in ours:
                sh(tool, "-t", table, "-F", c, check=False)
            for c in ours:
                sh(tool, "-t", table, "-X", c, check=False)


def _split(rule: str) -> list[str]:
    import shlex

    return shlex.split(rule)


def network_down() -> None:
    iptables_clean()
    sh("ip", "route", "del", RANGE, "dev", BRIDGE, check=False)
    sh("ip", "link", "del", BRIDGE, check=False)
    try:
        saved = json.loads(SAVED.read_text())
    except (OSError, ValueError):
        saved = {}
    for key, value in (saved.get("sysctls") or {}).items():
        if value is not None:
            _sysctl(key, value)
    for ns in _netns() - set(saved.get("netns") or []):
        if ns.startswith("cni-"):
            sh("ip", "netns", "delete", ns, check=False)
    for path in sorted(_pod_logs() - set(saved.get("pod_logs") or [])):
        p = Path(path)
        if p.is_symlink() or p.is_file():
            p.unlink(missing_ok=True)
        elif p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
    for d in LOG_DIRS:
        if saved and d not in saved.get("log_dirs", LOG_DIRS) and Path(d).is_dir() and not any(Path(d).iterdir()):
            Path(d).rmdir()
    SAVED.unlink(missing_ok=True)


# -- containerd ------------------------------------------------------------------------------------------------

def containerd_config() -> Path:
    path = CONTAINERD / "config.toml"
    for sub in ("root", "state", "opt"):
        (CONTAINERD / sub).mkdir(parents=True, exist_ok=True)
    (CNI / "net.d").mkdir(parents=True, exist_ok=True)
    path.write_text(f"""version = 2
root = "{CONTAINERD / 'root'}"
state = "{CONTAINERD / 'state'}"
[grpc]
  address = "{SOCKET}"
[ttrpc]
  address = "{CONTAINERD / 'containerd-ttrpc.sock'}"
[debug]
  level = "warn"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{CONTAINERD / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{images.PAUSE}"
  # this machine refuses lowering oom_score_adj: without this runc fails ("can't get final child's PID")
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  max_container_log_line_size = 16384
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{CNI / 'net.d'}"
""")
    (CNI / "net.d" / "10-kiln.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "kiln", "plugins": [
            {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(CNI / "ipam"),
                      "ranges": [[{"subnet": POD_CIDR, "rangeStart": POD_RANGE_START,
                                    "gateway": POD_GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}, indent=1))
    return path


def ctr(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ctr", "--address", str(SOCKET), "--namespace", "k8s.io", *args, check=check)


def containerd_up() -> None:
    config = containerd_config()
    procs.start("containerd", ["containerd", "--config", str(config)])
    procs.wait_for(lambda: ctr("version").returncode == 0, "containerd", 60, "containerd")


def load_images(names=tuple(images.IMAGES)) -> dict[str, str]:
    """Build (when their inputs changed) and import the images containerd lacks or has older: {name: tag}."""
    built = images.build_all(names)
    present = set(ctr("images", "ls", "-q").stdout.split())
    stamps = NODE_DIR / "images"
    stamps.mkdir(parents=True, exist_ok=True)
    for name, image in built.items():
        ref = "docker.io/" + image.removeprefix("localhost/")
        image_id = images.buildah("inspect", "--type", "image", "--format", "{{.FromImageID}}", image).stdout.strip()
        stamp = stamps / f"{name}.id"
        if ref in present and stamp.exists() and stamp.read_text() == image_id:
            continue
        t0 = time.monotonic()
        archive = images.WORK / f"{name}.tar"
        images.export(image, archive)
        ctr("images", "import", str(archive))
        archive.unlink(missing_ok=True)
        stamp.write_text(image_id)
        say(f"image {ref} imported into containerd in {time.monotonic() - t0:.0f}s")
    return built


# -- kubelet, kube-proxy, cluster DNS --------------------------------------------------------------------------

def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def kubelet_up() -> None:
    KUBELET.mkdir(parents=True, exist_ok=True)
    pki = STATE / "pki"
    resolv = NODE_DIR / "resolv.conf"
    resolv.write_text(f"nameserver {NODE_IP}\n")
    config = NODE_DIR / "kubelet.yaml"
    _write_if_changed(config, f"""apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {NODE_IP}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {pki / 'ca.crt'}}}
authorization: {{mode: AlwaysAllow}}
clusterDNS: [{NODE_IP}]
clusterDomain: cluster.local
resolvConf: {resolv}
# the images cannot be pulled again: never collected, no eviction for disk
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {{memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}}
serializeImagePulls: false
fileCheckFrequency: 5s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
maxPods: 60
""")
    procs.start("kubelet", [
        str(BIN / "kubelet"), f"--config={config}", f"--kubeconfig={KUBECONFIG}",
        "--container-runtime=remote", f"--container-runtime-endpoint=unix://{SOCKET}",
        f"--image-service-endpoint=unix://{SOCKET}", "--runtime-request-timeout=10m",
        f"--root-dir={KUBELET}", f"--cert-dir={KUBELET / 'pki'}", f"--node-ip={NODE_IP}",
        f"--hostname-override={NODE}", "--v=1",
    ])


def _node_ready() -> bool:
    out = controlplane_kubectl("get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
    return out.stdout.strip() == "True"


def kube_proxy_up() -> None:
    config = NODE_DIR / "kube-proxy.yaml"
    # written only when it changes: a running kube-proxy exits when its configuration file is touched
    _write_if_changed(config, f"""apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {{kubeconfig: {KUBECONFIG}}}
hostnameOverride: {NODE}
bindAddress: {NODE_IP}
healthzBindAddress: {NODE_IP}:10256
metricsBindAddress: 127.0.0.1:10249
mode: iptables
clusterCIDR: {POD_CIDR}
nodePortAddresses: [{NODE_IP}/32]
iptables: {{masqueradeAll: true, syncPeriod: 30s, minSyncPeriod: 0s}}
conntrack: {{maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}}
""")
    procs.start("kube-proxy", [str(BIN / "kube-proxy"), f"--config={config}", "--v=1"])


def _proxy_healthy() -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://{NODE_IP}:10256/healthz", timeout=2) as resp:
        return resp.status == 200


def controlplane_kubectl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={KUBECONFIG}", *args], capture_output=True,
                          text=True)


# -- up / down -------------------------------------------------------------------------------------------------

def up(with_images: bool = True) -> None:
    why = prerequisites()
    if why:
        raise RuntimeError("the real node cannot start: " + "; ".join(why))
    t0 = time.monotonic()
    STATE.mkdir(parents=True, exist_ok=True)
    say(f"1/6 network: bridge {BRIDGE} {NODE_IP}/24, {RANGE} routed to it, forwarding kept on the bridge")
    network_up()
    say(f"2/6 control plane on {NODE_IP} (Service CIDR {SERVICE_CIDR}), state in {STATE}")
    pki = STATE / "pki"
    controlplane.up(apiserver_flags=(
        "--kubelet-preferred-address-types=InternalIP",
        f"--kubelet-client-certificate={pki / 'admin.crt'}", f"--kubelet-client-key={pki / 'admin.key'}",
    ))
    say("3/6 containerd (own config, root, state and socket)")
    containerd_up()
    if with_images:
        say("4/6 images: base (debootstrap), pause, operator, trainer, server; imported when changed")
        load_images()
    say(f"5/6 kubelet ({NODE}, pods in {POD_CIDR}), kube-proxy, cluster DNS on {NODE_IP}:53")
    kubelet_up()
    procs.wait_for(_node_ready, f"node {NODE} Ready", 180, "kubelet")
    kube_proxy_up()
    procs.wait_for(_proxy_healthy, "kube-proxy", 60, "kube-proxy")
    procs.start("clusterdns", [sys.executable, "-m", "kiln_local.clusterdns", NODE_IP, str(KUBECONFIG)])
    procs.wait_for(lambda: controlplane_kubectl("get", "serviceaccount", "default", "-o",
                                                "jsonpath={.secrets[0].name}").stdout.strip(),
                   "default ServiceAccount token", 90, "kube-controller-manager")
    say(f"6/6 SeaweedFS on {s3.HOST}:{s3.S3_PORT}")
    s3.up(timeout=120)
    say(f"real node up in {time.monotonic() - t0:.0f}s: export KUBECONFIG={KUBECONFIG}; logs in {LOGS}/")


def _delete_pods() -> None:
    """Every pod removed through the kubelet while it runs: it stops the sandboxes (CNI DEL, network namespace
    gone) and unmounts the volumes."""
    if not procs.running("kubelet") or not procs.running("kube-apiserver"):
        return
    # nothing makes new pods meanwhile: no controllers (ReplicaSets, Jobs), no scheduler
    procs.stop("kube-controller-manager")
    procs.stop("kube-scheduler")
    controlplane_kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=5", "--wait=false")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        left = controlplane_kubectl("get", "pods", "--all-namespaces", "-o", "name").stdout.split()
        if not left:
            break
        time.sleep(1)
    # the kubelet removes the sandboxes a moment after the pods are gone
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and procs.running("containerd"):
        if not ctr("tasks", "ls", "-q", check=False).stdout.split():
            break
        time.sleep(1)


def _tasks_down() -> None:
    """What the kubelet left: every task killed and deleted, every container removed (shims exit with them)."""
    if not procs.running("containerd"):
        return
    for task in ctr("tasks", "ls", "-q", check=False).stdout.split():
        ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
    time.sleep(1)
    for task in ctr("tasks", "ls", "-q", check=False).stdout.split():
        ctr("tasks", "delete", "-f", task, check=False)
    for container in ctr("containers", "ls", "-q", check=False).stdout.split():
        ctr("containers", "rm", container, check=False)


def _shims() -> list[int]:
    """containerd's shims for this instance (they leave containerd's process group): found by its socket."""
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"containerd-shim-runc-v2") and str(CONTAINERD).encode() in b" ".join(cmd):
            out.append(int(proc.name))
    return out


def _mounts() -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]


def _unmount_all() -> None:
    """Every mount under the state directory (containerd's rootfs and shm, the kubelet's volumes), deepest first."""
    for _ in range(3):
        ours = sorted({m for m in _mounts() if m.startswith(str(STATE.resolve()) + "/")}, key=len, reverse=True)
        if not ours:
            return
        for m in ours:
            sh("umount", "-l", m, check=False)


def down() -> None:
    import signal

    _delete_pods()
    for name in ("kube-proxy", "clusterdns", "kubelet"):
        procs.stop(name, grace=15)
    _tasks_down()
    procs.stop("containerd", grace=15)
    for pid in _shims():
        procs.signal_group(pid, signal.SIGKILL)
    s3.down()
    controlplane.down()
    if (BIN / "kube-proxy").exists():
        sh(str(BIN / "kube-proxy"), "--cleanup", check=False)
    _unmount_all()
    network_down()
    # The cluster's state goes with it (the next `up` starts empty); the images (containerd's content store,
    # buildah's storage), the certificates and the S3 credentials stay.
    for path in (STATE / "etcd", STATE / "seaweedfs", KUBELET, CNI / "ipam", CONTAINERD / "state"):
        if path.exists() and not any(m.startswith(str(path.resolve())) for m in _mounts()):
            shutil.rmtree(path, ignore_errors=True)
    say("real node stopped")


def status() -> int:
    code = 0
    for name in (*controlplane.COMPONENTS, *reversed(COMPONENTS), s3.NAME):
        pid = procs.running(name)
        print(f"{name:26} {'running pid ' + str(pid) if pid else 'stopped'}")
        code |= pid is None
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kiln_local.realnode", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up_ = sub.add_parser("up", help="start the real-node cluster (building what is missing)")
    up_.add_argument("--no-images", action="store_true", help="do not build or import Kiln's images")
    sub.add_parser("down", help="stop it and remove what it made on the machine")
    sub.add_parser("status")
    sub.add_parser("prerequisites", help="say what this machine lacks")
    sub.add_parser("env", help="print shell exports for this instance")
    args = parser.parse_args(argv)
    if args.command == "up":
        try:
            up(with_images=not args.no_images)
        except BaseException:
            say("up failed: read the logs in " + str(LOGS))
            raise
    elif args.command == "down":
        down()
    elif args.command == "status":
        return status()
    elif args.command == "prerequisites":
        why = prerequisites()
        print("\n".join(why) or "ok")
        return 1 if why else 0
    elif args.command == "env":
        print(f"export KILN_STATE_DIR={STATE}\nexport KUBECONFIG={KUBECONFIG}")
        for k, v in s3.read_env().items():
            print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
