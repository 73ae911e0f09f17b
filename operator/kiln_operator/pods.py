"""What a pod's status says, read the same way by the operator's sampler and by the gateway."""

from __future__ import annotations


def is_ready(pod: dict) -> bool:
    """Ready condition True, an IP, and not being deleted: a pod that may take traffic."""
    status = pod.get("status") or {}
    return bool(not (pod.get("metadata") or {}).get("deletionTimestamp") and status.get("podIP")
                and any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or ()))
