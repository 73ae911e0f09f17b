"""Kiln Deployment reconciliation: follow the model, roll out or canary, autoscale, report.

Traffic split: every serving pod of a Kiln Deployment carries kiln.dev/deployment=<name> and
sits behind one Service, so a canary's share of traffic is its share of ready replicas
(status.canaryWeight reports the ratio actually running).
"""

from __future__ import annotations

import time
import urllib.request

from kiln_contract import spec as specs
from kiln_operator import (
    artifacts,
    conditions,
    deployment_builder,
    drift,
    images,
    kube,
    labels,
    serving_metrics,
    serving_state,
)
from kiln_operator.settings import Settings

Events = list[tuple[str, str, str]]
ROLLOUT_DEADLINE = 180.0  # seconds a new version may take to become ready before it is rolled back


def resolve(spec: dict, model: dict | None) -> tuple[dict | None, str]:
    """The Model version entry to serve, or (None, why)."""
    ref = spec["model"]
    if model is None:
        return None, f'spec.model.name: Model "{ref["name"]}" does not exist'
    status = model.get("status") or {}
    if ref.get("version"):
        number = int(ref["version"])
    else:
        alias = ref.get("alias") or "production"
        number = (status.get("aliases") or {}).get(alias)
        if number is None:
            return None, f'spec.model.alias: Model "{ref["name"]}" has no version with alias "{alias}" yet'
    entry = next((v for v in status.get("versions", []) if v["version"] == number), None)
    if entry is None or entry["state"] not in ("Registered", "Archived"):
        state = entry["state"] if entry else "not registered"
        return None, f"spec.model: version {number} of {ref['name']} is {state}"
    return entry, ""


def _pods(ns: str, name: str) -> list[dict]:
    return [kube.to_dict(p) for p in kube.core().list_namespaced_pod(
        ns, label_selector=f"{deployment_builder.DEPLOYMENT}={name}").items]


def ready_pods(pods: list[dict]) -> list[dict]:
    def ready(p):
        st = p.get("status") or {}
        return (not p["metadata"].get("deletionTimestamp") and st.get("podIP")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in st.get("conditions") or []))

    return [p for p in pods if ready(p)]


def scrape(pod: dict) -> str | None:
    """A serving pod's /metrics text, or None when it cannot be read this round."""
    url = f"http://{pod['status']['podIP']}:{deployment_builder.PORT}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=1.5) as resp:
            return resp.read().decode()
    except Exception:  # noqa: BLE001 - a pod that cannot be scraped contributes nothing this round
        return None


def _version(pod: dict) -> int:
    return int(pod["metadata"]["labels"][labels.VERSION])


def observe(state: serving_state.ServingState, pods: list[dict], now: float) -> dict[int, serving_metrics.Sample]:
    """Scrape ready pods; feed the autoscaler; return this round's per-version deltas."""
    per_version: dict[int, serving_metrics.Sample] = {}
    total = serving_metrics.Sample()
    seen = {}
    state.texts = {}
    for pod in pods:
        text = scrape(pod)
        if text is None:
            continue
        sample = serving_metrics.parse(text)
        name = pod["metadata"]["name"]
        seen[name] = sample
        state.texts[name] = (_version(pod), text)
        d = serving_metrics.delta(sample, state.last.get(name))
        per_version[_version(pod)] = per_version.get(_version(pod), serving_metrics.Sample()) + d
        total = total + d
    elapsed = now - state.last_time if state.last_time else None
    state.last, state.last_time = seen, now
    if elapsed and elapsed > 0:
        state.autoscaler.observe(now, total.seconds / elapsed, total.total / elapsed)
    return per_version


def _server_deployments(ns: str, name: str) -> dict[int, dict]:
    found = kube.list_objects("apps/v1", "Deployment", ns, f"{deployment_builder.DEPLOYMENT}={name}")
    return {int(d["metadata"]["labels"][labels.VERSION]): d for d in found}


def _ready(dep: dict | None) -> int:
    return int(((dep or {}).get("status") or {}).get("readyReplicas") or 0)


