"""Model reconciliation: rebuild from storage, bring-your-own versions, aliases, retention, conditions."""

from __future__ import annotations

from kiln_contract import checksums, storage
from kiln_operator import artifacts, conditions, kube, registry
from kiln_operator.settings import Settings

MODELS = "models"


def storage_of(model: dict, cfg: Settings) -> str:
    """spec.storage, else the operator's default per namespace (same-named Models never collide)."""
    return (model.get("spec") or {}).get("storage") or f"{cfg.storage.rstrip('/')}/{model['metadata']['namespace']}"


def versions_in_use(namespace: str, model: str) -> set[int]:
    """Versions that kiln Deployments pin or serve; retention never archives them."""
    used = set()
    for dep in kube.list_custom("deployments", namespace):
        ref = (dep.get("spec") or {}).get("model") or {}
        if ref.get("name") != model:
            continue
        if ref.get("version"):
            used.add(int(ref["version"]))
        for key in ("servingVersion", "canaryVersion"):
            if (dep.get("status") or {}).get(key):
                used.add(int(dep["status"][key]))
    return used


def settle(model: dict, status: dict) -> dict:
    """Aliases, retention and conditions: what every writer of Model status applies last."""
    spec = model.get("spec") or {}
    meta = model["metadata"]
    status, problems = registry.resolve_aliases(spec, status)
    status = registry.apply_retention(spec, status, versions_in_use(meta["namespace"], meta["name"]))
    generation = meta.get("generation")
    status["observedGeneration"] = generation
    if problems:
        status["conditions"] = conditions.set_condition(status.get("conditions"), "Ready", False, "InvalidAlias",
                                                        "; ".join(problems), generation)
    else:
        served = status.get("aliases", {}).get("production")
        message = f"production is version {served}" if served else "no production version yet"
        status["conditions"] = conditions.set_condition(status.get("conditions"), "Ready", True, "Reconciled",
                                                        message, generation)
    return status


def commit_version(namespace: str, name: str, version: int, card: dict, uri: str) -> dict:
    """Register a finished version, promote it if the policy says so, settle; returns the version entry."""

    def change(status, obj):
        status = registry.commit(status, version, card, uri, conditions.now())
        status, promoted = registry.promote(obj.get("spec") or {}, status, version)
        status = settle(obj, status)
        entry = dict(registry.find(status, version))
        entry["promoted"] = promoted
        return status, entry

    return kube.update_status(MODELS, namespace, name, change)


def reconcile(model: dict, cfg: Settings) -> list[tuple[str, str, str]]:
    """One pass over a Model; returns events (type, reason, message) to post."""
    meta = model["metadata"]
    ns, name = meta["namespace"], meta["name"]
    events: list[tuple[str, str, str]] = []
    status = model.get("status") or {}
    store = storage_of(model, cfg)

    if not status.get("versions") and not status.get("latestVersion"):
        found = artifacts.list_cards(store, name)
        if found:
            rebuilt = registry.rebuild(model.get("spec") or {}, found, conditions.now())

            def adopt(current, obj):
                if current.get("versions"):
                    return current, False  # someone registered meanwhile: storage rebuild not needed
                return settle(obj, {**current, **rebuilt}), True

            if kube.update_status(MODELS, ns, name, adopt):
                events.append(("Normal", "Rebuilt", f"rebuilt {len(found)} versions from {store}/{name}"))

    for i, entry in enumerate((model.get("spec") or {}).get("versions") or []):
        events += _external(model, i, entry, store)

    kube.update_status(MODELS, ns, name, lambda st, obj: (settle(obj, st), None))
    return events


def _external(model: dict, index: int, entry: dict, store: str) -> list[tuple[str, str, str]]:
    meta = model["metadata"]
    ns, name = meta["namespace"], meta["name"]
    run = f"external/{entry['sha256'][:16]}-{checksums.sha256_bytes(entry['uri'].encode())[:8]}"
    existing = next((v for v in (model.get("status") or {}).get("versions", []) if v.get("run") == run), None)
    if existing and existing["state"] != "Pending":
        return []
    version = kube.update_status(MODELS, ns, name,
                                 lambda st, obj: registry.reserve(st, run, None, conditions.now()))
    prefix = storage.version_prefix(store, name, version)
    field = f"spec.versions[{index}]"
    try:
        card = artifacts.import_external(entry, prefix, name, version, conditions.now())
    except Exception as exc:  # noqa: BLE001 - any failure is reported on the Model, naming the entry
        reason = f"{field}: {exc}"
        kube.update_status(MODELS, ns, name, lambda st, obj: (registry.fail(st, version, reason), None))
        return [("Warning", "ExternalVersionRejected", reason)]
    entry_out = commit_version(ns, name, version, card, prefix)
    return [("Normal", "Registered", f"external artifact {entry['uri']} registered as version {version}"
             + (" and promoted to production" if entry_out.get("promoted") else ""))]


def delete_artifacts(model: dict, cfg: Settings) -> int:
    return artifacts.delete_prefix(f"{storage_of(model, cfg).rstrip('/')}/{model['metadata']['name']}")
