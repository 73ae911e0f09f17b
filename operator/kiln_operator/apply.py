"""Bring a parent's children to their desired manifests: server-side apply, prune by owner, never touch others.

Each applied manifest carries its own fingerprint (annotation kiln.dev/applied), so "does the
child differ from what we want" is one comparison with the watched object — no defaulted field
ever makes an unchanged child look changed, and nothing is written when nothing changed.
A child that exists but is not controlled by the parent is a conflict: it is reported, and left
exactly as it was.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field

from kiln_contract import checksums
from kiln_operator import kube
from kiln_operator.indexes import controller_uid

APPLIED = "kiln.dev/applied"


def fingerprint(manifest: dict) -> str:
    return checksums.sha256_bytes(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())[:16]


def stamped(manifest: dict) -> dict:
    out = copy.deepcopy(manifest)
    out["metadata"].setdefault("annotations", {})[APPLIED] = fingerprint(manifest)
    return out


def _key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def conflict_message(kind: str, name: str) -> str:
    return f"{kind} {name} already exists and is not managed by this Deployment; it was left as it is"


@dataclass
class ChildPlan:
    apply: list[dict] = field(default_factory=list)  # ours, changed: server-side apply
    create: list[dict] = field(default_factory=list)  # not observed: create (a 409 may still reveal a stranger)
    delete: list[tuple[str, str, str]] = field(default_factory=list)  # (apiVersion, kind, name) ours, unwanted
    conflicts: list[str] = field(default_factory=list)


def plan(desired: list[dict], observed: dict[tuple[str, str], dict], owner_uid: str,
         api_versions: dict[str, str]) -> ChildPlan:
    """Pure: what to apply, create and delete. observed: (kind, name) -> watched child (metadata at least)."""
    out = ChildPlan()
    wanted = set()
    for manifest in desired:
        key = _key(manifest)
        wanted.add(key)
        have = observed.get(key)
        if have is None:
            out.create.append(stamped(manifest))
        elif controller_uid(have) != owner_uid:
            out.conflicts.append(conflict_message(*key))
        elif ((have["metadata"].get("annotations") or {}).get(APPLIED) != fingerprint(manifest)
              or _replicas_drifted(manifest, have) or _data_drifted(manifest, have)):
            out.apply.append(stamped(manifest))
    for key, have in sorted(observed.items()):
        if key not in wanted and controller_uid(have) == owner_uid:
            out.delete.append((api_versions.get(key[0], "v1"), key[0], key[1]))
    return out


def _replicas_drifted(manifest: dict, have: dict) -> bool:
    """Someone scaled a server we scale ourselves: put our count back."""
    want = (manifest.get("spec") or {}).get("replicas")
    return manifest["kind"] == "Deployment" and want is not None and (have.get("spec") or {}).get("replicas") != want


def _data_drifted(manifest: dict, have: dict) -> bool:
    """Someone edited a ConfigMap we write (its data, not our fingerprint): put our data back."""
    return manifest["kind"] == "ConfigMap" and "data" in have and have["data"] != manifest.get("data", {})


def sync(namespace: str, desired: list[dict], observed: dict[tuple[str, str], dict], owner_uid: str,
         api_versions: dict[str, str]) -> tuple[list[str], bool]:
    """Act on plan(); returns (conflicts, whether anything was written)."""
    todo = plan(desired, observed, owner_uid, api_versions)
    acted = False
    for manifest in todo.create:
        if kube.create(manifest) is not None:
            acted = True
            continue
        meta = manifest["metadata"]
        existing = kube.read(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        if existing is not None and controller_uid(existing) != owner_uid:
            todo.conflicts.append(conflict_message(*_key(manifest)))
        else:
            todo.apply.append(manifest)  # ours, and the watch had not shown it yet
    for manifest in todo.apply:
        kube.server_side_apply(manifest)
        acted = True
    for api_version, kind, name in todo.delete:
        kube.delete(api_version, kind, namespace, name)
        acted = True
    return todo.conflicts, acted
