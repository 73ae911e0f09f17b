"""The one writer of Model status: reservations, commits, failures and the Model's own reconcile.

Every write is a read-modify-write with optimistic concurrency that starts from the cached
Model (kube.update_status), applies a pure rule from registry.py, and settles aliases,
retention and conditions last.
"""

from __future__ import annotations

from kiln_contract import checksums, storage
from kiln_contract import spec as specs
from kiln_operator import artifacts, conditions, kube, operator_metrics, registry, tenancy
from kiln_operator.reconcile import Result, invalid_spec, refused
from kiln_operator.settings import Settings
from kiln_operator.world import ModelWorld

MODELS = "models"
FINALIZER = "kiln.dev/delete-artifacts"


def storage_of(model: dict, cfg: Settings) -> str:
    """spec.storage, else the operator's default per namespace (same-named Models never collide).

    Raises tenancy.NotAllowed (field spec.storage) when spec.storage is outside what the Model's namespace
    may use: everything the operator reads, writes or deletes for a Model lies under this prefix.
    """
    ns = model["metadata"]["namespace"]
    default = f"{cfg.storage.rstrip('/')}/{ns}"
    store = (model.get("spec") or {}).get("storage") or default
    if store != default:
        tenancy.within(store, tenancy.writable(ns, cfg.storage, cfg.storage_prefixes), "spec.storage")
    return store


def versions_in_use(model: str, users: list[dict]) -> set[int]:
    """Versions that Kiln Deployments pin or serve; retention never archives them."""
    used = set()
    for dep in users:
        ref = (dep.get("spec") or {}).get("model") or {}
        if ref.get("name") != model:
            continue
        if ref.get("version"):
            used.add(int(ref["version"]))
        for key in ("servingVersion", "canaryVersion", "rollingTo"):
            if (dep.get("status") or {}).get(key):
                used.add(int(dep["status"][key]))
    return used


def settle(model: dict, status: dict, users: list[dict]) -> dict:
    """Aliases, retention and conditions: what every writer of Model status applies last."""
    spec = model.get("spec") or {}
    meta = model["metadata"]
    status, problems = registry.resolve_aliases(spec, status)
    status = registry.apply_retention(spec, status, versions_in_use(meta["name"], users))
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
    status["conditions"] = _metric_condition(spec, status, generation)
    return status


def _metric_condition(spec: dict, status: dict, generation: int | None) -> list[dict]:
    """PromotionMetricValid, for auto promotion once a version says its task: False (and the task's default
    decides) when promotion.metric is not one the task computes."""
    current = [c for c in status.get("conditions") or [] if c.get("type") != "PromotionMetricValid"]
    task = next((v.get("task") for v in reversed(status.get("versions") or []) if v.get("task")), None)
    if (spec.get("promotion") or {}).get("policy") != "auto" or task is None:
        return current
    metric, _, problem = registry.promotion_metric(spec, task)
    if problem:
        return conditions.set_condition(status.get("conditions"), "PromotionMetricValid", False,
                                        "MetricNotForTask", f"spec.promotion.metric: {problem}", generation)
    return conditions.set_condition(status.get("conditions"), "PromotionMetricValid", True, "MetricFound",
                                    f"{task} versions are compared by {metric}", generation)


def _write(model: dict, change, written: list[dict]):
    meta = model["metadata"]
    result, obj = kube.update_status(MODELS, meta["namespace"], meta["name"], change, current=model)
    if obj is not None:
        written.append(obj)
    return result


def reserve(model: dict, store: str, run: str, training_job: str | None, users: list[dict],
            written: list[dict]) -> int:
    """A version number for run, the same one however often it is asked (registry.reserve).

    The write settles the Model too, so a new Model's first run costs one status write, not two.
    """

    def change(status, obj):
        status, version = registry.reserve(status, run, training_job, conditions.now())
        return settle(obj, status, users), version

    version = _write(model, change, written)
    artifacts.STORED.note(store, model["metadata"]["name"])  # its directory exists from now on
    return version


def commit_version(model: dict, version: int, stored: artifacts.StoredCard, uri: str, users: list[dict],
                   written: list[dict]) -> dict:
    """Register a finished version, promote it if the policy says so, settle; returns the version entry."""

    def change(status, obj):
        before = registry.find(status, version)
        fresh = before is None or before.get("state") not in registry.COMMITTED
        status = registry.commit(status, version, stored.card, uri, conditions.now(), stored.sha256)
        status, promoted = registry.promote(obj.get("spec") or {}, status, version)
        status = settle(obj, status, users)
        entry = dict(registry.find(status, version))
        entry["promoted"], entry["fresh"] = promoted, fresh
        return status, entry

    entry = _write(model, change, written)
    if entry.get("fresh") and written:
        operator_metrics.VERSIONS.labels(state=entry["state"]).inc()
        if entry.get("promoted"):
            operator_metrics.PROMOTIONS.inc()
    return entry


