"""What a Kiln Deployment should look like now: a pure function of the object and the observed world.

Inputs: the Deployment, its Model, the observed server Deployments (ready counts), the
autoscaler's answer, a wake request, the canary's metrics since its step began, and the
latest drift assessment. Output: the server Deployments wanted (version → track, replicas),
whether an HPA and a PDB are wanted, the new status, events, and when to look again.
Table-tested in tests/unit/test_serving_decide.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln_operator import conditions, deployment_builder, images, serving_metrics
from kiln_operator.settings import Settings

ROLLOUT_DEADLINE = 180.0  # seconds a new version may take to become ready before it is rolled back
Events = list[tuple[str, str, str]]


@dataclass
class Observed:
    dep: dict  # with a validated spec
    model: dict | None
    ready: dict[int, int]  # version -> ready replicas of its server Deployment
    replicas: dict[int, int]  # version -> spec.replicas of its server Deployment
    desired: int | None  # the autoscaler's replica count; None when an HPA scales (metric: cpu)
    now: float
    wake: bool = False
    canary: serving_metrics.Sample | None = None  # the canary pods' requests since the step began
    drift: tuple[bool | None, dict] | None = None  # (drifted, PSI by feature) of the serving version
    conflicts: list[str] = field(default_factory=list)  # children that exist and are not ours


@dataclass
class Plan:
    servers: dict[int, tuple[str, int | None]]  # version -> (track, replicas; None: the HPA owns replicas)
    entries: dict[int, dict]  # version -> Model version entry, for building the servers
    image: str | None
    hpa_for: int | None  # version whose server the HPA scales
    pdb: bool
    status: dict
    events: Events
    reset_canary: bool = False
    requeue_after: float | None = None
    retrain: str | None = None  # TrainingJob to ask for a new run (drift)


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


class _Status:
    """The status being decided, with its conditions."""

    def __init__(self, status: dict, generation: int):
        self.s = dict(status)
        self.gen = generation
        self.conds = status.get("conditions")
        self.events: Events = []

    def cond(self, kind: str, value, reason: str, message: str) -> None:
        self.conds = conditions.set_condition(self.conds, kind, value, reason, message, self.gen)

    def has(self, kind: str) -> bool:
        return any(c["type"] == kind for c in self.conds or [])

    def is_true(self, kind: str) -> bool:
        return any(c["type"] == kind and c["status"] == "True" for c in self.conds or [])


def _target(spec: dict, model: dict | None, cfg: Settings) -> tuple[dict | None, str | None, str]:
    target, why = resolve(spec, model)
    try:
        image = images.choose(spec.get("image"), cfg.server_image, cfg.allowed_images, "spec.image")
        if target is not None:
            deployment_builder.runtime_for(spec, target)
    except ValueError as exc:
        return None, None, str(exc)
    return target, image, why


def decide(o: Observed, cfg: Settings) -> Plan:
    spec, meta = o.dep["spec"], o.dep["metadata"]
    st = _Status(o.dep.get("status") or {}, meta["generation"])
    target, image, why = _target(spec, o.model, cfg)
    autoscaled = (spec.get("autoscaling") or {}).get("metric", "concurrency") != "cpu"
    current = sum(o.replicas.values())
    desired = o.desired if autoscaled else None
    if o.wake and autoscaled:
        desired = max(desired or 0, 1)
    serving, canary, rolling = st.s.get("servingVersion"), st.s.get("canaryVersion"), st.s.get("rollingTo")
    # A version that failed its rollout is not retried until the spec changes.
    failed = list(st.s.get("failedVersions") or []) if st.s.get("failedGeneration") == st.gen else []
    reset = False
    if target is None:
        st.cond("Ready", bool(serving), "ModelNotReady" if not serving else "Serving", why)
    elif serving is None:
        serving = target["version"]
        st.events.append(("Normal", "RollingOut", f"serving version {serving}"))
    elif target["version"] not in (serving, canary, rolling) and target["version"] not in failed:
        if (spec.get("rollout") or {}).get("strategy") == "canary":
            canary, reset = target["version"], True
            st.s.update(canaryStep=0, canaryStepStarted=o.now)
            st.events.append(("Normal", "CanaryStarted", f"canary of version {canary} at "
                              f"{spec['rollout']['steps'][0]}%"))
        else:
            rolling = target["version"]
            st.s["rollingStarted"] = o.now
            st.events.append(("Normal", "RollingOut", f"rolling out version {rolling} to replace {serving}"))

    total = desired if desired is not None else max(1, current or 1)
    requeue: list[float] = []
    if rolling:
        serving, rolling = _roll(o, st, serving, rolling, total if autoscaled else None, failed, requeue)
    if canary:
        canary, serving, reset_step = _canary(o, spec, st, serving, canary, failed, requeue)
        reset = reset or reset_step
    keep = {v for v in (serving, canary, rolling) if v}
    wanted = _wanted(spec, st, serving, canary, rolling, total, autoscaled)
    retrain = _drift(spec, st, serving, o.drift)
    _report(o, st, target, serving, canary, rolling, wanted)
    entries = {v["version"]: v for v in ((o.model or {}).get("status") or {}).get("versions", [])}
    ready = sum(o.ready.get(v, 0) for v in keep)
    canary_ready = o.ready.get(canary, 0) if canary else 0
    status = {
        "observedGeneration": st.gen, "servingVersion": serving, "canaryVersion": canary, "rollingTo": rolling,
        "canaryWeight": round(100 * canary_ready / ready) if canary and ready else (0 if canary else None),
        "canaryStep": st.s.get("canaryStep") if canary else None,
        "canaryStepStarted": st.s.get("canaryStepStarted") if canary else None,
        "rollingStarted": st.s.get("rollingStarted") if rolling else None,
        "failedVersions": failed or None, "failedGeneration": st.gen if failed else None,
        "replicas": sum(o.replicas.get(v, 0) for v in keep), "readyReplicas": ready,
        "desiredReplicas": desired, "url": f"http://{meta['name']}.{meta['namespace']}.svc/v2/models/"
                                           f"{spec['model']['name']}",
        "conditions": st.conds,
    }
    if o.drift is not None and serving:
        status["driftScores"] = {k: round(v, 3) for k, v in o.drift[1].items()}
    return Plan(servers={v: w for v, w in wanted.items() if v in entries}, entries=entries, image=image,
                hpa_for=serving if not autoscaled and serving in entries else None,
                pdb=int((spec.get("replicas") or {}).get("min", 1)) >= 2, status=status, events=st.events,
                reset_canary=reset, requeue_after=min(requeue) if requeue else None, retrain=retrain)


def _wanted(spec, st, serving, canary, rolling, total, autoscaled) -> dict[int, tuple[str, int | None]]:
    wanted: dict[int, tuple[str, int | None]] = {}
    if canary:
        steps = spec["rollout"]["steps"]
        step = min(int(st.s.get("canaryStep", 0)), len(steps) - 1)
        stable_n, canary_n = deployment_builder.canary_split(total, steps[step])
        wanted[serving] = ("stable", stable_n)
        wanted[canary] = ("canary", canary_n)
    elif serving:
        wanted[serving] = ("stable", total if autoscaled else None)
    if rolling:
        wanted[rolling] = ("stable", max(total, 1) if autoscaled else None)
    return wanted


def _roll(o: Observed, st: _Status, serving, rolling, full: int | None, failed, requeue):
    """A rolling update ends when the new version has its full replica count ready; only then the old one goes."""
    if full is None:  # an HPA scales it: its minimum is the full count at first
        full = max(1, int((o.dep["spec"].get("replicas") or {}).get("min", 1)))
    if o.ready.get(rolling, 0) >= max(1, full):
        st.events.append(("Normal", "RolledOut", f"version {rolling} serves; version {serving} removed"))
        st.cond("Degraded", False, "RolledOut", f"version {rolling} rolled out")
        return rolling, None
    elapsed = o.now - float(st.s.get("rollingStarted") or o.now)
    if elapsed > ROLLOUT_DEADLINE:
        failed.append(rolling)
        msg = f"version {rolling} did not become ready within {ROLLOUT_DEADLINE:.0f}s; kept {serving}"
        st.cond("Degraded", True, "RolloutFailed", msg)
        st.events.append(("Warning", "RolloutFailed", msg))
        return serving, None
    requeue.append(ROLLOUT_DEADLINE - elapsed + 0.5)
    return serving, rolling


def _canary(o: Observed, spec, st: _Status, serving, canary, failed, requeue):
    """One canary step: gate on the canary pods' error rate and p99; advance, promote or roll back."""
    rollout = spec["rollout"]
    steps = rollout["steps"]
    step = int(st.s.get("canaryStep", 0))
    seen = o.canary or serving_metrics.Sample()
    err = serving_metrics.error_rate(seen)
    p99 = serving_metrics.quantile(seen, 0.99)
    verdict = None
    if seen.total and err > rollout["maxErrorRate"]:
        verdict = (f"canary version {canary} rolled back at {steps[step]}%: error rate {err:.1%} "
                   f"> maxErrorRate {rollout['maxErrorRate']:.1%}")
    elif p99 is not None and seen.total >= 20 and p99 * 1000 > rollout["maxP99LatencyMs"]:
        verdict = (f"canary version {canary} rolled back at {steps[step]}%: p99 latency {p99 * 1000:.0f}ms "
                   f"> maxP99LatencyMs {rollout['maxP99LatencyMs']:.0f}")
    elapsed = o.now - float(st.s.get("canaryStepStarted") or o.now)
    if verdict is None and elapsed >= rollout["interval"] and o.ready.get(canary, 0) == 0:
        verdict = f"canary version {canary} never became ready within {rollout['interval']}s"
    if verdict:
        failed.append(canary)
        st.cond("Degraded", True, "CanaryFailed", verdict)
        st.events.append(("Warning", "CanaryFailed", verdict))
        return None, serving, True
    if elapsed < rollout["interval"]:
        requeue.append(rollout["interval"] - elapsed + 0.1)
        return canary, serving, False
    if step + 1 >= len(steps):
        msg = f"canary version {canary} passed every step and now serves all traffic"
        st.cond("Degraded", False, "CanaryPromoted", msg)
        st.events.append(("Normal", "CanaryPromoted", msg))
        return None, canary, True
    st.s["canaryStep"], st.s["canaryStepStarted"] = step + 1, o.now
    st.events.append(("Normal", "CanaryStep", f"canary version {canary} at {steps[step + 1]}%"))
    requeue.append(rollout["interval"] + 0.1)
    return canary, serving, True


