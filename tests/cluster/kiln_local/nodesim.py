"""A node simulator: registers a Node and runs the pods bound to it as local processes.

For pods whose images are Kiln's own, it does what a kubelet does, faithfully enough
for the operator's tests: the command comes from the image's Dockerfile (ENTRYPOINT,
CMD, ENV) plus the pod's command/args/env; each pod gets its own loopback address
(127.1.x.y) reported as its IP; probes are honoured; phase, readiness, exit codes,
restart counts and termination messages are reported through the status subresource;
a deleted pod's processes get SIGTERM, the grace period, then SIGKILL.

What it cannot do without containers: most volumes are not mounted (pods get their config
through env). ConfigMap volumes are written into the pod's directory in the kubelet's layout
(a timestamped directory behind a `..data` symlink, swapped when the ConfigMap changes: one
watch for the node, as the kubelet's), and an env value or argument that names a path under
the volume's mountPath is given that directory instead, since there is no mount namespace to
put it at the mountPath. Memory limits are not enforced, `kubectl logs/exec` do not work (each
container's output is in .kiln/pods/<namespace>_<pod>/<container>.log). The container's
termination-message file is a per-container file whose path is handed to the process
in KILN_TERMINATION_LOG, since /dev/termination-log cannot be remapped per process.
"""

from __future__ import annotations

import base64
import datetime as dt
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from kiln_local import dockerfile
from kiln_local.controlplane import API_PORT
from kiln_local.paths import KUBECONFIG, STATE
from kiln_local.procs import signal_group as _signal_group

