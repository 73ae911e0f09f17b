"""Operator configuration, read once from the environment (the chart sets it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kiln_operator import tenancy


def _list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


DEFAULT_NODE_SELECTOR_KEYS = ",".join([
    "kubernetes.io/arch", "kubernetes.io/os", "node.kubernetes.io/instance-type", "topology.kubernetes.io/*",
    "nvidia.com/*", "cloud.google.com/gke-accelerator", "kiln.dev/*"])


# Reconcile threads: each waits on an API call (HTTP/1.1, a connection each) most of its time, so their number
# is the operator's concurrency towards the API server. Under a burst of 500 TrainingJobs on a 2-core cluster,
# 32 left runs queued for up to a second behind each other; 96 took the queue wait to ~0
# (bench/README.md "The operator's burst latency").
WORKERS_DEFAULT = 96


def workers() -> int:
    return int(os.environ.get("KILN_WORKERS", WORKERS_DEFAULT))


@dataclass(frozen=True)
class Settings:
    trainer_image: str = field(default_factory=lambda: os.environ.get("KILN_TRAINER_IMAGE", "kiln/trainer:0.1.0"))
    server_image: str = field(default_factory=lambda: os.environ.get("KILN_SERVER_IMAGE", "kiln/server:0.1.0"))
    # Image references (prefix match) a spec may ask for; the defaults are always allowed.
    allowed_images: list[str] = field(default_factory=lambda: _list("KILN_ALLOWED_IMAGES", "kiln/"))
    storage: str = field(default_factory=lambda: os.environ.get(
        "KILN_DEFAULT_STORAGE", f"s3://{os.environ.get('KILN_BUCKET', 'kiln')}/models"))
    # Extra S3 prefixes per namespace ("*": all; "{namespace}" substituted): read-write for Model storage,
    # read-only for datasets and bring-your-own artifacts. See kiln_operator.tenancy.
    storage_prefixes: dict = field(default_factory=lambda: tenancy.env_prefix_map("KILN_STORAGE_PREFIXES"))
    read_prefixes: dict = field(default_factory=lambda: tenancy.env_prefix_map("KILN_READ_PREFIXES"))
    # Keys a TrainingJob's tolerations and nodeSelector may use (exact, "prefix*", or "*"); none that
    # target control-plane nodes by default.
    allowed_toleration_keys: list[str] = field(default_factory=lambda: _list(
        "KILN_ALLOWED_TOLERATION_KEYS", "nvidia.com/gpu,kiln.dev/*"))
    allowed_node_selector_keys: list[str] = field(default_factory=lambda: _list(
        "KILN_ALLOWED_NODE_SELECTOR_KEYS", DEFAULT_NODE_SELECTOR_KEYS))
    # Schedulers a TrainingJob's spec.schedulerName may name (same patterns); unset means the default one.
    allowed_scheduler_names: list[str] = field(default_factory=lambda: _list(
        "KILN_ALLOWED_SCHEDULER_NAMES", "default-scheduler"))
    s3_secret: str = field(default_factory=lambda: os.environ.get("KILN_S3_SECRET", "kiln-s3"))
    # Serving pods only read artifacts: a Secret with read-only credentials where the store has them.
    s3_serving_secret: str = field(default_factory=lambda: os.environ.get("KILN_S3_SERVING_SECRET")
                                   or os.environ.get("KILN_S3_SECRET", "kiln-s3"))
    # Serving pods with spec.logging on write payload-log records with this Secret's AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY (given to the server under other names; its own credentials stay read-only). Point
    # it at credentials that may only write under the log prefixes where the store supports such policies.
    s3_logging_secret: str = field(default_factory=lambda: os.environ.get("KILN_S3_LOGGING_SECRET")
                                   or os.environ.get("KILN_S3_SECRET", "kiln-s3"))
    # Where the operator serves /metrics and the activator's POST /wake/<ns>/<name>: host:port, or "" for none.
    listen: str = field(default_factory=lambda: os.environ.get("KILN_OPERATOR_LISTEN", "0.0.0.0:8082"))
    # Reconcile worker threads (API calls block; the event loop never does).
    workers: int = field(default_factory=lambda: workers())
    # Bring-your-own https artifacts fetched at once (on the event loop; each capped in size and time).
    downloads: int = field(default_factory=lambda: int(os.environ.get("KILN_DOWNLOADS", "4")))
    # The safety resync: every object is queued again this often (it reads caches only).
    resync_seconds: float = field(default_factory=lambda: float(os.environ.get("KILN_RESYNC_SECONDS", "300")))
    # Model status keeps the newest N versions (and those in use); the rest live in the storage index.
    status_versions: int = field(default_factory=lambda: max(1, int(os.environ.get("KILN_STATUS_VERSIONS", "20"))))
    watch_server_timeout: int = field(default_factory=lambda: int(os.environ.get("KILN_WATCH_TIMEOUT", "300")))


def load() -> Settings:
    return Settings()
