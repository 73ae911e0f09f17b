"""The model registry's rules, as pure functions on a Model's status.

Version numbers are reserved per run id before a Job exists, so a retried handler or a
restarted operator finds its reservation instead of making a second one. S3 holds the
durable truth (each version's model card); Model status is rebuilt from it when empty.
"""

from __future__ import annotations

import copy

from kiln_contract import card as cards

COMMITTED = ("Registered", "Rejected", "Archived")


def versions(status: dict) -> list[dict]:
    return status.setdefault("versions", [])


def find(status: dict, version: int) -> dict | None:
    return next((v for v in status.get("versions", []) if v["version"] == version), None)


def reserve(status: dict, run: str, training_job: str, now: str) -> tuple[dict, int]:
    """Return (status, version) with a version reserved for run; the same run always gets the same one."""
    status = copy.deepcopy(status)
    for v in versions(status):
        if v.get("run") == run:
            return status, v["version"]
    number = max([v["version"] for v in versions(status)] + [status.get("latestVersion") or 0]) + 1
    entry = {"version": number, "state": "Pending", "run": run, "created": now}
    if training_job:  # the API server turns "" into null, which the schema refuses
        entry["trainingJob"] = training_job
    versions(status).append(entry)
    return status, number


def _latest(status: dict) -> int | None:
    done = [v["version"] for v in status.get("versions", []) if v["state"] in COMMITTED]
    return max(done) if done else None


def commit(status: dict, version: int, card: dict, uri: str, now: str, card_sha256: str = "") -> dict:
    """Record a finished version from its model card (idempotent); card_sha256 pins the card for serving."""
    status = copy.deepcopy(status)
    entry = find(status, version)
    if entry is None:
        entry = {"version": version, "created": now}
        versions(status).append(entry)
    elif entry["state"] in COMMITTED:
        return status
    primary = cards.artifact(card, "onnx") or (card["artifacts"][0] if card["artifacts"] else {})
    dataset = card.get("dataset") or {}
    facts = {
        "state": "Registered" if cards.gates_passed(card) else "Rejected",
        "uri": uri,
        "formats": sorted({a["format"] for a in card["artifacts"]}),
        "sha256": primary.get("sha256", ""),
        "cardSha256": card_sha256 or None,
        "artifact": primary.get("file", ""),
        "artifacts": {a["format"]: {"file": a["file"], "sha256": a["sha256"]} for a in card["artifacts"]},
        "metrics": card.get("metrics", {}),
        "params": card.get("params", {}),
        "gates": card.get("gates", []),
        "dataset": {k: dataset.get(k) for k in ("uri", "sha256", "rows") if k in dataset},
        "libraries": card.get("libraries", {}),
        "task": card.get("task"),
        "committed": now,
    }
    entry.update({k: v for k, v in facts.items() if v is not None})
    if not entry.get("trainingJob") and card.get("trainingJob"):
        entry["trainingJob"] = card["trainingJob"]
    status["versions"] = sorted(versions(status), key=lambda v: v["version"])
    status["latestVersion"] = _latest(status)
    return status


def fail(status: dict, version: int, reason: str) -> dict:
    status = copy.deepcopy(status)
    entry = find(status, version)
    if entry is not None and entry["state"] == "Pending":
        entry["state"] = "Failed"
        entry["reason"] = reason
    return status


def _metric(entry: dict, metric: str) -> float | None:
    value = (entry.get("metrics") or {}).get(metric)
    return float(value) if isinstance(value, int | float) else None


def promote(spec: dict, status: dict, version: int) -> tuple[dict, bool]:
    """Auto policy: production moves to version when it passed its gates and beats the current one."""
    status = copy.deepcopy(status)
    promotion = spec.get("promotion") or {}
    entry = find(status, version)
    if promotion.get("policy", "manual") != "auto" or entry is None or entry["state"] != "Registered":
        return status, False
    auto = status.setdefault("autoAliases", {})
    current = find(status, auto["production"]) if "production" in auto else None
    metric = promotion.get("metric", "accuracy")
    new = _metric(entry, metric)
    if current is not None and current is not entry:
        old = _metric(current, metric)
        if new is None:
            return status, False
        if old is not None:
            gain = (new - old) if promotion.get("higherIsBetter", True) else (old - new)
            # "Beats" means strictly better, and by at least minImprovement.
            if gain <= 0 or gain < promotion.get("minImprovement", 0):
                return status, False
    auto["production"] = version
    return status, True


def resolve_aliases(spec: dict, status: dict) -> tuple[dict, list[str]]:
    """Effective aliases: auto promotions overridden by pins; problems with pins, naming the field."""
    status = copy.deepcopy(status)
    effective = dict(status.get("autoAliases") or {})
    problems = []
    for alias, version in (spec.get("aliases") or {}).items():
        entry = find(status, version)
        if entry is None or entry["state"] not in ("Registered", "Archived"):
            state = entry["state"] if entry else "not registered"
            problems.append(f"spec.aliases.{alias}: version {version} is {state}; the pin is not applied")
            continue
        effective[alias] = version
    status["aliases"] = effective
    return status, problems


def apply_retention(spec: dict, status: dict, in_use: set[int]) -> dict:
    """Archive Registered versions beyond keepLast, never one an alias or a Deployment uses."""
    keep = (spec.get("retention") or {}).get("keepLast")
    if not keep:
        return status
    status = copy.deepcopy(status)
    protected = set(in_use) | set((status.get("aliases") or {}).values())
    live = sorted((v for v in versions(status) if v["state"] == "Registered"), key=lambda v: -v["version"])
    for entry in live[keep:]:
        if entry["version"] not in protected:
            entry["state"] = "Archived"
    return status


def rebuild(spec: dict, cards_by_version: dict[int, tuple[str, dict, str]], now: str) -> dict:
    """A Model status made from the model cards found in storage (the cluster was rebuilt from Git).

    cards_by_version: {version: (prefix uri, card, sha256 of the card's bytes)}.
    """
    status: dict = {"versions": []}
    for number in sorted(cards_by_version):
        uri, card, card_sha256 = cards_by_version[number]
        status = commit(status, number, card, uri, card.get("created") or now, card_sha256)
        find(status, number)["source"] = "storage"
        status, _ = promote(spec, status, number)
    return status
