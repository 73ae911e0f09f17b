"""The model registry's rules, as pure functions on a Model's status.

Version numbers are reserved per run id before a Job exists, so a retried handler or a
restarted operator finds its reservation instead of making a second one. S3 holds the
durable truth (each version's model card); Model status is rebuilt from it when empty.
"""

from __future__ import annotations

import copy

from kiln_contract import card as cards
from kiln_contract import metrics as deciding

COMMITTED = ("Registered", "Rejected", "Archived")
# Versions per history index object in storage (status.history): ~1.7 KB each, so an object stays under 1 MB.
HISTORY_PAGE = 500


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
    number = max([v["version"] for v in versions(status)] + [status.get("latestVersion") or 0,
                                                               (status.get("history") or {}).get("highest") or 0]) + 1
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
        "withheld": cards.withheld_formats(card) or None,
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


def promotion_metric(spec: dict, task: str | None) -> tuple[str, bool, str | None]:
    """(metric, higher is better, problem) for auto promotion: the one place that decides it.

    promotion.metric when the task computes it, else the task's default (accuracy for classification,
    r2 for regression) with `problem` saying why; higherIsBetter when given, else by the metric.
    """
    promotion = spec.get("promotion") or {}
    configured = promotion.get("metric")
    if task in deciding.DEFAULT_METRIC:
        metric, problem = deciding.deciding_metric(task, configured)
    else:  # a bring-your-own version that names no task: what was asked, or accuracy
        metric, problem = configured or "accuracy", None
    higher = promotion.get("higherIsBetter")
    if higher is None or problem:
        higher = not deciding.lower_is_better(metric)
    return metric, bool(higher), problem


def _beats(spec: dict, entry: dict, current: dict | None) -> bool:
    """Whether auto promotion moves production from current to entry."""
    promotion = spec.get("promotion") or {}
    if promotion.get("policy", "manual") != "auto" or entry is None or entry["state"] != "Registered":
        return False
    if current is None or current is entry:
        return True
    metric, higher, _ = promotion_metric(spec, entry.get("task"))
    new, old = _metric(entry, metric), _metric(current, metric)
    if new is None:
        return False
    if old is None:
        return True
    gain = (new - old) if higher else (old - new)
    # "Beats" means strictly better, and by at least minImprovement.
    return gain > 0 and gain >= promotion.get("minImprovement", 0)


def promote(spec: dict, status: dict, version: int) -> tuple[dict, bool]:
    """Auto policy: production moves to version when it passed its gates and beats the current one."""
    status = copy.deepcopy(status)
    entry = find(status, version)
    auto = status.get("autoAliases") or {}
    current = find(status, auto["production"]) if "production" in auto else None
    if not _beats(spec, entry, current):
        return status, False
    status.setdefault("autoAliases", {})["production"] = version
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


def rebuild(spec: dict, cards_by_version: dict[int, tuple[str, dict, str]], now: str,
            history: dict[int, dict] | None = None) -> dict:
    """A Model status made from what storage holds (the cluster was rebuilt from Git).

    cards_by_version: {version: (prefix uri, card, sha256 of the card's bytes)} for versions the history
    index does not hold; history: {version: entry} from the index, taken as recorded (its states —
    Archived, Failed — are not in the cards). Auto promotion replays over all of them in order.
    Linear in the number of versions (a Model may have thousands).
    """
    history = history or {}
    entries, production = [], None
    for number in sorted(set(cards_by_version) | set(history)):
        if number in history:
            entry = copy.deepcopy(history[number])
        else:
            uri, card, card_sha256 = cards_by_version[number]
            entry = find(commit({}, number, card, uri, cards.created_at(card) or now, card_sha256), number)
            entry["source"] = "storage"
        entries.append(entry)
        if _beats(spec, entry, production):
            production = entry
    status: dict = {"versions": entries}
    if production is not None:
        status["autoAliases"] = {"production": production["version"]}
    status["latestVersion"] = _latest(status)
    return status


# --- history: a Model's status stays small -----------------------------------------------------------
def protected_versions(status: dict, in_use: set[int]) -> set[int]:
    """Versions that must stay in status: what aliases point at and what Deployments use."""
    return set(in_use) | set((status.get("aliases") or {}).values()) | set((status.get("autoAliases") or {}).values())


def to_history(status: dict, keep: int, protected: set[int], slack: int | None = None) -> list[dict]:
    """The entries that leave status for the history index: all but the newest `keep`, Pending ones and
    protected ones — only once more than keep + slack are there, so one index write moves several."""
    entries = sorted(versions(status), key=lambda v: v["version"])
    slack = keep if slack is None else slack
    if len(entries) <= keep + slack:
        return []
    newest = {v["version"] for v in entries[-keep:]} if keep else set()
    return [copy.deepcopy(v) for v in entries
            if v["version"] not in newest and v["version"] not in protected and v["state"] != "Pending"]


def history_page(number: int) -> int:
    """The index object that holds a version's entry."""
    return (number - 1) // HISTORY_PAGE


def history_pages(numbers) -> set[int]:
    return {history_page(n) for n in numbers}


def by_history_page(entries: list[dict]) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for entry in entries:
        out.setdefault(history_page(entry["version"]), []).append(entry)
    return out


def merge_history(page: list[dict], entries: list[dict]) -> list[dict]:
    """One index object's entries with entries written over it (by version number), in order."""
    by_version = {v["version"]: v for v in page}
    by_version.update({v["version"]: v for v in entries})
    return [by_version[n] for n in sorted(by_version)]


def moved_out(status: dict, moved: list[dict], uri: str, count: int, highest: int) -> dict:
    """Status once `moved` are in the index: those entries gone (unless something started using them
    meanwhile), status.history describing the index."""
    status = copy.deepcopy(status)
    numbers = {v["version"] for v in moved}
    status["versions"] = [v for v in versions(status) if v["version"] not in numbers]
    status["history"] = {"uri": uri, "count": count, "highest": highest}
    return status


def restored(status: dict, entries: list[dict]) -> dict:
    """Status with history entries brought back (an alias or a Deployment wants them), in version order."""
    status = copy.deepcopy(status)
    present = {v["version"] for v in versions(status)}
    status["versions"] = sorted(versions(status) + [copy.deepcopy(v) for v in entries if v["version"] not in present],
                                key=lambda v: v["version"])
    return status

