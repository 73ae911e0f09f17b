"""What every reconcile returns, and the status rule all kinds share: write only what changed."""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln_contract import spec as specs
from kiln_operator import conditions

Events = list[tuple[str, str, str]]


@dataclass
class Result:
    status: dict | None = None  # a merge patch for status; written only where it differs from the object's
    events: Events = field(default_factory=list)
    written: list[dict] = field(default_factory=list)  # objects our writes returned (the cache lags behind them)
    jobs_created: list[tuple[str, str]] = field(default_factory=list)
    requeue_after: float | None = None
    storage_checked: str | None = None  # a Model uid whose storage was listed
    conflicts: list[str] | None = None  # children that exist and are not ours (Kiln Deployments)
    reset_canary: bool = False  # a canary step began: its tally starts again
    downloads: list[tuple[str, str]] = field(default_factory=list)  # (uri, sha256) to fetch off the workers
    downloaded: list[tuple[str, str]] = field(default_factory=list)  # fetched files used up: free them
    acted: bool = False  # something was written to the cluster or to storage


def status_changes(current: dict | None, patch: dict | None) -> dict:
    """The part of a merge patch that would change current (None and absent are the same)."""
    current = current or {}
    out = {}
    for key, value in (patch or {}).items():
        if value is None:
            if current.get(key) is not None:
                out[key] = None
        elif current.get(key) != value:
            out[key] = value
    return out


def invalid_spec(kind: str, obj: dict, exc: specs.SpecError) -> dict:
    """The status of an object whose spec the schema refuses: the same condition shape for every kind."""
    return refused(kind, obj, "InvalidSpec", exc)


def refused(kind: str, obj: dict, reason: str, exc: Exception) -> dict:
    """The status of an object whose spec cannot be acted on (reason: InvalidSpec, StorageNotAllowed, ...)."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    condition = "Succeeded" if kind == "TrainingJob" else "Ready"
    patch = {"observedGeneration": generation,
             "conditions": conditions.set_condition(status.get("conditions"), condition, False, reason,
                                                    str(exc), generation)}
    if kind == "TrainingJob":
        patch["phase"] = "Failed"
    return patch
