"""The raw ASGI application: routing, body limits, the inference endpoints, health, metadata, metrics.

No web framework: uvicorn (httptools) calls `App.__call__` with the ASGI scope; inference
routes of the served model are matched by one dict lookup.

    GET  /v2/health/live | /v2/health/ready | /v2
    GET  /v2/models/{name}[/versions/{v}] | .../ready
    POST /v2/models/{name}[/versions/{v}]/infer
    GET  /v1/models | /v1/models/{name};  POST /v1/models/{name}:predict
    GET  /metrics
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from importlib import metadata

import numpy as np

from kiln_server import artifacts, runtimes
from kiln_server.batching import Batcher
from kiln_server.config import Config
from kiln_server.decode import Limits, _names, decode_v1, decode_v2, parse_json
from kiln_server.errors import ClientError, StartupError
from kiln_server.protocol import dumps, model_metadata, v1_response, v2_response
from kiln_server.runtimes import finite_rows

log = logging.getLogger("kiln_server")

JSON = b"application/json"
STATE_ENV = "KILN_SERVER_STATE"  # path of a file: config + verified artifact, from the supervisor to workers
DRAIN_CAP = 64 << 20  # past this, an oversized body is not read to the end: the connection is closed


class Disconnected(Exception):
    pass


def _version() -> str:
    try:
        return metadata.version("kiln")
    except metadata.PackageNotFoundError:
        return "0.0.0"


class App:
    def __init__(self, cfg: Config, artifact: artifacts.Artifact, runtime=None):
        self.cfg = cfg
        self.artifact = artifact
        self.name = cfg.name
        self.version = cfg.version
        self.runtime = None
        self.ready = False
        self.server_version = _version()
        self.limits = Limits(max_elements=cfg.max_elements, max_string_length=cfg.max_string_length)
        self.payload_log = None  # kiln_server.payload_log.PayloadLog when --payload-log-uri is set
        self.payload_record = None  # its record(): what a handler calls, one C call (kiln_server._payload_chunks)
        self.grpc = None  # the gRPC server (kiln_server.grpc_server) when --grpc-port is set
        if runtime is not None:
            self._attach(runtime)

    # -- lifecycle ------------------------------------------------------------------------------
    def load(self) -> None:
        """Verify the artifact's bytes again, deserialise them, warm up. Raises StartupError."""
        data = artifacts.load_verified(self.artifact, self.cfg.expected_sha256)
        self._attach(runtimes.load(self.artifact, data))

    def _attach(self, runtime) -> None:
        from kiln_server.metrics import Metrics

        self.runtime = runtime
        self.schema = runtime.schema
        self.metrics = Metrics(self.name, self.version, runtime.name, self.artifact.sha256,
                               self.artifact.card, self.schema)
        self.batcher = Batcher(runtime.predict, self.cfg.batch_max_size, self.cfg.batch_max_latency_ms / 1000,
                               on_batch=self.metrics.batch)
        self.batcher.seed(getattr(runtime, "seconds_per_call", 0.0))
        self.metadata_doc = model_metadata(self.name, self.version, runtime.platform, self.schema, {
            "runtime": runtime.name, "sha256": self.artifact.sha256, "format": self.artifact.format,
        })
        self.metadata = dumps(self.metadata_doc)
        v = self.version
        self.infer_routes = {
            f"/v2/models/{self.name}/infer": self.infer_v2,
            f"/v2/models/{self.name}/versions/{v}/infer": self.infer_v2,
            f"/v2/models/{self.name}/versions/v{v}/infer": self.infer_v2,
            f"/v1/models/{self.name}:predict": self.infer_v1,
        }

    async def _startup(self) -> None:
        if self.runtime is None:
            self.load()
        if self.cfg.payload_log_uri and self.payload_log is None:
            from kiln_server.payload_log import PayloadLog

            self.payload_log = PayloadLog.from_config(self.cfg, self.schema, self.metrics)
            self.payload_record = self.payload_log.record
        if self.cfg.grpc_port and self.grpc is None:
            from kiln_server import grpc_server

            self.grpc = await grpc_server.start(self)
        self.ready = True
        self._task = None
        if self.metrics.multiproc_dir or self.payload_log is not None:
            self._task = asyncio.get_running_loop().create_task(self._every_second())

    async def _every_second(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            if self.payload_log is not None:
                # records the store dropped (C counts them) into the Prometheus counter, here and not in the
                # writer thread: that one may hang in an upload for as long as S3 does
                self.payload_log.sync_dropped()
                self.payload_log.follow_rate()
            if self.metrics.multiproc_dir:
                try:
                    self.metrics.write_snapshot()
                except OSError as exc:
                    log.warning("cannot write feature snapshot: %s", exc)

    async def _shutdown(self) -> None:
        self.ready = False
        if getattr(self, "_task", None) is not None:
            self._task.cancel()
        if self.grpc is not None:
            await self.grpc.stop(self.cfg.graceful_timeout_s)  # in-flight calls finish; new ones are refused
            self.grpc = None
        if self.payload_log is not None:
            self.payload_record = None
            self.payload_log.close()  # what is queued is written, within a few seconds
            self.payload_log = None
        if self.runtime is not None:
            self.batcher.close()
            self.metrics.close()

    async def lifespan(self, receive, send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as exc:
                    message = str(exc) if isinstance(exc, StartupError) else f"{type(exc).__name__}: {exc}"
                    _report_startup_failure(message)
                    await send({"type": "lifespan.startup.failed", "message": message})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self._shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- ASGI entry -------------------------------------------------------------------------------
    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            handler = self.infer_routes.get(scope["path"]) if self.runtime is not None else None
            if handler is not None and scope["method"] == "POST":
                await handler(scope, receive, send)
                return
            await self.route(scope, receive, send)
        elif kind == "lifespan":
            await self.lifespan(receive, send)

    async def route(self, scope, receive, send) -> None:
        path = scope["path"]
        method = scope["method"]
        try:
            handler, allowed = self._resolve(path)
        except ClientError as exc:
            await respond(send, exc.status, dumps({"error": exc.message}))
            return
        if method not in allowed:
            if handler in (self.infer_v2, self.infer_v1):
                self.metrics.request(405, 0.0)
            message = f"method {method} is not allowed on {path}; use {', '.join(allowed)}"
            await respond(send, 405, dumps({"error": message}), extra=[(b"allow", ", ".join(allowed).encode())])
            return
        if self.runtime is None and handler != self.live:
            await respond(send, 503, dumps({"error": "the model is not loaded yet"}))
            return
        await handler(scope, receive, send)

    def _resolve(self, path: str):
        """(handler, allowed methods) for a path, or ClientError(404) naming what was not found."""
        simple = {
            "/v2/health/live": self.live, "/v2/health/ready": self.server_ready, "/v2": self.server_metadata,
            "/v2/": self.server_metadata, "/metrics": self.metrics_endpoint, "/v1/models": self.v1_models,
            "/v1/models/": self.v1_models,
        }
        if path in simple:
            return simple[path], ("GET",)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
            name, rest = parts[2], parts[3:]
            version = None
            if rest[:1] == ["versions"]:
                if len(rest) < 2:
                    raise ClientError(404, f"no route {path}: give a version after /versions/")
                version, rest = rest[1], rest[2:]
            action = rest[0] if rest else ""
            if len(rest) > 1 or action not in ("", "ready", "infer"):
                raise ClientError(404, f"no route {path}")
            if action == "infer":
                self._check_model(name, version, count=True)
                return self.infer_v2, ("POST",)
            self._check_model(name, version)
            return (self.model_ready if action == "ready" else self.model_metadata), ("GET",)
        if len(parts) == 3 and parts[0] == "v1" and parts[1] == "models":
            name, _, verb = parts[2].partition(":")
            if verb == "predict":
                self._check_model(name, None, count=True)
                return self.infer_v1, ("POST",)
            if verb:
                raise ClientError(404, f"no route {path}: KServe V1 supports :predict")
            self._check_model(name, None)
            return self.v1_model, ("GET",)
        raise ClientError(404, f"no route {path}; see /v2 (Open Inference Protocol) or /v1/models")

    def _check_model(self, name: str, version: str | None, count: bool = False) -> None:
        problem = None
        if name != self.name:
            problem = f"model {name!r} is not served here; this server serves {self.name!r}"
        elif version is not None and version not in (self.version, f"v{self.version}"):
            problem = f"model {name!r} has no version {version!r} here; this server serves version {self.version!r}"
        if problem:
            if count and self.runtime is not None:
                self.metrics.request(404, 0.0)
            raise ClientError(404, problem)

    # -- simple endpoints -------------------------------------------------------------------------
    async def live(self, scope, receive, send):
        await respond(send, 200, b'{"live":true}')

    async def server_ready(self, scope, receive, send):
        if self.ready:
            await respond(send, 200, b'{"ready":true}')
        else:
            await respond(send, 503, b'{"ready":false}')

    async def server_metadata(self, scope, receive, send):
        await respond(send, 200, dumps({"name": "kiln", "version": self.server_version, "extensions": []}))

    async def model_metadata(self, scope, receive, send):
        await respond(send, 200, self.metadata)

    async def model_ready(self, scope, receive, send):
        await respond(send, 200 if self.ready else 503, dumps({"name": self.name, "ready": self.ready}))

    async def v1_models(self, scope, receive, send):
        await respond(send, 200, dumps({"models": [self.name]}))

    async def v1_model(self, scope, receive, send):
        await respond(send, 200, dumps({"name": self.name, "ready": self.ready}))

    async def metrics_endpoint(self, scope, receive, send):
        body, ctype = self.metrics.render()
        await respond(send, 200, body, ctype.encode())

    # -- inference ----------------------------------------------------------------------------------
    async def infer_v2(self, scope, receive, send):
        await self._infer(scope, receive, send, v2=True)

    async def infer_v1(self, scope, receive, send):
        await self._infer(scope, receive, send, v2=False)

    async def _infer(self, scope, receive, send, v2: bool) -> None:
        t0 = time.perf_counter()
        metrics = self.metrics
        batcher = self.batcher
        metrics.in_flight.inc()
        batcher.arrive()
        queued = False
        close = False
        status = 500
        try:
            try:
                body = await self._body(scope, receive)
                req = parse_json(body)
                bools = b"true" in body or b"false" in body  # else no JSON boolean to look for among numbers
                limits = self.limits
                batch = (decode_v2(req, self.schema, bools, limits) if v2
                         else decode_v1(req, self.schema, bools, limits))
                # The parsed JSON can weigh tens of times the body; a queued request keeps only its arrays.
                req = body = None
                queued = True
                label, probs = await self.predict(batch)
                if v2:
                    payload = v2_response(self.name, self.version, batch.id, self.schema, label, probs,
                                          batch.outputs)
                else:
                    payload = v1_response(label)
                status = 200
                record = self.payload_record
                if record is not None:  # protocol: an index of payload_log.PROTOCOLS
                    protocol = 0 if v2 else 1
                    if record(protocol, batch.id, scope["headers"], batch.x, batch.n, label, probs, t0):
                        self.payload_log.refit(protocol, batch.id, scope["headers"], batch.x, batch.n, label, probs,
                                               t0)
            except ClientError as exc:
                status, payload = exc.status, dumps({"error": exc.message})
                close = exc.status == 413 and getattr(exc, "close", False)
            except Disconnected:
                status = 499  # client closed the connection; nothing to answer
                return
            except Exception as exc:
                log.exception("inference failed")
                status, payload = 500, dumps({"error": f"internal error: {type(exc).__name__}: {exc}"})
            finally:
                if not queued:
                    batcher.depart()
            await respond(send, status, payload, close=close)
        finally:
            metrics.in_flight.dec()
            metrics.request(status, time.perf_counter() - t0)

    async def predict(self, batch, batcher=None):
        """The data plane after decoding, for every transport (REST and gRPC): the batcher (one model call for
        what arrived together; `batcher`: the one of the calling loop, default REST's), then the check that
        every row's answer is finite. The caller has called batcher.arrive(); this counts as its submit.
        Returns (labels, probabilities | None); ClientError(422)."""
        batcher = batcher or self.batcher
        if batcher.can_run_now():
            label, probs = batcher.run_now(batch.x, batch.n)
        else:
            label, probs = await batcher.submit(batch.x, batch.n)
        ok = finite_rows(label, probs)
        if not ok.all():
            rows = np.flatnonzero(~ok)
            raise ClientError(
                422, f"the model gave a non-finite result for row(s) {_names(int(r) for r in rows)}; "
                "check those rows for infinite or out-of-range values"
            )
        self.metrics.predicted(label)
        return label, probs

    async def _body(self, scope, receive) -> bytes:
        limit = self.cfg.max_body_bytes
        for key, value in scope["headers"]:
            if key == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    raise ClientError(400, f"invalid Content-Length {value[:40]!r}") from None
                if length > limit:
                    raise await self._too_large(receive, length, limit)
                break
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise Disconnected
        body = msg.get("body", b"")
        if not msg.get("more_body"):
            return body
        chunks = [body]
        size = len(body)
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise Disconnected
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise await self._too_large(receive, size, limit, more=msg.get("more_body", False))
            chunks.append(chunk)
            if not msg.get("more_body"):
                return b"".join(chunks)

    async def _too_large(self, receive, size: int, limit: int, more: bool = True) -> ClientError:
        """413, after reading the rest of the body (so the client sees the answer) unless it is huge."""
        read = 0
        close = False
        while more:
            if size > DRAIN_CAP or read > DRAIN_CAP:
                close = True
                break
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise Disconnected
            read += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        err = ClientError(
            413, f"request body of {size} bytes exceeds the limit of {limit} bytes "
            f"(KILN_MAX_BODY_BYTES); send fewer rows per request"
        )
        err.close = close
        return err


_BASE_HEADERS = [(b"content-type", JSON)]


async def respond(send, status: int, body: bytes, ctype: bytes = JSON, extra=(), close: bool = False) -> None:
    headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _report_startup_failure(message: str) -> None:
    log.error("startup failed: %s", message)
    path = os.environ.get("KILN_STARTUP_ERROR_FILE")
    if path:
        try:
            with open(path, "w") as fh:
                fh.write(message)
        except OSError:
            pass


def worker_app() -> App:
    """uvicorn factory for worker processes: the supervisor verified the artifact; each worker loads it."""
    import json

    with open(os.environ[STATE_ENV], encoding="utf-8") as fh:
        state = json.load(fh)
    cfg = Config(**state["config"])
    art = artifacts.Artifact(**state["artifact"])
    return App(cfg, art)
