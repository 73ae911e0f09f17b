"""Reading the dataset a spec names: builtin:<name>, file://, s3:// or https://, as CSV or Parquet.

The bytes read are hashed (sha256) so a version records exactly what it was trained on,
and a `dataset.sha256` pin that does not match stops the run before training. Builtin
datasets are hashed over a canonical CSV serialisation of their frame.

Files and S3 objects are never held in memory as bytes: a local file is hashed in 1 MiB chunks
and parsed from its path; an S3 object is streamed to a temporary file (hashed on the way, in
chunks) and parsed from there, so a run's memory is the DataFrame's plus the parser's, whatever
the file's size. https:// bodies (capped by KILN_DATASET_MAX_BYTES) are read into memory.
"""

from __future__ import annotations

import io
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from kiln_contract.checksums import sha256_bytes
from kiln_trainer.errors import BadInput, DataUnavailable, TrainerError

log = logging.getLogger(__name__)

BUILTIN = ("iris", "wine", "breast_cancer", "digits", "diabetes")
BUILTIN_TARGET = "target"
HTTP_TIMEOUT = (5, 60)  # connect, read (seconds)
HTTP_ATTEMPTS = 3
# The body is held in memory and then parsed, so the cap stays well under a trainer's memory.
DATASET_MAX_BYTES = 1 << 30


@dataclass
class Dataset:
    frame: pd.DataFrame
    uri: str
    format: str
    sha256: str
    bytes: int
    default_target: str | None = None

    @property
    def rows(self) -> int:
        return len(self.frame)

    def card(self) -> dict:
        return {
            "uri": self.uri, "format": self.format, "sha256": self.sha256, "bytes": self.bytes,
            "rows": self.rows, "columns": [str(c) for c in self.frame.columns],
        }


def canonical_csv(frame: pd.DataFrame) -> bytes:
    """The byte form a builtin frame is hashed in: header, no index, '\\n' line ends, repr floats."""
    return frame.to_csv(index=False, lineterminator="\n").encode()


def _builtin(name: str) -> pd.DataFrame:
    from sklearn import datasets as skd

    if name not in BUILTIN:
        raise BadInput("spec.dataset.uri", f"unknown builtin dataset {name!r}; one of: {', '.join(BUILTIN)}")
    loader = getattr(skd, f"load_{name}")
    return loader(as_frame=True).frame  # shipped with scikit-learn: no network


def infer_format(uri: str, declared: str | None) -> str:
    if uri.startswith("builtin:"):
        if declared not in (None, "builtin"):
            raise BadInput("spec.dataset.format", f"a builtin: dataset has format builtin, not {declared}")
        return "builtin"
    if declared:
        if declared == "builtin":
            raise BadInput("spec.dataset.format", "format builtin needs a builtin:<name> uri")
        return declared
    path = urlparse(uri).path.lower()
    if path.endswith((".csv", ".csv.gz", ".tsv")):
        return "csv"
    if path.endswith((".parquet", ".pq", ".parq")):
        return "parquet"
    raise BadInput("spec.dataset.format", f"cannot infer the format of {uri}; set csv or parquet")


def _read_file(uri: str) -> bytes:
    parsed = urlparse(uri)
    path = Path(unquote(parsed.netloc + parsed.path))
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise DataUnavailable(f"dataset {uri} does not exist") from exc
    except OSError as exc:
        raise DataUnavailable(f"cannot read dataset {uri}: {exc.strerror or exc}") from exc


