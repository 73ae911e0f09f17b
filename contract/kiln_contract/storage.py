"""Storage URIs and the S3 client every component builds the same way.

Layout of a Model's versions under its storage prefix:

    s3://<bucket>/<prefix>/<model>/v<version>/   model.onnx, model.joblib, report.html,
                                                  modelcard.json  (written last: the commit marker)
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from urllib.parse import urlparse

from kiln_contract import MODEL_CARD


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading slash; may be "" for the bucket root

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}" if self.key else f"s3://{self.bucket}"

    def child(self, *parts: str) -> S3Location:
        key = "/".join(p.strip("/") for p in (self.key, *parts) if p.strip("/"))
        return S3Location(self.bucket, key)


def parse_s3(uri: str) -> S3Location:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def version_prefix(storage: str, model: str, version: int) -> str:
    """URI of one version's directory under a Model's storage prefix."""
    return f"{storage.rstrip('/')}/{model}/v{version}"


def card_uri(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/{MODEL_CARD}"


def s3_settings() -> dict:
    """boto3 client keyword arguments from the environment.

    KILN_S3_ENDPOINT (or AWS_ENDPOINT_URL) points at any S3-compatible store;
    credentials come from the standard AWS_* variables.
    """
    endpoint = os.environ.get("KILN_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")
    settings = {"region_name": os.environ.get("AWS_REGION", "us-east-1")}
    if endpoint:
        settings["endpoint_url"] = endpoint
    return settings


def s3_client():
    """One boto3 S3 client per process and settings, made once under a lock.

    A client is thread-safe once made, but making one is not (boto3 sessions are shared state),
    and each costs tens of milliseconds: made per call, 500 new Models cost seconds of CPU.
    """
    settings = s3_settings()
    key = (tuple(sorted(settings.items())), os.environ.get("AWS_ACCESS_KEY_ID"),
           os.environ.get("AWS_SECRET_ACCESS_KEY"))
    with _CLIENTS_LOCK:
        found = _CLIENTS.get(key)
        if found is None:
            found = _CLIENTS[key] = _new_client(settings)
        return found


_CLIENTS: dict = {}
_CLIENTS_LOCK = threading.Lock()


def _new_client(settings: dict):
    import boto3
    from botocore.config import Config

    # Path-style addressing: S3-compatible stores on loopback have no virtual-host DNS.
    config = Config(
        s3={"addressing_style": "path"},
        retries={"max_attempts": 8, "mode": "standard"},
        connect_timeout=5,
        read_timeout=60,
        max_pool_connections=32,
    )
    return boto3.session.Session().client("s3", config=config, **settings)