def fail_version(model: dict, version: int, reason: str, users: list[dict], written: list[dict]) -> None:
    _write(model, lambda st, obj: (settle(obj, registry.fail(st, version, reason), users), None), written)


def reconcile(world: ModelWorld, cfg: Settings) -> Result:
    """One pass over a Model: its finalizer, rebuild from storage once, bring-your-own versions, then settle."""
    model = world.model
    out = Result()
    if _finalize(model, cfg, out):
        return out
    try:
        specs.validate("Model", model.get("spec") or {})
    except specs.SpecError as exc:
        out.status = invalid_spec("Model", model, exc)
        return out
    try:
        store = storage_of(model, cfg)
        _check_sources(model, cfg)
    except tenancy.NotAllowed as exc:
        out.status = refused("Model", model, "StorageNotAllowed", exc)
        return out
    if not world.storage_checked:
        adopt_storage(model, cfg, world.users, out)
    for i, entry in enumerate((model.get("spec") or {}).get("versions") or []):
        current = out.written[-1] if out.written else model
        _external(current, i, entry, store, world, out)
    current = out.written[-1] if out.written else model
    back = _wanted_from_history(current, store, world.users)
    _write(current, lambda st, obj: (settle(obj, registry.restored(st, back), world.users), None), out.written)
    _move_to_history(out.written[-1] if out.written else current, store, cfg, world.users, out)
    out.acted = bool(out.written)
    return out


def _wanted_from_history(model: dict, store: str, users: list[dict]) -> list[dict]:
    """Entries the history index holds that status needs again: an alias pins them or a Deployment uses them."""
    status = model.get("status") or {}
    history = status.get("history") or {}
    if not history.get("count"):
        return []
    pins = set(((model.get("spec") or {}).get("aliases") or {}).values())
    wanted = {n for n in pins | versions_in_use(model["metadata"]["name"], users) if n <= history.get("highest", 0)}
    missing = wanted - {v["version"] for v in status.get("versions") or []}
    return list(artifacts.read_history(store, model["metadata"]["name"], missing).values()) if missing else []


def _move_to_history(model: dict, store: str, cfg: Settings, users: list[dict], out: Result,
                     slack: int | None = None) -> None:
    """Keep status small: entries beyond the newest cfg.status_versions go to the storage index first,
    then leave status (never Pending ones, nor what an alias or a Deployment uses)."""
    status = model.get("status") or {}
    in_use = versions_in_use(model["metadata"]["name"], users)
    moved = registry.to_history(status, cfg.status_versions, registry.protected_versions(status, in_use), slack)
    if not moved:
        return
    history = artifacts.write_history(store, model["metadata"]["name"], moved, status.get("history"))

    def change(current, obj):
        still_free = [v for v in moved if v["version"] not in registry.protected_versions(current, in_use)]
        return registry.moved_out(current, still_free, **history), None

    _write(model, change, out.written)


def adopt_storage(model: dict, cfg: Settings, users: list[dict], out: Result) -> None:
    """Once per Model and operator start: a Model without versions adopts those its storage holds.

    Before its first reservation too (trainingjobs.start), or a cluster rebuilt from Git would
    number a new run 1 and write over the artifacts of the old version 1.
    """
    out.storage_checked = model["metadata"]["uid"]
    status = model.get("status") or {}
    store = storage_of(model, cfg)
    if not status.get("versions") and not status.get("latestVersion") and \
            artifacts.STORED.holds(store, model["metadata"]["name"]):
        _rebuild(model, store, users, out, cfg)


def _rebuild(model: dict, store: str, users: list[dict], out: Result, cfg: Settings) -> None:
    """Status from storage: the history index as recorded, plus the cards of versions it does not hold."""
    name = model["metadata"]["name"]
    history = artifacts.read_history(store, name)
    found = artifacts.list_cards(store, name, skip=set(history))
    if not found and not history:
        return
    rebuilt = registry.rebuild(model.get("spec") or {},
                               {v: (uri, s.card, s.sha256) for v, (uri, s) in found.items()}, conditions.now(),
                               history)
    # Only what status keeps is written to the API server: thousands of versions would exceed its size limit.
    in_use = versions_in_use(name, users)
    moved = registry.to_history(rebuilt, cfg.status_versions, registry.protected_versions(rebuilt, in_use), 0)
    if moved:
        index = artifacts.write_history(store, name, moved, {"uri": artifacts.history_uri(store, name),
                                                               "count": len(history),
                                                               "highest": max(history, default=0)})
        rebuilt = registry.moved_out(rebuilt, moved, **index)

    def adopt(current, obj):
        if current.get("versions"):
            return current, False  # someone registered meanwhile: no rebuild needed
        return settle(obj, {**current, **rebuilt}, users), True

    if _write(model, adopt, out.written):
        out.events.append(("Normal", "Rebuilt", f"rebuilt {len(found) + len(history)} versions from {store}/{name}"))


