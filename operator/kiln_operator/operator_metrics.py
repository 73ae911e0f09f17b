"""The operator's own Prometheus metrics, served on KILN_OPERATOR_LISTEN /metrics (the chart's PodMonitor)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILES = Counter("kiln_operator_reconciles", "Reconciles by kind and outcome (changed, unchanged, error).",
                     ["kind", "outcome"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("kiln_operator_reconcile_duration_seconds", "Time one reconcile took.", ["kind"],
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                              registry=REGISTRY)
SPEC_TO_ACTION = Histogram("kiln_operator_spec_to_action_seconds",
                           "From the operator seeing a new spec generation to its first write for it.", ["kind"],
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=REGISTRY)
API_REQUESTS = Counter("kiln_operator_api_requests", "Requests the operator's own client made to the API server "
                       "(kopf's watches not included).", ["verb", "resource"], registry=REGISTRY)
JOBS_STARTED = Counter("kiln_operator_jobs_started", "Training Jobs created.", registry=REGISTRY)
VERSIONS = Counter("kiln_operator_versions_registered", "Model versions committed, by state (Registered, Rejected).",
                   ["state"], registry=REGISTRY)
PROMOTIONS = Counter("kiln_operator_promotions", "Automatic promotions to production.", registry=REGISTRY)
ROLLOUTS = Counter("kiln_operator_rollouts", "Rollouts of a new version, by outcome (completed, failed).",
                   ["outcome"], registry=REGISTRY)
ROLLBACKS = Counter("kiln_operator_rollbacks", "Canaries rolled back by their gates.", registry=REGISTRY)
QUEUE_DEPTH = Gauge("kiln_operator_queue_depth", "Objects waiting in the work queue.", registry=REGISTRY)
SAMPLERS = Gauge("kiln_operator_samplers", "Metrics loops running (one per served Deployment with ready pods).",
                 registry=REGISTRY)