def _drift(spec: dict, st: _Status, serving, drift) -> str | None:
    """Drifted condition from the latest assessment; returns the TrainingJob to retrain when drift begins."""
    cfg = (spec.get("monitoring") or {}).get("drift") or {}
    if not cfg.get("enabled") or not serving or drift is None:
        return None
    drifted, scores = drift
    threshold = cfg.get("threshold", 0.2)
    if drifted is None:
        st.cond("Drifted", "Unknown", "InsufficientData",
                f"fewer than {cfg.get('minSamples', 100)} live values per feature (and prediction) so far")
        return None
    if not drifted:
        st.cond("Drifted", False, "NoDrift", f"every feature's and the predictions' PSI is at most {threshold}")
        return None
    worst = sorted(((v, f) for f, v in scores.items() if v > threshold), reverse=True)
    message = "; ".join(f"{f} PSI {v:.2f}" for v, f in worst[:5]) + f" > {threshold}"
    # drift.OUTPUT ("output:label") scores the predictions; every other key is an input feature
    inputs = any(f != "output:label" for _, f in worst)
    already = st.is_true("Drifted")
    st.cond("Drifted", True, "FeatureDrift" if inputs else "PredictionDrift", message)
    if already:
        return None
    what = "input drift" if inputs else "prediction drift"
    st.events.append(("Warning", "Drifted", f"{what} on version {serving}: {message}"))
    return cfg.get("retrain")


def _report(o: Observed, st: _Status, target, serving, canary, rolling, wanted) -> None:
    ready = sum(o.ready.get(v, 0) for v in wanted)
    replicas = sum(o.replicas.get(v, 0) for v in wanted)
    asked = sum(1 if n is None else n for _, n in wanted.values())
    if o.conflicts:
        st.cond("Ready", False, "ChildConflict", "; ".join(o.conflicts))
    elif target is not None or serving:
        if replicas == 0 and asked == 0 and serving:
            st.cond("Ready", True, "ScaledToZero", "no replicas; the first request wakes the model")
        elif ready:
            st.cond("Ready", True, "Serving", f"version {serving} serving on {ready} ready replicas")
        else:
            st.cond("Ready", False, "Starting", f"waiting for version {serving} to become ready")
    progressing = bool(canary or rolling) or replicas > ready
    st.cond("Progressing", progressing, "Progressing" if progressing else "Stable",
            f"canary {canary} at step {st.s.get('canaryStep', 0)}" if canary else
            f"rolling to {rolling}" if rolling else f"{ready}/{replicas} ready")
    if not st.has("Degraded"):
        st.cond("Degraded", False, "Healthy", "no failed rollout")