def _read_s3(uri: str) -> bytes:
    from botocore.exceptions import BotoCoreError, ClientError

    from kiln_contract.storage import parse_s3, s3_client

    loc = parse_s3(uri)
    if not loc.key:
        raise BadInput("spec.dataset.uri", f"{uri} names a bucket, not an object")
    try:
        obj = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)
        return obj["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise DataUnavailable(f"cannot read dataset {uri}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise DataUnavailable(f"cannot reach S3 for dataset {uri}: {exc}") from exc


def dataset_max_bytes() -> int:
    """The largest https:// dataset read: KILN_DATASET_MAX_BYTES, else DATASET_MAX_BYTES."""
    raw = os.environ.get("KILN_DATASET_MAX_BYTES")
    if not raw:
        return DATASET_MAX_BYTES
    if not raw.isdigit() or int(raw) <= 0:
        raise TrainerError(f"KILN_DATASET_MAX_BYTES={raw!r} is not a positive number of bytes")
    return int(raw)


def _read_https(uri: str) -> bytes:
    from kiln_contract import fetch

    last: fetch.FetchError | None = None
    for attempt in range(HTTP_ATTEMPTS):
        try:
            # The shared fetcher: guard, pinned address, size cap, overall deadline, no redirects.
            return fetch.fetch_bytes_sync(uri, max_bytes=dataset_max_bytes(), connect_timeout=HTTP_TIMEOUT[0],
                                          read_timeout=HTTP_TIMEOUT[1]).data
        except fetch.UnsafeURL as exc:
            raise DataUnavailable(f"cannot fetch dataset {exc}") from exc
        except fetch.FetchError as exc:
            # exc.detail is not logged: the trainer's log is the user's to read, and the cause of a
            # failed connection would tell them which ports answer.
            last = exc
            if not exc.retryable:
                break
        if attempt + 1 < HTTP_ATTEMPTS:
            time.sleep(0.5 * 2**attempt)
    raise DataUnavailable(f"cannot fetch dataset {uri}: {last.why}")


def _hash_file(path: Path, uri: str) -> tuple[str, int]:
    from kiln_contract.checksums import sha256_file

    try:
        return sha256_file(path), path.stat().st_size
    except FileNotFoundError as exc:
        raise DataUnavailable(f"dataset {uri} does not exist") from exc
    except OSError as exc:
        raise DataUnavailable(f"cannot read dataset {uri}: {exc.strerror or exc}") from exc


def _download_s3(uri: str, dest: Path) -> tuple[str, int]:
    """Stream an S3 object to dest in chunks, hashing on the way: (sha256, bytes)."""
    import hashlib

    from botocore.exceptions import BotoCoreError, ClientError

    from kiln_contract.storage import parse_s3, s3_client

    loc = parse_s3(uri)
    if not loc.key:
        raise BadInput("spec.dataset.uri", f"{uri} names a bucket, not an object")
    digest, size = hashlib.sha256(), 0
    try:
        body = s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"]
        with open(dest, "wb") as out:
            for chunk in body.iter_chunks(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                size += len(chunk)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise DataUnavailable(f"cannot read dataset {uri}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise DataUnavailable(f"cannot reach S3 for dataset {uri}: {exc}") from exc
    return digest.hexdigest(), size


def _parse(source, fmt: str, uri: str) -> pd.DataFrame:
    """A DataFrame from a path or a file-like object."""
    try:
        if fmt == "parquet":
            return pd.read_parquet(source)
        path = urlparse(uri).path.lower()
        compression = "gzip" if path.endswith(".gz") else None
        sep = "\t" if path.endswith(".tsv") else ","
        return pd.read_csv(source, compression=compression, sep=sep)
    except Exception as exc:  # pandas/pyarrow raise many types for malformed input
        raise BadInput("spec.dataset", f"{uri} is not readable as {fmt}: {type(exc).__name__}: {exc}") from exc


def read_bytes(uri: str) -> bytes:
    if uri.startswith("file://"):
        return _read_file(uri)
    if uri.startswith("s3://"):
        return _read_s3(uri)
    if uri.startswith("https://"):
        return _read_https(uri)
    raise BadInput("spec.dataset.uri", f"unsupported scheme in {uri}")


def parse_bytes(data: bytes, fmt: str, uri: str) -> pd.DataFrame:
    return _parse(io.BytesIO(data), fmt, uri)


def _check_pin(dataset_spec: dict, digest: str, uri: str) -> None:
    pin = dataset_spec.get("sha256")
    if pin and pin.lower() != digest:
        raise BadInput("spec.dataset.sha256", f"pin {pin} does not match the data read from {uri} ({digest})")


def load(dataset_spec: dict) -> Dataset:
    uri = dataset_spec["uri"]
    fmt = infer_format(uri, dataset_spec.get("format"))
    if fmt == "builtin":
        frame = _builtin(uri.split(":", 1)[1])
        data = canonical_csv(frame)
        ds = Dataset(frame, uri, fmt, sha256_bytes(data), len(data), default_target=BUILTIN_TARGET)
    elif uri.startswith("file://"):
        parsed = urlparse(uri)
        path = Path(unquote(parsed.netloc + parsed.path))
        digest, size = _hash_file(path, uri)
        _check_pin(dataset_spec, digest, uri)  # before parsing: a mismatch costs no parse
        ds = Dataset(_parse(path, fmt, uri), uri, fmt, digest, size)
    elif uri.startswith("s3://"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="kiln-dataset-") as tmp:
            local = Path(tmp) / "data"
            digest, size = _download_s3(uri, local)
            _check_pin(dataset_spec, digest, uri)
            ds = Dataset(_parse(local, fmt, uri), uri, fmt, digest, size)
    else:
        data = read_bytes(uri)
        frame = parse_bytes(data, fmt, uri)
        ds = Dataset(frame, uri, fmt, sha256_bytes(data), len(data))
        del data
    _check_pin(dataset_spec, ds.sha256, uri)
    if ds.rows == 0:
        raise BadInput("spec.dataset", f"{uri} holds no rows")
    log.info("dataset %s: %d rows, %d columns, sha256 %s", uri, ds.rows, ds.frame.shape[1], ds.sha256)
    return ds
