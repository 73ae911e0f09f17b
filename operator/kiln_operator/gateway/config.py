"""Gateway settings, read once from the environment (the chart and the local cluster set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MIB = 1024 * 1024


def _address(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' (an IPv6 pod IP) → (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _namespaces(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    # Prediction traffic: /<namespace>/<deployment>/<path>.
    listen: tuple[str, int] = field(default_factory=lambda: _address(_env("KILN_GATEWAY_LISTEN", "0.0.0.0:8081")))
    # /healthz, /readyz and /metrics, on their own port: no path of theirs can shadow a namespace, and a
    # NetworkPolicy can open them to probes and Prometheus while prediction traffic stays restricted.
    admin_listen: tuple[str, int] = field(
        default_factory=lambda: _address(_env("KILN_GATEWAY_ADMIN_LISTEN", "0.0.0.0:8080")))
    # Empty: every namespace (one cluster-wide watch per kind).
    namespaces: tuple[str, ...] = field(default_factory=lambda: _namespaces(_env("KILN_WATCH_NAMESPACES", "")))
    # The operator's base URL for POST /wake/<namespace>/<name>; empty: never wake, only wait.
    wake_url: str = field(default_factory=lambda: _env("KILN_WAKE_URL", "").rstrip("/"))
    wait_seconds: float = field(default_factory=lambda: float(_env("KILN_GATEWAY_WAIT_SECONDS", "120")))
    max_waiting: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_MAX_WAITING", "100")))
    max_body: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_MAX_BODY_BYTES", str(16 * MIB))))
    # A body that trickles in slower than this is cut off (408): no connection is held open by a slow sender.
    body_timeout: float = field(default_factory=lambda: float(_env("KILN_GATEWAY_BODY_TIMEOUT", "30")))
    upstream_timeout: float = field(default_factory=lambda: float(_env("KILN_GATEWAY_UPSTREAM_TIMEOUT", "60")))
    max_response: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_MAX_RESPONSE_BYTES", str(64 * MIB))))
    pod_port: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_POD_PORT", "8080")))
    # Watch requests end after this many seconds and are renewed from the last resourceVersion.
    watch_timeout: int = field(default_factory=lambda: int(_env("KILN_WATCH_TIMEOUT", "300")))
    # Seconds between "not ready" and closing the listener on SIGTERM, so that Service endpoints drop the
    # pod before it stops accepting connections.
    drain_seconds: float = field(default_factory=lambda: float(_env("KILN_GATEWAY_DRAIN_SECONDS", "5")))
    log_format: str = field(default_factory=lambda: _env("KILN_LOG_FORMAT", "json"))


def load() -> Settings:
    return Settings()
