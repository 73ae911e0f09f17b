"""Writing a version's files to --output (s3://bucket/prefix or a local directory).

Everything is built in a local staging directory first; then artifacts and the report are
uploaded, and modelcard.json LAST: it is the commit marker, and a reader treats a prefix
without one as unfinished. Locally, each file is written under a temporary name and
os.replace()d into place, the card last too. Transient S3 errors are retried with backoff
(on top of botocore's own retries), and each upload is checked by size.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from kiln_contract import MODEL_CARD
from kiln_trainer.errors import BadInput, TrainerError

log = logging.getLogger(__name__)

ATTEMPTS = 3  # on top of botocore's own retries (standard mode, 8 attempts)
BACKOFF_S = 1.0
CONTENT_TYPES = {".json": "application/json", ".html": "text/html; charset=utf-8", ".onnx": "application/octet-stream"}
TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                   "503", "500", "502", "504", "Throttling", "ThrottlingException"}


class PublishError(TrainerError):
    pass


def open_output(uri: str):
    if uri.startswith("s3://"):
        if not uri[5:].split("/", 1)[0]:
            raise BadInput("--output", f"{uri} names no bucket")
        return S3Output(uri)
    if "://" in uri and not uri.startswith("file://"):
        raise BadInput("--output", f"must be s3://bucket/prefix or a local directory, not {uri}")
    return LocalOutput(uri)


class LocalOutput:
    def __init__(self, uri: str):
        self.path = Path(uri[len("file://"):] if uri.startswith("file://") else uri).resolve()
        self.uri = str(self.path)

    def existing_card(self) -> bytes | None:
        card = self.path / MODEL_CARD
        return card.read_bytes() if card.exists() else None

    def put(self, source: Path, name: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the files from a server running as another user
            os.replace(tmp, self.path / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class S3Output:
    def __init__(self, uri: str):
        from kiln_contract.storage import parse_s3, s3_client

        self.loc = parse_s3(uri)
        self.uri = self.loc.uri
        self.client = s3_client()

    def _retry(self, what: str, fn):
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        for attempt in range(ATTEMPTS):
            try:
                return fn()
            except (ClientError, BotoCoreError, S3UploadFailedError) as exc:
                code = exc.response.get("Error", {}).get("Code", "") if isinstance(exc, ClientError) else ""
                transient = not isinstance(exc, ClientError) or code in TRANSIENT_CODES
                if not transient or attempt + 1 == ATTEMPTS:
                    raise PublishError(f"{what} failed: {code or type(exc).__name__}: {exc}") from exc
                delay = BACKOFF_S * 2**attempt
                log.warning("%s: %s; retrying in %.1fs", what, code or type(exc).__name__, delay)
                time.sleep(delay)

    def existing_card(self) -> bytes | None:
        from botocore.exceptions import ClientError

        key = self.loc.child(MODEL_CARD).key

        def get():
            try:
                return self.client.get_object(Bucket=self.loc.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                    return None
                raise

        return self._retry(f"reading s3://{self.loc.bucket}/{key}", get)

    def put(self, source: Path, name: str) -> None:
        from kiln_contract.checksums import sha256_file

        key = self.loc.child(name).key
        size = source.stat().st_size
        extra = {"ContentType": CONTENT_TYPES.get(source.suffix, "application/octet-stream"),
                 "Metadata": {"sha256": sha256_file(source)}}

        def upload():
            self.client.upload_file(str(source), self.loc.bucket, key, ExtraArgs=extra)
            head = self.client.head_object(Bucket=self.loc.bucket, Key=key)
            if head["ContentLength"] != size:
                raise PublishError(f"s3://{self.loc.bucket}/{key}: {head['ContentLength']} bytes, expected {size}")

        self._retry(f"uploading s3://{self.loc.bucket}/{key}", upload)


def publish(output, staging: Path, files: list[str], card_bytes_fn) -> float:
    """Upload files, then the card (built by card_bytes_fn(upload_seconds)) last; return seconds."""
    started = time.monotonic()
    for name in files:
        output.put(staging / name, name)
        log.info("wrote %s/%s", output.uri, name)
    elapsed = time.monotonic() - started
    card_path = staging / MODEL_CARD
    card_path.write_bytes(card_bytes_fn(elapsed))
    output.put(card_path, MODEL_CARD)
    log.info("committed %s/%s", output.uri, MODEL_CARD)
    return time.monotonic() - started
