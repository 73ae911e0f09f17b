"""Operator configuration, read once from the environment (the chart sets it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


def _list(name: str, default: str) -> list[str]:
    return [x.strip() for x in os.environ.get(name, default).split(",") if x.strip()]


@dataclass(frozen=True)
class Settings:
    trainer_image: str = field(default_factory=lambda: os.environ.get("KILN_TRAINER_IMAGE", "kiln/trainer:0.1.0"))
    server_image: str = field(default_factory=lambda: os.environ.get("KILN_SERVER_IMAGE", "kiln/server:0.1.0"))
    # Image references (prefix match) a spec may ask for; the defaults are always allowed.
    allowed_images: list[str] = field(default_factory=lambda: _list("KILN_ALLOWED_IMAGES", "kiln/"))
    storage: str = field(default_factory=lambda: os.environ.get(
        "KILN_DEFAULT_STORAGE", f"s3://{os.environ.get('KILN_BUCKET', 'kiln')}/models"))
    s3_secret: str = field(default_factory=lambda: os.environ.get("KILN_S3_SECRET", "kiln-s3"))
    # Where the operator serves /metrics and the activator's POST /wake/<ns>/<name>: host:port, or "" for none.
    listen: str = field(default_factory=lambda: os.environ.get("KILN_OPERATOR_LISTEN", "0.0.0.0:8082"))
    # Reconcile worker threads (API calls block; the event loop never does).
    workers: int = field(default_factory=lambda: int(os.environ.get("KILN_WORKERS", "32")))
    # The safety resync: every object is queued again this often (it reads caches only).
    resync_seconds: float = field(default_factory=lambda: float(os.environ.get("KILN_RESYNC_SECONDS", "300")))
    watch_server_timeout: int = field(default_factory=lambda: int(os.environ.get("KILN_WATCH_TIMEOUT", "300")))


def load() -> Settings:
    return Settings()
