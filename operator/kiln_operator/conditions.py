"""Kubernetes-style status conditions (type/status/reason/message/lastTransitionTime/observedGeneration)."""

from __future__ import annotations

import datetime as dt


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict] | None, type_: str, status: bool | str, reason: str, message: str,
                  generation: int | None) -> list[dict]:
    """Return conditions with one entry replaced; lastTransitionTime moves only when status changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    out = [dict(c) for c in (conditions or []) if c.get("type") != type_]
    old = next((c for c in (conditions or []) if c.get("type") == type_), None)
    changed = old is None or old.get("status") != value
    cond = {"type": type_, "status": value, "reason": reason, "message": message,
            "lastTransitionTime": now() if changed else old.get("lastTransitionTime", now())}
    if generation is not None:
        cond["observedGeneration"] = generation
    out.append(cond)
    return sorted(out, key=lambda c: c["type"])
