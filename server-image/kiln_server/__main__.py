"""`python -m kiln_server`: verify the model, then serve it (see kiln_server.config for the flags)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from kiln_server import artifacts
from kiln_server.config import Config, parse
from kiln_server.errors import StartupError

log = logging.getLogger("kiln_server")
TERMINATION_LOG = "/dev/termination-log"


def fail(message: str) -> int:
    """Say why the server will not start, on stderr and in the pod's termination message."""
    print(f"kiln-server: error: {message}", file=sys.stderr, flush=True)
    path = os.environ.get("KILN_TERMINATION_LOG", TERMINATION_LOG)
    if path and os.path.exists(path) and os.access(path, os.W_OK):
        try:
            Path(path).write_text(message[:4000])
        except OSError:
            pass
    return 1


def main(argv: list[str] | None = None) -> int:
    cfg = parse(argv)
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        artifact = artifacts.fetch(cfg.model_uri, cfg.cache_dir, cfg.runtime, cfg.allow_unsafe_formats,
                                   cfg.expected_sha256, cfg.expected_card_sha256)
    except StartupError as exc:
        return fail(str(exc))
    log.info("verified %s (%s, sha256 %s) for runtime %s", artifact.path, artifact.format, artifact.sha256,
             artifact.runtime)
    if cfg.workers == 1:
        return serve_single(cfg, artifact)
    return serve_workers(cfg, artifact)


def _uvicorn_kwargs(cfg: Config) -> dict:
    """uvicorn's settings; the HTTP protocol is kiln_server.serving's (httptools, draining on SIGTERM)."""
    return {
        "host": cfg.host,
        "port": cfg.port,
        "lifespan": "on",
        "access_log": False,
        "server_header": False,
        "log_level": cfg.log_level,
        "timeout_graceful_shutdown": cfg.graceful_timeout_s,
        "timeout_keep_alive": cfg.keep_alive_timeout_s,
    }


def http_limits(cfg: Config):
    from kiln_server.serving import HttpLimits

    return HttpLimits(max_url_bytes=cfg.max_url_bytes, max_header_bytes=cfg.max_header_bytes,
                      max_headers=cfg.max_headers, request_timeout_s=cfg.request_timeout_s,
                      max_connections=cfg.max_connections)


def _exit_quietly(signum, frame) -> None:
    """uvicorn re-raises SIGTERM/SIGINT after its graceful shutdown; that shutdown is our normal exit (0)."""


def serve_single(cfg: Config, artifact) -> int:
    from kiln_server import serving

    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    from kiln_server.app import App

    app = App(cfg, artifact)
    try:
        app.load()
    except StartupError as exc:
        return fail(str(exc))
    log.info("serving model %s version %s (%s) on %s:%d", cfg.name, cfg.version, artifact.runtime, cfg.host,
             cfg.port)
    signal.signal(signal.SIGTERM, _exit_quietly)
    signal.signal(signal.SIGINT, _exit_quietly)
    try:
        started = serving.serve(serving.config(app, http_limits(cfg), **_uvicorn_kwargs(cfg)))
    except serving.BindError as exc:
        return fail(str(exc))
    return 0 if started else 3


def serve_workers(cfg: Config, artifact) -> int:
    from kiln_server import serving

    scratch = Path(tempfile.mkdtemp(prefix="kiln-server-"))
    metrics_dir = scratch / "metrics"
    metrics_dir.mkdir()
    error_file = scratch / "startup-error"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["KILN_STARTUP_ERROR_FILE"] = str(error_file)
    from kiln_server.app import STATE_ENV

    # A file, not the variable itself: the card is in it, and Linux refuses to exec a process with an
    # environment string over 128 KiB (MAX_ARG_STRLEN), so a large card would stop every worker starting.
    state_file = scratch / "state.json"
    state_file.write_text(json.dumps({"config": asdict(cfg), "artifact": asdict(artifact)}))
    os.environ[STATE_ENV] = str(state_file)
    log.info("serving model %s version %s (%s) on %s:%d with %d workers", cfg.name, cfg.version,
             artifact.runtime, cfg.host, cfg.port, cfg.workers)
    try:
        try:
            serving.supervise(serving.config("kiln_server.app:worker_app", http_limits(cfg), factory=True,
                                             workers=cfg.workers, **_uvicorn_kwargs(cfg)), cfg.workers)
        except serving.BindError as exc:
            return fail(str(exc))
        if error_file.exists():
            return fail(error_file.read_text())
        return 0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