log = logging.getLogger("kiln.nodesim")
NODE_NAME = os.environ.get("KILN_NODE_NAME", "kiln-node")
CAPACITY = {"cpu": "16", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": "1", "ephemeral-storage": "100Gi"}
PODS_DIR = STATE / "pods"
LEASE_SECONDS = 40
TERMINATION_MESSAGE_LIMIT = 4096
CONFIG_RETRY_SECONDS = 2


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IPAllocator:
    def __init__(self):
        self._used: set[str] = set()
        self._next = 0
        self._lock = threading.Lock()

    def take(self, wanted: str | None = None) -> str:
        with self._lock:
            if wanted and wanted.startswith("127.1.") and wanted not in self._used:
                self._used.add(wanted)
                return wanted
            while True:
                n = self._next % (250 * 250)
                self._next += 1
                ip = f"127.1.{n // 250}.{n % 250 + 1}"
                if ip not in self._used:
                    self._used.add(ip)
                    return ip

    def release(self, ip: str) -> None:
        with self._lock:
            self._used.discard(ip)


class Container:
    """One container of a pod: its process, probes and reported state."""

    def __init__(self, pod: PodRunner, spec: dict, argv: list[str], env: dict[str, str], init: bool):
        self.pod, self.spec, self.argv, self.env, self.init = pod, spec, argv, env, init
        self.name = spec["name"]
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.started_at: str | None = None
        self.state: dict = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict = {}
        self.ready = False
        self.next_start = 0.0
        self.probe_due: dict[str, float] = {}
        self.probe_fail: dict[str, int] = {}
        self.probe_ok: dict[str, int] = {}
        self.dir = pod.dir
        self.term_file = self.dir / f"{self.name}.termination-log"
        self.log_file = self.dir / f"{self.name}.log"

    def start(self) -> None:
        self.term_file.write_text("")
        out = open(self.log_file, "ab")
        env = {**self.env, "KILN_TERMINATION_LOG": str(self.term_file)}
        try:
            self.proc = subprocess.Popen(self.argv, env=env, cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self.state = {"waiting": {"reason": "RunContainerError", "message": str(exc)}}
            self.proc = None
            self.next_start = time.monotonic() + self._backoff()
            return
        finally:
            out.close()
        self.started_at = now()
        self.state = {"running": {"startedAt": self.started_at}}
        self.ready = False
        t0 = time.monotonic()
        for kind in ("readinessProbe", "livenessProbe", "startupProbe"):
            if kind in self.spec:
                self.probe_due[kind] = t0 + self.spec[kind].get("initialDelaySeconds", 0)
                self.probe_fail[kind] = self.probe_ok[kind] = 0
        (self.dir / f"{self.name}.pid").write_text(str(self.proc.pid))

    def _backoff(self) -> float:
        return min(2.0 * (2 ** max(self.restarts - 1, 0)), 60.0)

    def poll(self) -> int | None:
        """Exit code when the process just ended (state updated), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.proc = None
        self.ready = False
        if code < 0:  # killed by a signal: report as a shell would
            code = 128 - code
        message = self._termination_message(code)
        term = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                "startedAt": self.started_at, "finishedAt": now()}
        if code == 137 and self.pod.stopping is None:
            term["reason"] = "OOMKilled" if self._oom_hint() else "Error"
        if message:
            term["message"] = message
        self.state = {"terminated": term}
        return code

    def _oom_hint(self) -> bool:
        try:
            return "MemoryError" in self.log_file.read_text()[-4000:]
        except OSError:
            return False

    def _termination_message(self, code: int) -> str:
        try:
            msg = self.term_file.read_bytes()[:TERMINATION_MESSAGE_LIMIT].decode(errors="replace")
        except OSError:
            msg = ""
        if not msg and code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            try:
                lines = self.log_file.read_text(errors="replace").splitlines()[-80:]
                msg = "\n".join(lines)[-2048:]
            except OSError:
                msg = ""
        return msg

    def kill(self, grace: float) -> None:
        if self.proc is None:
            return
        _signal_group(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    # -- probes -------------------------------------------------------------
    def run_probes(self) -> bool:
        """Run due probes; return True when the liveness probe says restart."""
        if self.proc is None:
            return False
        t = time.monotonic()
        restart = False
        if "readinessProbe" not in self.spec:
            self.ready = True
        for kind, due in list(self.probe_due.items()):
            if t < due:
                continue
            probe = self.spec[kind]
            self.probe_due[kind] = t + probe.get("periodSeconds", 10)
            ok = self._probe(probe)
            if ok:
                self.probe_ok[kind] += 1
                self.probe_fail[kind] = 0
            else:
                self.probe_fail[kind] += 1
                self.probe_ok[kind] = 0
            if kind == "readinessProbe":
                if ok and self.probe_ok[kind] >= probe.get("successThreshold", 1):
                    self.ready = True
                elif not ok and self.probe_fail[kind] >= probe.get("failureThreshold", 3):
                    self.ready = False
            elif kind == "livenessProbe" and self.probe_fail[kind] >= probe.get("failureThreshold", 3):
                restart = True
        return restart

    def _port(self, port) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise ValueError(f"unknown named port {port}")

    def _probe(self, probe: dict) -> bool:
        timeout = probe.get("timeoutSeconds", 1)
        try:
            if "httpGet" in probe:
                h = probe["httpGet"]
                scheme = h.get("scheme", "HTTP").lower()
                url = f"{scheme}://{h.get('host') or self.pod.ip}:{self._port(h['port'])}{h.get('path', '/')}"
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    return 200 <= resp.status < 400
            if "tcpSocket" in probe:
                with socket.create_connection((self.pod.ip, self._port(probe["tcpSocket"]["port"])), timeout):
                    return True
            if "exec" in probe:
                return subprocess.run(probe["exec"]["command"], env=self.env, cwd=self.dir,
                                      capture_output=True, timeout=timeout).returncode == 0
        except Exception:  # noqa: BLE001 - any failure is a failed probe
            return False
        return True

    def status(self) -> dict:
        out = {
            "name": self.name, "image": self.spec.get("image", ""),
            "imageID": f"kiln-local://{self.spec.get('image', '')}",
            "ready": self.ready and "running" in self.state,
            "restartCount": self.restarts, "started": "running" in self.state,
            "state": self.state,
        }
        if self.proc is not None:
            out["containerID"] = f"kiln-local://{self.proc.pid}"
        if self.last_state:
            out["lastState"] = self.last_state
        return out


class PodRunner(threading.Thread):
    """Runs one pod: init containers in order, then the containers, until it ends or is deleted."""

    def __init__(self, sim: NodeSim, pod):
        super().__init__(daemon=True, name=f"pod-{pod.metadata.namespace}/{pod.metadata.name}")
        self.sim = sim
        self.pod = sim.api.api_client.sanitize_for_serialization(pod)
        self.ns = pod.metadata.namespace
        self.name = pod.metadata.name
        self.uid = pod.metadata.uid
        self.dir = PODS_DIR / f"{self.ns}_{self.name}"
        self.ip = sim.ips.take((self.pod.get("status") or {}).get("podIP"))
        self.stopping: float | None = None  # grace seconds once deletion was asked for
        self.gone = False
        self.start_time = (self.pod.get("status") or {}).get("startTime") or now()
        self._published: dict | None = None
        # volume name -> (ConfigMap name, its directory here) for the pod's configMap volumes
        self.config_volumes: dict[str, tuple[str, Path]] = {}

    # -- lifecycle ----------------------------------------------------------
    def request_stop(self, grace: float, gone: bool = False) -> None:
        if self.stopping is None:
            self.stopping = grace
        self.gone = self.gone or gone

    def run(self) -> None:
        try:
            self._run()
        except Exception:  # noqa: BLE001 - one pod's failure must not take the node down
            log.exception("pod %s/%s: simulator error", self.ns, self.name)
        finally:
            self.sim.ips.release(self.ip)
            self.sim.forget(self.uid)

    def _run(self) -> None:
        spec = self.pod["spec"]
        self.dir.mkdir(parents=True, exist_ok=True)
        unknown = [c["image"] for c in spec.get("initContainers", []) + spec["containers"]
                   if dockerfile.dockerfile_for(c.get("image", "")) is None]
        if unknown:
            self._unknown_image(unknown)
            return
        # Like a kubelet, keep retrying while a referenced Secret or ConfigMap is missing.
        reported = None
        while True:
            try:
                self._config_volumes()
                env_base = self._env_base()
                inits = [self._container(c, env_base, True) for c in spec.get("initContainers", [])]
                mains = [self._container(c, env_base, False) for c in spec["containers"]]
                break
            except (ApiException, KeyError, ValueError) as exc:
                if str(exc) != reported:
                    self._config_error(str(exc))
                    reported = str(exc)
                for _ in range(CONFIG_RETRY_SECONDS * 2):
                    if self.stopping is not None:
                        return self._finish([])
                    time.sleep(0.5)
        policy = spec.get("restartPolicy", "Always")
        deadline = spec.get("activeDeadlineSeconds")
        t0 = time.monotonic()
        self.sim.event(self.pod, "Normal", "Started", f"started on {NODE_NAME} at {self.ip}")

        for c in inits:
            while True:
                c.start()
                code = self._wait_one(c, inits + mains)
                if code is None:  # stopped
                    return self._finish(inits + mains)
                if code == 0:
                    break
                c.restarts += 1
                if policy == "Never":
                    return self._finish(inits + mains, phase="Failed")
                time.sleep(c._backoff())

        for c in mains:
            c.start()
        while True:
            if self.stopping is not None:
                return self._finish(mains)
            if deadline and time.monotonic() - t0 > deadline:
                for c in mains:
                    c.kill(0)
                    c.poll()
                return self._finish(mains, phase="Failed", reason="DeadlineExceeded",
                                    message=f"Pod was active on the node longer than {deadline}s")
            for c in mains:
                if c.poll() is not None:
                    code = c.state["terminated"]["exitCode"]
                    if policy == "Always" or (policy == "OnFailure" and code != 0):
                        c.last_state, c.restarts = c.state, c.restarts + 1
                        delay = c._backoff()
                        c.next_start = time.monotonic() + delay
                        c.state = {"waiting": {"reason": "CrashLoopBackOff",
                                               "message": f"back-off {delay:.0f}s restarting failed container"}}
                elif c.proc is None and "waiting" in c.state and time.monotonic() >= c.next_start:
                    c.start()
                elif c.run_probes():
                    self.sim.event(self.pod, "Warning", "Unhealthy", f"container {c.name} failed liveness probe")
                    c.kill(float(spec.get("terminationGracePeriodSeconds", 30)))
                    continue
            if all("terminated" in c.state for c in mains):
                failed = any(c.state["terminated"]["exitCode"] != 0 for c in mains)
                return self._finish(mains, phase="Failed" if failed else "Succeeded")
            self.publish(self._status(mains, "Running"))
            time.sleep(0.2)

    def _wait_one(self, c: Container, all_: list[Container]) -> int | None:
        while True:
            if self.stopping is not None:
                return None
            code = c.poll()
            if code is not None:
                return code
            self.publish(self._status(all_, "Pending"))
            time.sleep(0.2)

    def _finish(self, containers: list[Container], phase: str | None = None, reason=None, message=None) -> None:
        if self.stopping is not None:
            for c in containers:
                c.kill(self.stopping)
                c.poll()
            if not self.gone:
                try:
                    self.sim.api.delete_namespaced_pod(
                        self.name, self.ns, grace_period_seconds=0,
                        body=client.V1DeleteOptions(grace_period_seconds=0, preconditions={"uid": self.uid}))
                except ApiException as exc:
                    if exc.status not in (404, 409):
                        raise
            return
        status = self._status(containers, phase or "Failed")
        if reason:
            status["reason"], status["message"] = reason, message
        self.publish(status)
        # Stay until deleted so a second watch event does not start the pod again.
        while self.stopping is None:
            time.sleep(0.5)
        if not self.gone:
            self._finish([])

    # -- building containers ------------------------------------------------
    def _container(self, spec: dict, env_base: dict[str, str], init: bool) -> Container:
        image = dockerfile.parse(dockerfile.dockerfile_for(spec["image"]).read_text())
        mounts = self._mounts(spec)
        env = {k: _remap(v, mounts) for k, v in {**env_base, **image.env, **self._env(spec)}.items()}
        # $(VAR) in command and args expands from the container's env, as the kubelet does.
        command = [_remap(_expand(a, env), mounts) for a in spec.get("command") or []] or None
        args = [_remap(_expand(a, env), mounts) for a in spec["args"]] if spec.get("args") is not None else None
        argv = dockerfile.argv_for(image, command, args)
        if not argv:
            raise ValueError(f"container {spec['name']}: no command and the image has no ENTRYPOINT/CMD")
        if argv[0] in ("python", "python3", "/usr/local/bin/python", "/usr/bin/python3"):
            argv[0] = sys.executable  # the image's interpreter is this repo's virtualenv here
        return Container(self, spec, argv, env, init)

    def _config_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            ref = volume.get("configMap")
            if ref is None:
                continue
            directory = self.dir / "volumes" / volume["name"]
            data = self._object("configmap", ref["name"], ref.get("optional"))
            self.config_volumes[volume["name"]] = (ref["name"], directory)
            write_volume(directory, data)

    def config_map_changed(self, name: str, data: dict[str, str]) -> None:
        """The kubelet's update of a mounted ConfigMap: new contents behind the swapped symlink."""
        for cm, directory in self.config_volumes.values():
            if cm == name and directory.exists():
                write_volume(directory, data)

    def _mounts(self, spec: dict) -> dict[str, str]:
        """mountPath -> this pod's directory for the container's ConfigMap volumes."""
        return {m["mountPath"].rstrip("/"): str(self.config_volumes[m["name"]][1])
                for m in spec.get("volumeMounts") or [] if m["name"] in self.config_volumes}

    def _env_base(self) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        env = {
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.dir),
            "HOSTNAME": self.name,
            "TMPDIR": str(self.dir / "tmp"),
            "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(API_PORT),
        }
        if self.pod["spec"].get("automountServiceAccountToken", True):
            env["KILN_SERVICEACCOUNT_DIR"] = str(self._service_account())
        return env

    def _service_account(self) -> Path:
        """What the kubelet would mount at /var/run/secrets/kubernetes.io/serviceaccount."""
        sa_dir = self.dir / "serviceaccount"
        sa_dir.mkdir(parents=True, exist_ok=True)
        account = self.pod["spec"].get("serviceAccountName") or "default"
        request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=[], expiration_seconds=86400,
            bound_object_ref=client.V1BoundObjectReference(kind="Pod", api_version="v1", name=self.name,
                                                           uid=self.uid)))
        token = self.sim.api.create_namespaced_service_account_token(account, self.ns, request).status.token
        (sa_dir / "token").write_text(token)
        (sa_dir / "namespace").write_text(self.ns)
        (sa_dir / "ca.crt").write_bytes((STATE / "pki" / "ca.crt").read_bytes())
        return sa_dir

    def _env(self, spec: dict) -> dict[str, str]:
        env: dict[str, str] = {}
        for src in spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                data = self._object("configmap", src["configMapRef"]["name"], src["configMapRef"].get("optional"))
            else:
                data = self._object("secret", src["secretRef"]["name"], src["secretRef"].get("optional"))
            env.update({prefix + k: v for k, v in data.items()})
        for item in spec.get("env", []):
            if "value" in item:
                env[item["name"]] = _expand(item["value"], env)
            elif "valueFrom" in item:
                value = self._value_from(item["valueFrom"])
                if value is not None:
                    env[item["name"]] = value
        (self.dir / "tmp").mkdir(exist_ok=True)
        return env

    def _object(self, kind: str, name: str, optional: bool | None) -> dict[str, str]:
        try:
            if kind == "secret":
                obj = self.sim.api.read_namespaced_secret(name, self.ns)
                return {k: base64.b64decode(v).decode() for k, v in (obj.data or {}).items()}
            return dict(self.sim.api.read_namespaced_config_map(name, self.ns).data or {})
        except ApiException as exc:
            if exc.status == 404 and optional:
                return {}
            if exc.status == 404:
                raise ValueError(f'{kind} "{name}" not found') from exc
            raise

    def _value_from(self, src: dict) -> str | None:
        if "fieldRef" in src:
            path = src["fieldRef"]["fieldPath"]
            meta = self.pod["metadata"]
            fields = {
                "metadata.name": self.name, "metadata.namespace": self.ns, "metadata.uid": self.uid,
                "status.podIP": self.ip, "status.hostIP": "127.0.0.1", "spec.nodeName": NODE_NAME,
                "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            }
            if path.startswith("metadata.labels['"):
                return (meta.get("labels") or {}).get(path[len("metadata.labels['"):-2])
            if path.startswith("metadata.annotations['"):
                return (meta.get("annotations") or {}).get(path[len("metadata.annotations['"):-2])
            return fields.get(path, "")
        for kind, key in (("secret", "secretKeyRef"), ("configmap", "configMapKeyRef")):
            if key in src:
                ref = src[key]
                data = self._object(kind, ref["name"], ref.get("optional"))
                if ref["key"] not in data and not ref.get("optional"):
                    raise ValueError(f'key "{ref["key"]}" not found in {kind} "{ref["name"]}"')
                return data.get(ref["key"])
        return None

    # -- reporting ----------------------------------------------------------
    def _unknown_image(self, images: list[str]) -> None:
        known = ", ".join(sorted({n for n in dockerfile.IMAGES}))
        message = (f"image {images[0]} is not one of Kiln's images the node simulator can run "
                   f"(repository name one of: {known})")
        statuses = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "started": False,
                     "state": {"waiting": {"reason": "ErrImagePull", "message": message}}}
                    for c in self.pod["spec"]["containers"]]
        self.publish(self._pod_status("Pending", statuses, ready=False, initialized=True))
        self.sim.event(self.pod, "Warning", "ErrImagePull", message)  # after the status, as a kubelet reports
        while self.stopping is None:
            time.sleep(0.5)
        self._finish([])

    def _config_error(self, message: str) -> None:
        self.sim.event(self.pod, "Warning", "Failed", f"Error: {message}")
        statuses = [{"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False,
                     "restartCount": 0, "started": False,
                     "state": {"waiting": {"reason": "CreateContainerConfigError", "message": message}}}
                    for c in self.pod["spec"]["containers"]]
        self.publish(self._pod_status("Pending", statuses, ready=False, initialized=True))

    def _status(self, containers: list[Container], phase: str) -> dict:
        mains = [c for c in containers if not c.init]
        inits = [c for c in containers if c.init]
        statuses = [c.status() for c in mains] or [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
             "started": False, "state": {"waiting": {"reason": "PodInitializing"}}}
            for c in self.pod["spec"]["containers"]]
        ready = bool(mains) and all(s["ready"] for s in statuses) and phase == "Running"
        status = self._pod_status(phase, statuses, ready=ready, initialized=bool(mains) or not inits)
        if inits:
            status["initContainerStatuses"] = [c.status() for c in inits]
        return status

    def _pod_status(self, phase: str, statuses: list[dict], ready: bool, initialized: bool) -> dict:
        def cond(kind: str, ok: bool) -> dict:
            return {"type": kind, "status": "True" if ok else "False", "lastProbeTime": None}

        return {
            "phase": phase, "hostIP": "127.0.0.1", "podIP": self.ip, "podIPs": [{"ip": self.ip}],
            "startTime": self.start_time, "qosClass": "BestEffort",
            "conditions": [cond("Initialized", initialized), cond("ContainersReady", ready), cond("Ready", ready),
                           {"type": "PodScheduled", "status": "True", "lastProbeTime": None}],
            "containerStatuses": statuses,
        }

    def publish(self, status: dict) -> None:
        if status == self._published:
            return
        stamp = now()
        for c in status["conditions"]:
            old = next((o for o in (self._published or {}).get("conditions", []) if o["type"] == c["type"]), None)
            c["lastTransitionTime"] = old["lastTransitionTime"] if old and old["status"] == c["status"] else stamp
        try:
            self.sim.api.patch_namespaced_pod_status(self.name, self.ns, {"status": status})
            self._published = status
        except ApiException as exc:
            if exc.status != 404:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.name, exc.reason)


