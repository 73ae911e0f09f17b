#!/usr/bin/env python3
"""The Kubernetes Pod Security Standards, "baseline" and "restricted" profiles, as a checker of pod specs.

Each rule follows the Pod Security Standards page (policy version "latest"): the restricted profile is
every baseline control plus volume types, privilege escalation, non-root, seccomp and capabilities.
check(pod_spec, pod_annotations) returns violations as "field path: what is wrong"; an empty list passes.

    python charts/render.py | python charts/pod_security.py    # checks every pod template on stdin

Kubernetes 1.20 (the local cluster) has no PodSecurity admission, so the tests apply this checker; on a
cluster that has it (1.25+), label the namespaces pod-security.kubernetes.io/enforce=restricted as well.
"""

from __future__ import annotations

import sys

# Baseline: capabilities that may be added on top of the runtime's defaults.
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                         "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
# Restricted: the only capability that may be added (after dropping ALL).
RESTRICTED_ADD = {"NET_BIND_SERVICE"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
# Restricted: every volume must be one of these types.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SECCOMP_OK = {"RuntimeDefault", "Localhost"}
APPARMOR_OK = {"RuntimeDefault", "Localhost"}


def containers(pod: dict) -> list[tuple[str, dict]]:
    """(field path, container) for containers, initContainers and ephemeralContainers."""
    return [(f"spec.{kind}[{i}]", c) for kind in ("containers", "initContainers", "ephemeralContainers")
            for i, c in enumerate(pod.get(kind) or [])]


def baseline(pod: dict, annotations: dict | None = None) -> list[str]:
    out: list[str] = []
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            out.append(f"spec.{key}: must be unset or false (host namespaces)")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        out.append("spec.securityContext.windowsOptions.hostProcess: must be unset or false")
    for i, vol in enumerate(pod.get("volumes") or []):
        if "hostPath" in vol:
            out.append(f"spec.volumes[{i}].hostPath: hostPath volumes are forbidden")
    out += _selinux("spec.securityContext", psc)
    if (psc.get("seccompProfile") or {}).get("type") == "Unconfined":
        out.append("spec.securityContext.seccompProfile.type: must not be Unconfined")
    if (psc.get("appArmorProfile") or {}).get("type") not in (None, *APPARMOR_OK):
        out.append("spec.securityContext.appArmorProfile.type: must be RuntimeDefault or Localhost")
    for j, sysctl in enumerate(psc.get("sysctls") or []):
        if sysctl.get("name") not in SAFE_SYSCTLS:
            out.append(f"spec.securityContext.sysctls[{j}].name: {sysctl.get('name')} is not a safe sysctl")
    for key, value in (annotations or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and not (
                value == "runtime/default" or value.startswith("localhost/")):
            out.append(f"metadata.annotations[{key}]: AppArmor must be runtime/default or localhost/*")
    for path, c in containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(f"{path}.securityContext.privileged: must be unset or false")
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            out.append(f"{path}.securityContext.windowsOptions.hostProcess: must be unset or false")
        added = set((sc.get("capabilities") or {}).get("add") or [])
        if added - BASELINE_CAPABILITIES:
            out.append(f"{path}.securityContext.capabilities.add: {sorted(added - BASELINE_CAPABILITIES)} "
                       "are beyond the baseline set")
        for k, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                out.append(f"{path}.ports[{k}].hostPort: must be unset or 0")
        out += _selinux(f"{path}.securityContext", sc)
        if sc.get("procMount") not in (None, "Default"):
            out.append(f"{path}.securityContext.procMount: must be unset or Default")
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            out.append(f"{path}.securityContext.seccompProfile.type: must not be Unconfined")
        if (sc.get("appArmorProfile") or {}).get("type") not in (None, *APPARMOR_OK):
            out.append(f"{path}.securityContext.appArmorProfile.type: must be RuntimeDefault or Localhost")
    return out


def _selinux(path: str, sc: dict) -> list[str]:
    opts = sc.get("seLinuxOptions") or {}
    out = []
    if opts.get("type", "") not in SELINUX_TYPES:
        out.append(f"{path}.seLinuxOptions.type: {opts['type']!r} is not allowed")
    for key in ("user", "role"):
        if opts.get(key):
            out.append(f"{path}.seLinuxOptions.{key}: must be unset")
    return out


def restricted(pod: dict, annotations: dict | None = None) -> list[str]:
    out = baseline(pod, annotations)
    psc = pod.get("securityContext") or {}
    for i, vol in enumerate(pod.get("volumes") or []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            out.append(f"spec.volumes[{i}]: volume type {sorted(kinds - RESTRICTED_VOLUMES)} is not allowed "
                       f"(allowed: {', '.join(sorted(RESTRICTED_VOLUMES))})")
    if psc.get("runAsUser") == 0:
        out.append("spec.securityContext.runAsUser: must not be 0")
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type") in SECCOMP_OK
    for path, c in containers(pod):
        sc = c.get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{path}.securityContext.allowPrivilegeEscalation: must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            out.append(f"{path}.securityContext.runAsNonRoot: must be true (here or in the pod's securityContext)")
        if sc.get("runAsUser") == 0:
            out.append(f"{path}.securityContext.runAsUser: must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if not (seccomp in SECCOMP_OK or (seccomp is None and pod_seccomp)):
            out.append(f"{path}.securityContext.seccompProfile.type: must be RuntimeDefault or Localhost "
                       "(here or in the pod's securityContext)")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(f"{path}.securityContext.capabilities.drop: must include ALL")
        added = set(caps.get("add") or [])
        if added - RESTRICTED_ADD:
            out.append(f"{path}.securityContext.capabilities.add: only NET_BIND_SERVICE may be added, "
                       f"not {sorted(added - RESTRICTED_ADD)}")
    return out


def check(pod: dict, annotations: dict | None = None, profile: str = "restricted") -> list[str]:
    """Violations of the profile ("restricted" or "baseline") by a pod spec; [] when it complies."""
    if profile not in ("restricted", "baseline"):
        raise ValueError(f"unknown profile {profile!r}")
    return (restricted if profile == "restricted" else baseline)(pod, annotations)


def pod_of(obj: dict) -> tuple[dict, dict] | None:
    """(pod spec, pod annotations) of a Pod or of any workload's pod template; None for other kinds."""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Pod":
        return spec, (obj.get("metadata") or {}).get("annotations") or {}
    template = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or spec.get("template")
    if isinstance(template, dict) and "spec" in template:
        return template["spec"], (template.get("metadata") or {}).get("annotations") or {}
    return None


def main() -> int:
    import yaml

    failed = 0
    for obj in yaml.safe_load_all(sys.stdin):
        found = pod_of(obj) if isinstance(obj, dict) else None
        if found is None:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        problems = check(*found)
        print(f"{name}: {'restricted' if not problems else 'VIOLATES restricted'}")
        for p in problems:
            print(f"  {p}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
