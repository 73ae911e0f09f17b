"""Labels and owner references every child carries (one place for their names)."""

from __future__ import annotations

from kiln_contract import API_VERSION

MANAGED_BY = {"app.kubernetes.io/managed-by": "kiln", "app.kubernetes.io/part-of": "kiln"}
TRAININGJOB = "kiln.dev/trainingjob"
MODEL = "kiln.dev/model"
VERSION = "kiln.dev/version"
RUN = "kiln.dev/run"
# Annotation on a TrainingJob: a new value asks for a new run (set on drift, or by hand).
RETRAIN = "kiln.dev/retrain-requested"


def owner_reference(kind: str, meta: dict) -> dict:
    return {"apiVersion": API_VERSION, "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def dns_name(*parts: str, limit: int = 63) -> str:
    """A DNS-1123 label from parts, shortened from the left part when too long."""
    tail = "-".join(parts[1:])
    head = parts[0][: max(1, limit - len(tail) - 1)] if tail else parts[0][:limit]
    return (f"{head}-{tail}" if tail else head).strip("-").lower()
