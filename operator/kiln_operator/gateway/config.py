"""Gateway settings, read once from the environment (the chart and the local cluster set them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

MIB = 1024 * 1024


def _address(value: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' (an IPv6 pod IP) → (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _names(value: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(x.strip() for x in value.split(",") if x.strip()))


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


AUTH_MODES = ("kubernetes", "none")


@dataclass(frozen=True)
class Settings:
    # Prediction traffic: /<namespace>/<deployment>/<path>.
    listen: tuple[str, int] = field(default_factory=lambda: _address(_env("KILN_GATEWAY_LISTEN", "0.0.0.0:8081")))
    # /healthz, /readyz and /metrics, on their own port: no path of theirs can shadow a namespace, and a
    # NetworkPolicy can open them to probes and Prometheus while prediction traffic stays restricted.
    admin_listen: tuple[str, int] = field(
        default_factory=lambda: _address(_env("KILN_GATEWAY_ADMIN_LISTEN", "0.0.0.0:8080")))
    # Empty: every namespace (one cluster-wide watch per kind).
    namespaces: tuple[str, ...] = field(default_factory=lambda: _names(_env("KILN_WATCH_NAMESPACES", "")))
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
    # Who may send requests (auth.py): "kubernetes" (a bearer token, TokenReview + SubjectAccessReview) or "none",
    # for trusted development setups only. A typo must not fall back to "none": it stops the gateway.
    auth: str = field(default_factory=lambda: _env("KILN_GATEWAY_AUTH", "kubernetes").strip().lower())
    # Seconds an allowed answer is remembered (never past the token's own expiry), and a refused one.
    auth_ttl: float = field(default_factory=lambda: float(_env("KILN_GATEWAY_AUTH_CACHE_SECONDS", "60")))
    auth_negative_ttl: float = field(
        default_factory=lambda: float(_env("KILN_GATEWAY_AUTH_NEGATIVE_CACHE_SECONDS", "10")))
    # Entries in each of the two caches (tokens; token x Deployment), least recently used evicted first.
    auth_cache_size: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_AUTH_CACHE_SIZE", "10000")))
    # Reviews sent to the API server at once, and distinct reviews that may wait for a slot (then 503).
    auth_concurrency: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_AUTH_CONCURRENCY", "8")))
    auth_max_pending: int = field(default_factory=lambda: int(_env("KILN_GATEWAY_AUTH_MAX_PENDING", "256")))
    # Audiences a token must be meant for (TokenReview spec.audiences); empty: the API server's own. A dedicated
    # audience (`kubectl create token <sa> --audience kiln-gateway`) makes a token the gateway sees useless
    # against the API server.
    auth_audiences: tuple[str, ...] = field(
        default_factory=lambda: _names(_env("KILN_GATEWAY_AUTH_AUDIENCES", "")))

    def __post_init__(self) -> None:
        if self.auth not in AUTH_MODES:
            raise ValueError(f"KILN_GATEWAY_AUTH={self.auth!r}: expected one of {', '.join(AUTH_MODES)}")


def load() -> Settings:
    return Settings()