def write_volume(directory: Path, data: dict[str, str]) -> None:
    """A ConfigMap volume as the kubelet writes it: the keys in a new timestamped directory, `..data` swapped to it
    in one rename, each key a symlink through `..data` (so a reader sees the old contents or the new, whole)."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = directory / f"..{dt.datetime.now(dt.UTC):%Y_%m_%d_%H_%M_%S.%f}"
    stamp.mkdir()
    for key, value in data.items():
        (stamp / key).write_text(value)
    tmp = directory / "..data_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(stamp.name)
    old = (directory / "..data").resolve() if (directory / "..data").is_symlink() else None
    tmp.replace(directory / "..data")
    for key in data:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(f"..data/{key}")
    if old is not None and old != stamp.resolve():
        for f in old.iterdir():
            f.unlink()
        old.rmdir()


def _remap(value: str, mounts: dict[str, str]) -> str:
    for path, directory in mounts.items():
        if value == path or value.startswith(path + "/"):
            return directory + value[len(path):]
    return value


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion against variables defined earlier."""
    for k, v in env.items():
        value = value.replace(f"$({k})", v)
    return value


class NodeSim:
    def __init__(self, api: client.CoreV1Api, leases: client.CoordinationV1Api):
        self.api, self.leases = api, leases
        self.ips = IPAllocator()
        self.pods: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    # -- node ----------------------------------------------------------------
    def register(self) -> None:
        node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME, "labels": {
            "kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "kiln.dev/simulated": "true", "nvidia.com/gpu.present": "true"}}}
        try:
            self.api.create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        self._node_status()

    def _node_status(self) -> None:
        stamp = now()

        def cond(kind, status, reason):
            return {"type": kind, "status": status, "reason": reason, "lastHeartbeatTime": stamp,
                    "lastTransitionTime": stamp, "message": "kiln node simulator"}

        body = {"status": {
            "capacity": CAPACITY, "allocatable": CAPACITY,
            "conditions": [cond("Ready", "True", "KubeletReady"), cond("MemoryPressure", "False", "Ok"),
                           cond("DiskPressure", "False", "Ok"), cond("PIDPressure", "False", "Ok"),
                           cond("NetworkUnavailable", "False", "Ok")],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE_NAME}],
            "nodeInfo": {"kubeletVersion": "v1.20.2-kiln-sim", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "kiln-local://0.1",
                         "osImage": "kiln node simulator", "kernelVersion": os.uname().release,
                         "machineID": "", "systemUUID": "", "bootID": ""},
        }}
        self.api.patch_node_status(NODE_NAME, body)

    def _renew_lease(self) -> None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {"metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
                "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": stamp}}
        try:
            self.leases.patch_namespaced_lease(NODE_NAME, "kube-node-lease", body)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self.leases.create_namespaced_lease("kube-node-lease", body)

    def heartbeat(self) -> None:
        n = 0
        while not self.stop.wait(0 if n == 0 else 5):
            try:
                self._renew_lease()
                if n % 4 == 0:
                    self._node_status()
            except Exception as exc:  # noqa: BLE001 - keep beating through API hiccups
                log.warning("heartbeat failed: %s", exc)
            n += 1

    # -- pods ----------------------------------------------------------------
    def event(self, pod: dict, kind: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        body = {"metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                                   "uid": meta["uid"], "apiVersion": "v1"},
                "reason": reason, "message": message, "type": kind, "count": 1,
                "firstTimestamp": now(), "lastTimestamp": now(),
                "source": {"component": "kubelet", "host": NODE_NAME}}
        try:
            self.api.create_namespaced_event(meta["namespace"], body)
        except ApiException as exc:
            log.warning("event not recorded: %s", exc.reason)

    def forget(self, uid: str) -> None:
        with self.lock:
            self.pods.pop(uid, None)

    def handle(self, kind: str, pod) -> None:
        uid = pod.metadata.uid
        with self.lock:
            runner = self.pods.get(uid)
            if kind == "DELETED":
                if runner:
                    runner.request_stop(2.0, gone=True)
                return
            if pod.metadata.deletion_timestamp:
                grace = pod.metadata.deletion_grace_period_seconds
                if runner:
                    runner.request_stop(float(grace if grace is not None else 30))
                else:
                    self._delete_now(pod)
                return
            phase = pod.status.phase if pod.status else None
            if runner or phase in ("Succeeded", "Failed"):
                return
            runner = PodRunner(self, pod)
            self.pods[uid] = runner
            runner.start()

    def _delete_now(self, pod) -> None:
        try:
            self.api.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace, grace_period_seconds=0,
                                           body=client.V1DeleteOptions(grace_period_seconds=0))
        except ApiException as exc:
            if exc.status != 404:
                log.warning("delete failed: %s", exc.reason)

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={NODE_NAME}"
        self._watch("pod", self.api.list_pod_for_all_namespaces, self.handle, listed=True, field_selector=selector)

    def watch_config_maps(self) -> None:
        """ConfigMap changes into the volumes of the pods that mount them, as the kubelet's watch does."""
        def changed(kind: str, cm) -> None:
            if kind != "MODIFIED":
                return
            with self.lock:
                runners = [r for r in self.pods.values() if r.ns == cm.metadata.namespace]
            for r in runners:
                r.config_map_changed(cm.metadata.name, dict(cm.data or {}))

        self._watch("configmap", self.api.list_config_map_for_all_namespaces, changed)

    def _watch(self, what: str, list_fn, handle, listed: bool = False, **kw) -> None:
        """List, then watch from that list's version, until stopped; relist after an expired version or any error.
        listed: the listed objects go to handle as ADDED first."""
        while not self.stop.is_set():
            try:
                listing = list_fn(**kw)
                for obj in listing.items if listed else ():
                    handle("ADDED", obj)
                w = watch.Watch()
                for ev in w.stream(list_fn, resource_version=listing.metadata.resource_version, timeout_seconds=60,
                                   allow_watch_bookmarks=False, **kw):
                    if self.stop.is_set():
                        w.stop()
                        break
                    handle(ev["type"], ev["object"])
            except ApiException as exc:
                if exc.status != 410:
                    log.warning("%s watch failed: %s; relisting", what, exc.reason)
                    time.sleep(1)
            except Exception as exc:  # noqa: BLE001 - reconnect on any transport error
                log.warning("%s watch error: %s; relisting", what, exc)
                time.sleep(1)

    def shutdown(self) -> None:
        self.stop.set()
        with self.lock:
            runners = list(self.pods.values())
        for r in runners:
            r.request_stop(5.0, gone=True)  # the pods stay in the API; their processes go
        for r in runners:
            r.join(timeout=15)


def _kill_orphans() -> None:
    """Processes a previous, killed simulator left behind."""
    for pidfile in PODS_DIR.glob("*/*.pid"):
        try:
            _signal_group(int(pidfile.read_text()), signal.SIGKILL)
        except ValueError:
            pass
        pidfile.unlink(missing_ok=True)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format='{"ts":"%(asctime)s","level":"%(levelname)s","msg":"%(message)s"}')
    PODS_DIR.mkdir(parents=True, exist_ok=True)
    _kill_orphans()
    config.load_kube_config(str(os.environ.get("KUBECONFIG", KUBECONFIG)))
    api = client.CoreV1Api()
    sim = NodeSim(api, client.CoordinationV1Api())
    sim.register()
    signal.signal(signal.SIGTERM, lambda *_: sim.stop.set())
    signal.signal(signal.SIGINT, lambda *_: sim.stop.set())
    threading.Thread(target=sim.heartbeat, daemon=True).start()
    threading.Thread(target=sim.watch_pods, daemon=True).start()
    threading.Thread(target=sim.watch_config_maps, daemon=True).start()
    log.info("node %s registered; running Kiln images as local processes", NODE_NAME)
    sim.stop.wait()
    sim.shutdown()


if __name__ == "__main__":
    main()