def reconcile(dep: dict, cfg: Settings, now: float | None = None) -> tuple[dict, Events]:
    now = time.time() if now is None else now
    meta, status = dep["metadata"], dict(dep.get("status") or {})
    ns, name, gen = meta["namespace"], meta["name"], meta["generation"]
    spec = specs.validate("Deployment", dep["spec"])
    dep = {**dep, "spec": spec}
    events: Events = []
    conds = status.get("conditions")

    def cond(kind, value, reason, message):
        nonlocal conds
        conds = conditions.set_condition(conds, kind, value, reason, message, gen)

    model = kube.get_custom("models", ns, spec["model"]["name"])
    target, why = resolve(spec, model)
    try:
        image = images.choose(spec.get("image"), cfg.server_image, cfg.allowed_images, "spec.image")
        if target is not None:
            deployment_builder.runtime_for(spec, target)
    except ValueError as exc:
        target, why = None, str(exc)

    kube.ensure(deployment_builder.build_service(dep))
    servers = _server_deployments(ns, name)
    state = serving_state.get(ns, name)
    pods = _pods(ns, name)
    per_version = observe(state, ready_pods(pods), now)
    autoscaled = (spec.get("autoscaling") or {}).get("metric", "concurrency") != "cpu"
    current = sum(int((d.get("spec") or {}).get("replicas") or 0) for d in servers.values())
    desired = state.autoscaler.desired(now, current, spec) if autoscaled else None
    if state.wake:
        desired, state.wake = max(desired or 0, 1), False

    serving = status.get("servingVersion")
    canary = status.get("canaryVersion")
    rolling = status.get("rollingTo")
    # A version that failed its rollout is not retried until the spec changes.
    failed = list(status.get("failedVersions") or []) if status.get("failedGeneration") == gen else []
    if target is None:
        cond("Ready", bool(serving), "ModelNotReady" if not serving else "Serving", why)
    elif serving is None:
        serving = target["version"]
        events.append(("Normal", "RollingOut", f"serving version {serving}"))
    elif target["version"] not in (serving, canary, rolling) and target["version"] not in failed:
        if (spec.get("rollout") or {}).get("strategy") == "canary":
            canary = target["version"]
            status.update(canaryStep=0, canaryStepStarted=now)
            state.canary_base = None
            events.append(("Normal", "CanaryStarted", f"canary of version {canary} at "
                           f"{spec['rollout']['steps'][0]}%"))
        else:
            rolling = target["version"]
            status["rollingStarted"] = now
            events.append(("Normal", "RollingOut", f"rolling out version {rolling} to replace {serving}"))

    entries = {v["version"]: v for v in ((model or {}).get("status") or {}).get("versions", [])}
    total = desired if desired is not None else max(1, current or 1)
    wanted: dict[int, tuple[str, int]] = {}
    if canary:
        steps = spec["rollout"]["steps"]
        step = min(int(status.get("canaryStep", 0)), len(steps) - 1)
        stable_n, canary_n = deployment_builder.canary_split(total, steps[step])
        wanted[serving] = ("stable", stable_n)
        wanted[canary] = ("canary", canary_n)
    elif serving:
        wanted[serving] = ("stable", total)
    if rolling:
        wanted[rolling] = ("stable", max(total, 1))

    for version, (track, replicas) in wanted.items():
        entry = entries.get(version)
        if entry is None or replicas is None:
            continue
        manifest = deployment_builder.build_server(dep, entry, track=track, replicas=replicas, image=image,
                                                    s3_secret=cfg.s3_secret)
        servers[version] = kube.ensure(manifest, ignore=() if autoscaled else ("replicas",))

    # a rolling update finishes when the new version is ready, then the old one goes
    if rolling:
        if _ready(servers.get(rolling)) >= max(1, min(total, 1)):
            events.append(("Normal", "RolledOut", f"version {rolling} serves; version {serving} removed"))
            serving, rolling = rolling, None
            cond("Degraded", False, "RolledOut", f"version {serving} rolled out")
        elif now - float(status.get("rollingStarted") or now) > ROLLOUT_DEADLINE:
            failed.append(rolling)
            msg = f"version {rolling} did not become ready within {ROLLOUT_DEADLINE:.0f}s; kept {serving}"
            cond("Degraded", True, "RolloutFailed", msg)
            events.append(("Warning", "RolloutFailed", msg))
            rolling = None

    if canary:
        canary, serving, verdict = _analyse(spec, status, state, per_version, servers, serving, canary, now)
        if verdict:
            kind, reason, message = verdict
            events.append((kind, reason, message))
            if reason == "CanaryFailed":
                failed.append(status["canaryVersion"])
                cond("Degraded", True, reason, message)
            elif reason == "CanaryPromoted":
                cond("Degraded", False, reason, message)

    keep = {v for v in (serving, canary, rolling) if v}
    for version, obj in list(servers.items()):
        if version not in keep:
            kube.delete("apps/v1", "Deployment", ns, obj["metadata"]["name"])
            servers.pop(version)

    if not autoscaled and serving in servers:
        kube.ensure(deployment_builder.build_hpa(dep, servers[serving]["metadata"]["name"], kube.preferred(
            "autoscaling", ("autoscaling/v2", "autoscaling/v2beta2"))))
    if int((spec.get("replicas") or {}).get("min", 1)) >= 2:
        kube.ensure(deployment_builder.build_pdb(dep, kube.preferred("policy", ("policy/v1", "policy/v1beta1"))))

    drift_scores = _check_drift(spec, state, serving, entries, now, cond, events, ns)

    ready = sum(_ready(d) for d in servers.values())
    replicas = sum(int((d.get("spec") or {}).get("replicas") or 0) for d in servers.values())
    if target is not None or serving:
        if replicas == 0 and serving:
            cond("Ready", True, "ScaledToZero", "no replicas; the first request wakes the model")
        elif ready:
            cond("Ready", True, "Serving", f"version {serving} serving on {ready} ready replicas")
        else:
            cond("Ready", False, "Starting", f"waiting for version {serving} to become ready")
    progressing = bool(canary or rolling) or (replicas > ready)
    cond("Progressing", progressing, "Progressing" if progressing else "Stable",
         f"canary {canary} at step {status.get('canaryStep', 0)}" if canary else
         f"rolling to {rolling}" if rolling else f"{ready}/{replicas} ready")
    if not any(c["type"] == "Degraded" for c in conds or []):
        cond("Degraded", False, "Healthy", "no failed rollout")

    canary_ready = _ready(servers.get(canary)) if canary else 0
    patch = {
        "observedGeneration": gen, "servingVersion": serving, "canaryVersion": canary, "rollingTo": rolling,
        "canaryWeight": round(100 * canary_ready / ready) if canary and ready else (0 if canary else None),
        "canaryStep": status.get("canaryStep") if canary else None,
        "canaryStepStarted": status.get("canaryStepStarted") if canary else None,
        "rollingStarted": status.get("rollingStarted") if rolling else None,
        "failedVersions": failed or None, "failedGeneration": gen if failed else None,
        "replicas": replicas, "readyReplicas": ready,
        "desiredReplicas": desired, "url": f"http://{name}.{ns}.svc/v2/models/{spec['model']['name']}",
        "conditions": conds,
    }
    if drift_scores is not None:
        patch["driftScores"] = drift_scores
    return patch, events


