#!/usr/bin/env python3
"""Render or lint charts/kiln with Helm's own engine, without a helm binary (helm-python-sdk: Helm v4's Go SDK).

    python charts/render.py [-f values.yaml ...] [--set key=value ...] [-n NAMESPACE] [--name RELEASE] [--crds]
    python charts/render.py --lint [-f values.yaml ...]

Rendering prints the objects `helm template` would, in Helm's install order (with --crds, the CRDs first; hooks
last); pipe it to `kubectl apply -f -`.
The tests import this file for render(), lint(), objects() and pod_templates().
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent / "kiln"


def _helm():
    try:
        import helm_python
    except ImportError as exc:  # pragma: no cover - a clear message beats a traceback
        raise SystemExit("helm-python-sdk is not installed: pip install -e '.[dev]'") from exc
    return helm_python


def merge(base: dict, override: dict) -> dict:
    """Deep-merge override into base (what several -f files do in Helm: maps merge, everything else replaces)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def render(values: dict | None = None, *, name: str = "kiln", namespace: str = "kiln-system",
           chart: Path = CHART) -> dict[str, str]:
    """Template path -> rendered text, exactly as Helm renders an install (values validated by the schema)."""
    helm = _helm()
    with helm.Chart.load(str(chart)) as loaded:
        return loaded.render(values or {}, name=name, namespace=namespace, is_install=True)


def crds(chart: Path = CHART) -> list[dict[str, str]]:
    """The chart's CRD files as Helm sees them: [{name, filename, data}]."""
    helm = _helm()
    with helm.Chart.load(str(chart)) as loaded:
        return loaded.crds


def lint(values: dict | None = None, *, chart: Path = CHART, strict: bool = False) -> dict:
    """helm lint: {"messages": [{"severity": 1 info | 2 warning | 3 error, "path", "error"}], "errors": [...]}."""
    return _helm().lint(str(chart), values, strict=strict, namespace="kiln-system")


# Helm's install order (pkg/release/util/kind_sorter.go); kinds not listed go last. Hooks run after the rest.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
    "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass", "PersistentVolume",
    "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod",
    "ReplicationController", "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
    "IngressClass", "Ingress", "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def _install_rank(obj: dict) -> tuple[int, int]:
    hook = "helm.sh/hook" in ((obj.get("metadata") or {}).get("annotations") or {})
    kind = obj.get("kind", "")
    return int(hook), INSTALL_ORDER.index(kind) if kind in INSTALL_ORDER else len(INSTALL_ORDER)


def objects(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object in a rendering (NOTES.txt and empty documents left out), in Helm's install order:
    by kind (ServiceAccounts and Secrets before the workloads that use them), hooks last."""
    out = []
    for path in sorted(rendered):
        if not path.endswith((".yaml", ".yml")):
            continue
        out += [doc for doc in yaml.safe_load_all(rendered[path]) if doc]
    return sorted(out, key=_install_rank)  # stable: template order within a kind


def manifest(rendered: dict[str, str], uninstall: bool = False) -> str:
    """The objects as one multi-document YAML, in install order (what `kubectl apply -f -` should get), or with
    uninstall=True in Helm's uninstall order, the reverse: the operator goes before the RBAC it runs under."""
    objs = objects(rendered)
    return yaml.safe_dump_all(list(reversed(objs)) if uninstall else objs, sort_keys=False)


def pod_templates(objs: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every pod the objects would create."""
    found = []
    for obj in objs:
        kind, name = obj["kind"], obj["metadata"]["name"]
        spec = obj.get("spec") or {}
        if kind == "Pod":
            found.append((f"{kind}/{name}", spec))
        elif kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
            found.append((f"{kind}/{name}", spec["template"]["spec"]))
        elif kind == "CronJob":
            found.append((f"{kind}/{name}", spec["jobTemplate"]["spec"]["template"]["spec"]))
    return found


def _set(values: dict, assignment: str) -> dict:
    key, _, raw = assignment.partition("=")
    value = yaml.safe_load(raw) if raw else ""
    for part in reversed(key.split(".")):
        value = {part: value}
    return merge(values, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-f", "--values", action="append", default=[], help="values file (repeatable)")
    parser.add_argument("--set", action="append", default=[], help="key.path=yaml-value (repeatable)")
    parser.add_argument("-n", "--namespace", default="kiln-system")
    parser.add_argument("--name", default="kiln", help="release name")
    parser.add_argument("--crds", action="store_true", help="print the CRDs first (helm template --include-crds)")
    parser.add_argument("--lint", action="store_true", help="lint instead of rendering; exit 1 on errors")
    args = parser.parse_args(argv)
    values: dict = {}
    for path in args.values:
        values = merge(values, yaml.safe_load(Path(path).read_text()) or {})
    for assignment in args.set:
        values = _set(values, assignment)
    if args.lint:
        report = lint(values)
        names = {1: "INFO", 2: "WARNING", 3: "ERROR"}
        for m in report["messages"]:
            print(f"[{names.get(m['severity'], 'UNKNOWN')}] {m['path']}: {m['error']}")
        return 1 if report["errors"] else 0
    docs = [c["data"].strip() for c in crds()] if args.crds else []
    rendered = render(values, name=args.name, namespace=args.namespace)
    docs.append(manifest(rendered).strip())
    print("\n---\n".join(docs))
    notes = next((text for path, text in rendered.items() if path.endswith("NOTES.txt")), "")
    if notes:
        print(notes, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