def _check_sources(model: dict, cfg: Settings) -> None:
    """Every s3:// bring-your-own artifact must be readable by the Model's namespace, before any is imported."""
    readable = tenancy.readable(model["metadata"]["namespace"], cfg.storage, cfg.storage_prefixes, cfg.read_prefixes)
    for i, entry in enumerate((model.get("spec") or {}).get("versions") or []):
        if str(entry.get("uri", "")).startswith("s3:"):
            tenancy.within(entry["uri"], readable, f"spec.versions[{i}].uri")


def _external(model: dict, index: int, entry: dict, store: str, world: ModelWorld, out: Result) -> None:
    """One bring-your-own entry: imported once; an https one only after kiln_operator.downloads fetched it."""
    name, users = model["metadata"]["name"], world.users
    run = f"external/{entry['sha256'][:16]}-{checksums.sha256_bytes(entry['uri'].encode())[:8]}"
    existing = next((v for v in (model.get("status") or {}).get("versions", []) if v.get("run") == run), None)
    if existing and existing["state"] != "Pending":
        return
    field = f"spec.versions[{index}]"
    problem, downloaded = None, None
    try:
        artifacts.external_format(entry)
    except ValueError as exc:
        problem = str(exc)
    if problem is None and entry["uri"].startswith("https:"):
        got = world.downloads.get((entry["uri"], entry["sha256"].lower()))
        if got is None:  # not fetched yet: no version is reserved for a download that may never end
            out.downloads.append((entry["uri"], entry["sha256"]))
            return
        out.downloaded.append((entry["uri"], entry["sha256"]))
        problem, downloaded = got.error, got.path
    version = reserve(model, store, run, None, users, out.written)
    current = out.written[-1] if out.written else model
    prefix = storage.version_prefix(store, name, version)
    try:
        if problem:
            raise ValueError(problem)
        stored = artifacts.import_external(entry, prefix, name, version, conditions.now(), downloaded)
    except Exception as exc:  # noqa: BLE001 - any failure is reported on the Model, naming the entry
        reason = f"{field}: {exc}"
        fail_version(current, version, reason, users, out.written)
        out.events.append(("Warning", "ExternalVersionRejected", reason))
        return
    entry_out = commit_version(current, version, stored, prefix, users, out.written)
    out.events.append(("Normal", "Registered", f"external artifact {entry['uri']} registered as version {version}"
                       + (" and promoted to production" if entry_out.get("promoted") else "")))


def delete_artifacts(model: dict, cfg: Settings) -> int:
    return artifacts.delete_prefix(f"{storage_of(model, cfg).rstrip('/')}/{model['metadata']['name']}")


def _finalize(model: dict, cfg: Settings, out: Result) -> bool:
    """spec.deleteArtifacts: a finalizer while the Model lives; its artifacts deleted before it goes.

    Returns True when the Model is being deleted (nothing else to do for it).
    """
    meta = model["metadata"]
    finalizers = list(meta.get("finalizers") or [])
    wanted = bool((model.get("spec") or {}).get("deleteArtifacts"))
    if meta.get("deletionTimestamp"):
        if FINALIZER in finalizers:
            try:
                removed = delete_artifacts(model, cfg)
            except tenancy.NotAllowed as exc:
                # Nothing outside the namespace's storage is deleted; the Model still goes.
                out.events.append(("Warning", "StorageNotAllowed", f"artifacts not deleted: {exc}"))
            else:
                out.events.append(("Normal", "ArtifactsDeleted",
                                   f"deleted {removed} artifact objects of {meta['name']}"))
            out.written.append(kube.set_finalizers(MODELS, meta["namespace"], meta["name"],
                                                   [f for f in finalizers if f != FINALIZER], meta["resourceVersion"]))
            out.acted = True
        return True
    if wanted != (FINALIZER in finalizers):
        changed = finalizers + [FINALIZER] if wanted else [f for f in finalizers if f != FINALIZER]
        out.written.append(kube.set_finalizers(MODELS, meta["namespace"], meta["name"], changed,
                                               meta["resourceVersion"]))
        out.acted = True
    return False