def _check_drift(spec, state, serving, entries, now, cond, events, ns) -> dict | None:
    """Every drift.interval seconds: PSI of the serving version's live inputs vs its training data."""
    cfg = (spec.get("monitoring") or {}).get("drift") or {}
    if not cfg.get("enabled") or not serving or serving not in entries:
        return None
    if now - state.drift_checked < cfg.get("interval", 60):
        return None
    state.drift_checked = now
    if serving not in state.cards:
        state.cards[serving] = artifacts.read_card(entries[serving]["uri"]) or {}
    distributions = (state.cards[serving].get("features") or {}).get("distributions") or {}
    live: dict = {}
    for version, text in state.texts.values():
        if version == serving:
            live = drift.merge(live, drift.live_histograms(text))
    drifted, scores = drift.assess(distributions, live, cfg.get("threshold", 0.2), cfg.get("minSamples", 100))
    if drifted is None:
        cond("Drifted", "Unknown", "InsufficientData",
             f"fewer than {cfg.get('minSamples', 100)} live values per feature so far")
    elif not drifted:
        cond("Drifted", False, "NoDrift", f"every feature's PSI is at most {cfg.get('threshold', 0.2)}")
    else:
        worst = sorted(((v, f) for f, v in scores.items() if v > cfg.get("threshold", 0.2)), reverse=True)
        message = "; ".join(f"{f} PSI {v:.2f}" for v, f in worst[:5]) + f" > {cfg.get('threshold', 0.2)}"
        if not state.drifted:
            events.append(("Warning", "Drifted", f"input drift on version {serving}: {message}"))
            if cfg.get("retrain"):
                events.append(_request_retrain(ns, cfg["retrain"], serving))
        cond("Drifted", True, "FeatureDrift", message)
    state.drifted = bool(drifted)
    return scores


