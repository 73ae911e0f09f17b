"""Command-line flags, each also settable from the environment (the operator configures pods by env).

A flag on the command line wins over its variable; the variable wins over the default.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import asdict, dataclass

from kiln_server import sample_rate_file

PAYLOAD_LOG_CODECS = ("snappy", "zstd", "none")  # Parquet codecs of payload-log objects; the CRD's enum agrees
# Records per object: each object costs the writer ~3 ms however small it is (Parquet's per-file work, the PUT), so
# a 1-row request at 10 000 records an object paid ~0.4 us for it, at 65 536 ~0.1 (with logging on at 16 k req/s:
# throughput cost 4.2 -> 2.4 %, 3 processes each, bench/README.md "Session 9"). The queue holds two objects' worth,
# so records keep coming while one is written; ids are at most 256 bytes, so the records' own memory (ids, times)
# stays under ~38 MB, typically ~9 MB (36-character ids).
PAYLOAD_LOG_BATCH = 65536
PAYLOAD_LOG_QUEUE = 131072
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


@dataclass(frozen=True)
class Config:
    model_uri: str
    name: str
    port: int = 8080
    host: str = "127.0.0.1"
    workers: int = 1
    version: str = ""
    expected_sha256: str = ""
    expected_card_sha256: str = ""
    allow_unsafe_formats: bool = False
    runtime: str = ""  # "" = onnx where the card lists an ONNX artifact, else sklearn
    cache_dir: str = ""  # "" = a fresh directory under the temp dir
    max_body_bytes: int = 8 * 1024 * 1024
    max_elements: int = 1 << 20
    max_string_length: int = 4096
    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    request_timeout_s: float = 10.0
    keep_alive_timeout_s: float = 15.0
    max_connections: int = 1024
    batch_max_size: int = 32
    batch_max_latency_ms: float = 1.0
    graceful_timeout_s: float = 25.0
    log_level: str = "info"
    grpc_port: int = 0  # 0: no gRPC listener
    payload_log_uri: str = ""  # s3:// prefix for request/response records; "" = off
    payload_log_sample_rate: float = 1.0
    payload_log_sample_rate_file: str = ""  # a file holding the rate, followed while serving (sample_rate_file)
    payload_log_compression: str = "snappy"  # Parquet codec of the objects
    payload_log_queue: int = PAYLOAD_LOG_QUEUE  # records held at most while S3 is slow; past it dropped, counted
    payload_log_batch: int = PAYLOAD_LOG_BATCH  # records per object at most
    payload_log_flush_s: float = 5.0  # an object is written at least this often while records wait

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls(**json.loads(text))


# Field -> variable, where the variable's name is not KILN_<FIELD>.
_ENV = {
    "model_uri": "KILN_MODEL_URI",
    "name": "KILN_MODEL_NAME",
    "version": "KILN_MODEL_VERSION",
}


def _bool(text: str) -> bool | None:
    low = text.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    return None


def version_from_uri(uri: str) -> str:
    """The version number in a registry path such as s3://b/models/iris/v3 -> "3"; "1" otherwise."""
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    match = re.fullmatch(r"v(\d+)", last)
    return match.group(1) if match else "1"


