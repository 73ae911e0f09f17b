"""What a batch Job and its pods say about a run. Pure: takes API dicts, returns facts."""

from __future__ import annotations

import json
from dataclasses import dataclass

# Waiting reasons after which a pod will never start by itself.
UNRUNNABLE = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
              "CreateContainerError", "RunContainerError"}


@dataclass
class Outcome:
    phase: str  # Pending | Running | Succeeded | Failed
    reason: str = ""
    message: str = ""
    attempts: int = 0
    summary: dict | None = None
    start_time: str | None = None
    completion_time: str | None = None


def summary_of(pod: dict) -> dict | None:
    """The trainer's one-line JSON summary from a pod's termination message."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        message = ((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
        for line in reversed(message.strip().splitlines()):
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                return data
    return None


def _terminated(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            return term
    return None


def _waiting(pod: dict) -> dict | None:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in UNRUNNABLE:
            return waiting
    return None


def _newest(pods: list[dict]) -> list[dict]:
    return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)


def outcome(job: dict | None, pods: list[dict]) -> Outcome:
    if job is None:
        return Outcome("Pending")
    status = job.get("status") or {}
    conds = {c["type"]: c for c in status.get("conditions") or [] if c.get("status") == "True"}
    attempts = int(status.get("failed") or 0) + int(status.get("active") or 0) + int(status.get("succeeded") or 0)
    base = {"attempts": attempts, "start_time": status.get("startTime"),
            "completion_time": status.get("completionTime")}
    pods = _newest(pods)
    if "Complete" in conds or status.get("succeeded"):
        done = next((p for p in pods if (p.get("status") or {}).get("phase") == "Succeeded"), None)
        return Outcome("Succeeded", "Succeeded", "training finished",
                       summary=summary_of(done) if done else None, **base)
    if "Failed" in conds:
        cond = conds["Failed"]
        reason, message = cond.get("reason") or "Failed", cond.get("message") or ""
        last = next((p for p in pods if _terminated(p)), None)
        summary = summary_of(last) if last else None
        term = _terminated(last) if last else None
        if term and term.get("reason") == "OOMKilled":
            reason, message = "OOMKilled", "the trainer ran out of memory; raise spec.resources.memory"
        elif summary and summary.get("status") == "Failed":
            reason = summary.get("reason") or reason
            message = summary.get("message") or message
        elif term and term.get("message"):
            message = f"{message}: {term['message'][-1000:]}" if message else term["message"][-1000:]
        if cond.get("reason") == "DeadlineExceeded":
            reason = "DeadlineExceeded"
            message = f"the run exceeded spec.timeout ({job['spec'].get('activeDeadlineSeconds')}s)"
        return Outcome("Failed", reason, message, summary=summary, **base)
    for pod in pods:
        waiting = _waiting(pod)
        if waiting:
            return Outcome("Failed", "ImageNotRunnable",
                           f"{waiting.get('reason')}: {waiting.get('message', '')}".strip(), **base)
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    return Outcome("Running" if running else "Pending", **base)