def _request_retrain(ns: str, training_job: str, version: int) -> tuple[str, str, str]:
    """Annotate the TrainingJob; a new annotation value makes it start a new run."""
    stamp = conditions.now()
    try:
        kube.custom().patch_namespaced_custom_object(
            "kiln.dev", "v1alpha1", ns, "trainingjobs", training_job,
            {"metadata": {"annotations": {labels.RETRAIN: stamp}}})
    except Exception as exc:  # noqa: BLE001 - reported as an event, the drift stays reported
        return ("Warning", "RetrainFailed", f"spec.monitoring.drift.retrain: {training_job}: {exc}")
    return ("Normal", "RetrainRequested", f"TrainingJob {training_job} asked to retrain (drift on version {version})")



def _analyse(spec, status, state, per_version, servers, serving, canary, now):
    """One canary step: gate on the canary pods' error rate and p99; advance, promote or roll back."""
    rollout = spec["rollout"]
    steps = rollout["steps"]
    step = int(status.get("canaryStep", 0))
    d = per_version.get(canary)
    if d is not None:
        state.canary_base = d if state.canary_base is None else state.canary_base + d
    seen = state.canary_base or serving_metrics.Sample()
    err = serving_metrics.error_rate(seen)
    p99 = serving_metrics.quantile(seen, 0.99)
    if seen.total and err > rollout["maxErrorRate"]:
        msg = (f"canary version {canary} rolled back at {steps[step]}%: error rate {err:.1%} "
               f"> maxErrorRate {rollout['maxErrorRate']:.1%}")
        return None, serving, ("Warning", "CanaryFailed", msg)
    if p99 is not None and seen.total >= 20 and p99 * 1000 > rollout["maxP99LatencyMs"]:
        msg = (f"canary version {canary} rolled back at {steps[step]}%: p99 latency {p99 * 1000:.0f}ms "
               f"> maxP99LatencyMs {rollout['maxP99LatencyMs']:.0f}")
        return None, serving, ("Warning", "CanaryFailed", msg)
    started = float(status.get("canaryStepStarted") or now)
    if now - started < rollout["interval"]:
        return canary, serving, None
    if _ready(servers.get(canary)) == 0:
        msg = f"canary version {canary} never became ready within {rollout['interval']}s"
        return None, serving, ("Warning", "CanaryFailed", msg)
    if step + 1 >= len(steps):
        return None, canary, ("Normal", "CanaryPromoted",
                              f"canary version {canary} passed every step and now serves all traffic")
    status["canaryStep"], status["canaryStepStarted"] = step + 1, now
    state.canary_base = None
    return canary, serving, ("Normal", "CanaryStep", f"canary version {canary} at {steps[step + 1]}%")