def parse(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ

    def default(field: str, fallback=None):
        var = _ENV.get(field, f"KILN_{field.upper()}")
        return env.get(var, fallback)

    parser = argparse.ArgumentParser(
        prog="python -m kiln_server",
        description="Serve one Kiln model version over the Open Inference Protocol (V2) and KServe V1.",
    )
    parser.add_argument("--model", dest="model_uri", default=default("model_uri"),
                        help="version directory: a local path or an s3:// prefix [KILN_MODEL_URI]")
    parser.add_argument("--name", default=default("name"), help="model name in the URLs [KILN_MODEL_NAME]")
    parser.add_argument("--port", type=int, default=default("port", "8080"), help="[KILN_PORT] (8080)")
    parser.add_argument("--host", default=default("host", "127.0.0.1"), help="[KILN_HOST] (127.0.0.1)")
    parser.add_argument("--workers", type=int, default=default("workers", "1"),
                        help="worker processes, one inference thread each [KILN_WORKERS] (1)")
    parser.add_argument("--version", default=default("version", ""),
                        help="version served; from the URI's v<N> when absent [KILN_MODEL_VERSION]")
    parser.add_argument("--expected-sha256", default=default("expected_sha256", ""),
                        help="refuse to start unless the artifact has this sha256 [KILN_EXPECTED_SHA256]")
    parser.add_argument("--expected-card-sha256", default=default("expected_card_sha256", ""),
                        help="refuse to start unless modelcard.json has this sha256, checked before it is parsed "
                        "[KILN_EXPECTED_CARD_SHA256]")
    parser.add_argument("--allow-unsafe-formats", action="store_true", default=None,
                        help="allow joblib/pickle artifacts, which run code when loaded [KILN_ALLOW_UNSAFE_FORMATS]")
    parser.add_argument("--runtime", choices=["onnx", "sklearn", ""], default=default("runtime", ""),
                        help="inference runtime; onnx where the card lists an ONNX artifact [KILN_RUNTIME]")
    parser.add_argument("--cache-dir", default=default("cache_dir", ""),
                        help="where s3:// artifacts are downloaded [KILN_CACHE_DIR] (a temp dir)")
    parser.add_argument("--max-body-bytes", type=int, default=default("max_body_bytes", str(8 << 20)),
                        help="largest request body; larger ones get 413 [KILN_MAX_BODY_BYTES] (8 MiB)")
    parser.add_argument("--max-elements", type=int, default=default("max_elements", str(1 << 20)),
                        help="most tensor elements in one request, over all its inputs; more get 413 "
                        "[KILN_MAX_ELEMENTS] (1048576)")
    parser.add_argument("--max-string-length", type=int, default=default("max_string_length", "4096"),
                        help="longest BYTES (string) element, in characters; longer get 413 "
                        "[KILN_MAX_STRING_LENGTH] (4096)")
    parser.add_argument("--max-url-bytes", type=int, default=default("max_url_bytes", str(8 << 10)),
                        help="longest request target (path and query); longer get 414 [KILN_MAX_URL_BYTES] (8 KiB)")
    parser.add_argument("--max-header-bytes", type=int, default=default("max_header_bytes", str(32 << 10)),
                        help="largest request head besides the URL (header lines, and chunked-body trailers); "
                        "larger get 431 [KILN_MAX_HEADER_BYTES] (32 KiB)")
    parser.add_argument("--max-headers", type=int, default=default("max_headers", "100"),
                        help="most header fields in a request; more get 431 [KILN_MAX_HEADERS] (100)")
    parser.add_argument("--request-timeout-s", type=float, default=default("request_timeout_s", "10"),
                        help="a request's head must arrive within this, and its body never stall longer; else 408 "
                        "and the connection is closed [KILN_REQUEST_TIMEOUT_S] (10)")
    parser.add_argument("--keep-alive-timeout-s", type=float, default=default("keep_alive_timeout_s", "15"),
                        help="how long an idle keep-alive connection is kept [KILN_KEEP_ALIVE_TIMEOUT_S] (15)")
    parser.add_argument("--max-connections", type=int, default=default("max_connections", "1024"),
                        help="open connections per worker process; past it the longest-idle one is closed, or "
                        "the new one answered 503 [KILN_MAX_CONNECTIONS] (1024)")
    parser.add_argument("--batch-max-size", type=int, default=default("batch_max_size", "32"),
                        help="most rows in one micro-batch [KILN_BATCH_MAX_SIZE] (32)")
    parser.add_argument("--batch-max-latency-ms", type=float, default=default("batch_max_latency_ms", "1"),
                        help="longest a queued request waits for its batch to fill [KILN_BATCH_MAX_LATENCY_MS] (1)")
    parser.add_argument("--graceful-timeout-s", type=float, default=default("graceful_timeout_s", "25"),
                        help="on SIGTERM, how long in-flight requests may take [KILN_GRACEFUL_TIMEOUT_S] (25)")
    parser.add_argument("--grpc-port", type=int, default=default("grpc_port", "0"),
                        help="also serve the Open Inference Protocol over gRPC on this port; 0: no gRPC "
                        "[KILN_GRPC_PORT] (0)")
    parser.add_argument("--payload-log-uri", default=default("payload_log_uri", ""),
                        help="s3:// prefix to write request/response records to (Parquet); empty: off "
                        "[KILN_PAYLOAD_LOG_URI]")
    parser.add_argument("--payload-log-sample-rate", type=float, default=default("payload_log_sample_rate", "1"),
                        help="share of requests recorded, 0..1 [KILN_PAYLOAD_LOG_SAMPLE_RATE] (1)")
    parser.add_argument("--payload-log-sample-rate-file", default=default("payload_log_sample_rate_file", ""),
                        help="a file holding the share of requests recorded, 0..1, read at start and again whenever it "
                        "changes (a ConfigMap volume: a new rate without a restart); overrides "
                        "--payload-log-sample-rate [KILN_PAYLOAD_LOG_SAMPLE_RATE_FILE]")
    parser.add_argument("--payload-log-compression", default=default("payload_log_compression", "snappy"),
                        choices=list(PAYLOAD_LOG_CODECS),
                        help="Parquet codec of the objects [KILN_PAYLOAD_LOG_COMPRESSION] (snappy)")
    parser.add_argument("--payload-log-queue", type=int, default=default("payload_log_queue", str(PAYLOAD_LOG_QUEUE)),
                        help="records held at most while the store is slow; more are dropped and counted "
                        f"[KILN_PAYLOAD_LOG_QUEUE] ({PAYLOAD_LOG_QUEUE})")
    parser.add_argument("--payload-log-batch", type=int, default=default("payload_log_batch", str(PAYLOAD_LOG_BATCH)),
                        help=f"records per object at most [KILN_PAYLOAD_LOG_BATCH] ({PAYLOAD_LOG_BATCH})")
    parser.add_argument("--payload-log-flush-s", type=float, default=default("payload_log_flush_s", "5"),
                        help="records wait at most this long before they are written [KILN_PAYLOAD_LOG_FLUSH_S] (5)")
    parser.add_argument("--log-level", default=default("log_level", "info"),
                        choices=["critical", "error", "warning", "info", "debug"], help="[KILN_LOG_LEVEL]")
    args = parser.parse_args(argv)

    if args.allow_unsafe_formats is None:
        text = default("allow_unsafe_formats", "false")
        args.allow_unsafe_formats = _bool(text)
        if args.allow_unsafe_formats is None:
            parser.error(f"KILN_ALLOW_UNSAFE_FORMATS={text!r} is not a boolean (true/false)")

    if not args.model_uri:
        parser.error("--model (or KILN_MODEL_URI) is required")
    if not args.name:
        parser.error("--name (or KILN_MODEL_NAME) is required")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    for flag in ("max_body_bytes", "max_elements", "max_string_length", "max_url_bytes", "max_header_bytes",
                 "max_headers", "max_connections"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    for flag in ("request_timeout_s", "keep_alive_timeout_s"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    if not 0 <= args.grpc_port <= 65535:
        parser.error(f"--grpc-port {args.grpc_port} is not a TCP port")
    if args.grpc_port and args.grpc_port == args.port:
        parser.error(f"--grpc-port {args.grpc_port} is the HTTP port (--port); give gRPC a port of its own")
    if not 0 <= args.payload_log_sample_rate <= 1:
        parser.error("--payload-log-sample-rate must be between 0 and 1")
    if args.payload_log_uri and args.payload_log_sample_rate_file:
        try:
            args.payload_log_sample_rate = sample_rate_file.read(args.payload_log_sample_rate_file)
        except (OSError, ValueError) as exc:
            parser.error(f"--payload-log-sample-rate-file: {exc}")
    if args.payload_log_compression not in PAYLOAD_LOG_CODECS:  # argparse checks choices of flags, not of env
        parser.error(f"--payload-log-compression {args.payload_log_compression!r}: not one of "
                     f"{', '.join(PAYLOAD_LOG_CODECS)}")
    if args.payload_log_uri and not args.payload_log_uri.startswith("s3://"):
        parser.error(f"--payload-log-uri {args.payload_log_uri!r} is not an s3:// prefix")
    for flag in ("payload_log_queue", "payload_log_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be positive")
    if not args.payload_log_flush_s > 0:
        parser.error("--payload-log-flush-s must be positive")
    if args.batch_max_size < 1:
        parser.error("--batch-max-size must be at least 1")
    if args.batch_max_latency_ms < 0:
        parser.error("--batch-max-latency-ms must not be negative")
    sha = args.expected_sha256.strip().lower()
    if sha and not re.fullmatch(r"[0-9a-f]{64}", sha):
        parser.error(f"--expected-sha256 {args.expected_sha256!r} is not 64 hex digits")
    card_sha = args.expected_card_sha256.strip().lower()
    if card_sha and not re.fullmatch(r"[0-9a-f]{64}", card_sha):
        parser.error(f"--expected-card-sha256 {args.expected_card_sha256!r} is not 64 hex digits")
    if "/" in args.name or not args.name.strip():
        parser.error(f"--name {args.name!r} must be a non-empty name without '/'")

    return Config(
        model_uri=args.model_uri,
        name=args.name,
        port=args.port,
        host=args.host,
        workers=args.workers,
        version=args.version or version_from_uri(args.model_uri),
        expected_sha256=sha,
        expected_card_sha256=card_sha,
        allow_unsafe_formats=args.allow_unsafe_formats,
        runtime=args.runtime,
        cache_dir=args.cache_dir,
        max_body_bytes=args.max_body_bytes,
        max_elements=args.max_elements,
        max_string_length=args.max_string_length,
        max_url_bytes=args.max_url_bytes,
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        request_timeout_s=args.request_timeout_s,
        keep_alive_timeout_s=args.keep_alive_timeout_s,
        max_connections=args.max_connections,
        batch_max_size=args.batch_max_size,
        batch_max_latency_ms=args.batch_max_latency_ms,
        graceful_timeout_s=args.graceful_timeout_s,
        log_level=args.log_level,
        grpc_port=args.grpc_port,
        payload_log_uri=args.payload_log_uri,
        payload_log_sample_rate=args.payload_log_sample_rate,
        payload_log_sample_rate_file=args.payload_log_sample_rate_file,
        payload_log_compression=args.payload_log_compression,
        payload_log_queue=args.payload_log_queue,
        payload_log_batch=args.payload_log_batch,
        payload_log_flush_s=args.payload_log_flush_s,
    )
