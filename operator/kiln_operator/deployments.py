"""Kiln Deployment reconciliation: observed world → serving_decide.decide (pure) → children applied, status.

Traffic split: every serving pod of a Kiln Deployment carries kiln.dev/deployment=<name> and
sits behind one Service, so a canary's share of traffic is its share of ready replicas
(status.canaryWeight reports the ratio actually running).
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln_contract import spec as specs
from kiln_operator import (
    apply,
    conditions,
    deployment_builder,
    kube,
    labels,
    operator_metrics,
    payload_logging,
    serving_metrics,
    tenancy,
)
from kiln_operator.reconcile import Result, invalid_spec, refused
from kiln_operator.serving_decide import Observed, Plan, decide
from kiln_operator.settings import Settings
from kiln_operator.world import ServingWorld

CONFLICT_RETRY = 30.0  # seconds between looks at a child name another app holds


@dataclass
class Signals:
    """What the sampler and the activator know, copied on the event loop for one reconcile."""

    desired: int | None
    wake: bool
    canary: serving_metrics.Sample | None
    drift: tuple[bool | None, dict] | None
    conflicts: list[str]


def counts(world: ServingWorld) -> tuple[dict[int, int], dict[int, int]]:
    """(ready, replicas) by version, from the watched server Deployments."""
    ready = {v: int(((s.get("status") or {}).get("readyReplicas")) or 0) for v, s in world.servers.items()}
    replicas = {v: int(((s.get("spec") or {}).get("replicas")) or 0) for v, s in world.servers.items()}
    return ready, replicas


def api_versions() -> dict[str, str]:
    return {"Service": "v1", "ConfigMap": "v1", "Deployment": "apps/v1",
            "HorizontalPodAutoscaler": kube.preferred("autoscaling", ("autoscaling/v2", "autoscaling/v2beta2")),
            "PodDisruptionBudget": kube.preferred("policy", ("policy/v1", "policy/v1beta1"))}


def desired_children(dep: dict, plan: Plan, cfg: Settings, versions: dict[str, str]) -> list[dict]:
    """The manifests a plan asks for (pure, given the API versions). Raises tenancy.NotAllowed (spec.logging)."""
    out = [deployment_builder.build_service(dep)]
    logging = payload_logging.resolve(dep, cfg)
    if logging is not None:  # before the servers: their pods mount it
        out.append(deployment_builder.build_logging_config(dep, logging))
    for version, (track, replicas) in sorted(plan.servers.items()):
        out.append(deployment_builder.build_server(dep, plan.entries[version], track=track, replicas=replicas,
                                                   image=plan.image, s3_secret=cfg.s3_serving_secret,
                                                   logging=logging))
    if plan.hpa_for is not None:
        name = deployment_builder.server_name(dep["metadata"]["name"], plan.hpa_for)
        out.append(deployment_builder.build_hpa(dep, name, versions["HorizontalPodAutoscaler"]))
    if plan.pdb:
        out.append(deployment_builder.build_pdb(dep, versions["PodDisruptionBudget"]))
    return out


def reconcile(world: ServingWorld, signals: Signals, cfg: Settings, now: float) -> Result:
    dep = world.dep
    meta = dep["metadata"]
    try:
        spec = specs.validate("Deployment", dep["spec"])
    except specs.SpecError as exc:
        return Result(status=invalid_spec("Deployment", dep, exc))
    dep = {**dep, "spec": spec}
    try:
        logging = payload_logging.resolve(dep, cfg)
    except tenancy.NotAllowed as exc:
        return Result(status=refused("Deployment", dep, "StorageNotAllowed", exc))
    ready, replicas = counts(world)
    plan = decide(Observed(dep=dep, model=world.model, ready=ready, replicas=replicas, desired=signals.desired,
                           now=now, wake=signals.wake, canary=signals.canary, drift=signals.drift,
                           conflicts=signals.conflicts), cfg)
    plan.status["grpcTarget"] = f"{meta['name']}.{meta['namespace']}.svc:{deployment_builder.GRPC_PORT}"
    plan.status["payloadLogUri"] = logging.uri if logging is not None else None
    out = Result(status=plan.status, events=plan.events, requeue_after=plan.requeue_after)
    versions = api_versions()
    conflicts, out.acted = apply.sync(meta["namespace"], desired_children(dep, plan, cfg, versions),
                                      world.children, meta["uid"], versions)
    out.conflicts = conflicts
    if conflicts != signals.conflicts:
        out.requeue_after = 0.0  # report the conflict (or its end) at once
    elif conflicts:  # the other object is not watched (not ours): look again now and then
        out.requeue_after = min(out.requeue_after or CONFLICT_RETRY, CONFLICT_RETRY)
    out.reset_canary = plan.reset_canary
    for _, reason, _ in plan.events:
        if reason == "RolledOut":
            operator_metrics.ROLLOUTS.labels(outcome="completed").inc()
        elif reason in ("RolloutFailed", "CanaryFailed"):
            operator_metrics.ROLLOUTS.labels(outcome="failed").inc()
            if reason == "CanaryFailed":
                operator_metrics.ROLLBACKS.inc()
        elif reason == "CanaryPromoted":
            operator_metrics.ROLLOUTS.labels(outcome="completed").inc()
    if plan.retrain:
        out.events.append(request_retrain(meta["namespace"], plan.retrain, plan.status.get("servingVersion")))
        out.acted = True
    return out


def request_retrain(ns: str, training_job: str, version: int) -> tuple[str, str, str]:
    """Annotate the TrainingJob; a new annotation value makes it start a new run."""
    try:
        kube.annotate("trainingjobs", ns, training_job, {labels.RETRAIN: conditions.now()})
    except Exception as exc:  # noqa: BLE001 - reported as an event, the drift stays reported
        return ("Warning", "RetrainFailed", f"spec.monitoring.drift.retrain: {training_job}: {exc}")
    return ("Normal", "RetrainRequested", f"TrainingJob {training_job} asked to retrain (drift on version {version})")
