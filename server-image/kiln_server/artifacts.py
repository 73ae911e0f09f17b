"""Finding, downloading and verifying a version's artifact, before anything is deserialised.

A version directory (local, or an s3:// prefix) holds modelcard.json and one file per
exported format. The card is read first; it names each artifact's sha256 and size. When the
operator pins the card (--expected-card-sha256), the card's bytes, as read, must have that
sha256 before any of it is parsed: the card says which artifact to trust, which columns the
features are in and how they are named, so a card edited in storage would otherwise be
believed. The chosen artifact's bytes are checked against the card, and against the operator's
pin (--expected-sha256) when one is given. Only then may a runtime parse them, and it parses
exactly the bytes that were hashed (no second read of the file between check and use).
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kiln_contract import MODEL_CARD
from kiln_contract import card as cards
from kiln_contract.checksums import sha256_bytes, sha256_file
from kiln_server.errors import StartupError

log = logging.getLogger("kiln_server")

RUNTIME_FORMATS = {"onnx": ("onnx",), "sklearn": ("joblib", "pkl")}


@dataclass(frozen=True)
class Artifact:
    """A verified artifact on local disk and the card that vouches for it."""

    path: str
    format: str
    sha256: str
    runtime: str
    card: dict


def cache_root(configured: str, uri: str) -> Path:
    """Where a remote version's files go: KILN_CACHE_DIR, or one directory per URI under the temp dir.

    The same URI maps to the same directory, so a restarted container reuses what it downloaded
    (re-verified every time) instead of filling /tmp with copies.
    """
    if configured:
        root = Path(configured)
    else:
        root = Path(tempfile.gettempdir()) / "kiln-models" / sha256_bytes(uri.encode())[:16]
    root.mkdir(parents=True, exist_ok=True)
    return root


def read_card(uri: str, cache_dir: str, expected_sha256: str = "") -> tuple[dict, Path]:
    """Return the card of the version at uri and the local directory its files are (or go) in.

    With expected_sha256 (the operator's pin of the card), the bytes read must hash to it before
    they are parsed.
    """
    if uri.startswith("s3://"):
        local = cache_root(cache_dir, uri)
        data = _s3_get(uri, MODEL_CARD, local)
    else:
        local = Path(uri.removeprefix("file://"))
        if not local.is_dir():
            raise StartupError(f"model directory {uri} does not exist")
        try:
            data = (local / MODEL_CARD).read_bytes()
        except FileNotFoundError:
            raise StartupError(
                f"{uri} has no {MODEL_CARD}: the version is not committed (the card is written last)"
            ) from None
    verify_card(data, expected_sha256, f"{uri.rstrip('/')}/{MODEL_CARD}")
    try:
        return cards.loads(data), local
    except cards.CardError as exc:
        raise StartupError(f"{uri}/{MODEL_CARD}: {exc}") from exc


def verify_card(data: bytes, expected_sha256: str, what: str) -> None:
    """Raise StartupError unless the card's bytes have the pinned sha256 (no pin: nothing to check).

    The message leaves the actual digest out: a log reader should not learn what to pin to make a
    tampered card pass.
    """
    if expected_sha256 and sha256_bytes(data) != expected_sha256.lower():
        raise StartupError(
            f"sha256 mismatch for {what}: the model card does not have the sha256 pinned by "
            f"--expected-card-sha256 (KILN_EXPECTED_CARD_SHA256), {expected_sha256.lower()}; refusing to start"
        )


def choose(card: dict, runtime: str, allow_unsafe: bool, uri: str) -> tuple[str, dict]:
    """Pick (runtime, artifact entry) under the rules: onnx by default, unsafe formats only when allowed."""
    listed = [a["format"] for a in card["artifacts"]]
    if not runtime:
        runtime = "onnx" if "onnx" in listed else "sklearn"
    entry = next((cards.artifact(card, f) for f in RUNTIME_FORMATS[runtime] if f in listed), None)
    if entry is None:
        wanted = " or ".join(RUNTIME_FORMATS[runtime])
        raise StartupError(
            f"runtime {runtime} needs a {wanted} artifact, but the card of {uri} lists only: "
            f"{', '.join(listed) or 'nothing'}"
        )
    if entry["format"] in cards.UNSAFE_FORMATS and not allow_unsafe:
        raise StartupError(
            f"refusing to load {entry['file']}: format {entry['format']!r} can run arbitrary code when "
            f"loaded. Serve the ONNX artifact instead, or opt in with --allow-unsafe-formats "
            f"(KILN_ALLOW_UNSAFE_FORMATS=true; Deployment spec.allowUnsafeFormats: true)"
        )
    return runtime, entry


def fetch(uri: str, cache_dir: str, runtime: str, allow_unsafe: bool, expected_sha256: str,
          expected_card_sha256: str = "") -> Artifact:
    """Read (and verify) the card, choose the artifact, download it when remote, and verify it.
    Deserialises nothing but the verified card."""
    card, local = read_card(uri, cache_dir, expected_card_sha256)
    runtime, entry = choose(card, runtime, allow_unsafe, uri)
    name = entry["file"]
    if "/" in name or name in ("", ".", ".."):
        raise StartupError(f"card of {uri} names artifact file {name!r}, which is not a plain file name")
    path = local / name
    if uri.startswith("s3://"):
        if not (path.is_file() and sha256_file(path) == str(entry["sha256"]).lower()):
            _s3_get(uri, name, local)
        else:
            log.info("reusing %s, downloaded before", path)
    elif not path.is_file():
        raise StartupError(f"{uri} lacks {name}, which its card lists")
    data = path.read_bytes()
    verify(data, entry, expected_sha256, f"{uri.rstrip('/')}/{name}")
    return Artifact(str(path), entry["format"], entry["sha256"].lower(), runtime, card)


def verify(data: bytes, entry: dict, expected_sha256: str, what: str) -> None:
    """Raise StartupError unless data is what the card (and the pin, when given) says it is."""
    actual = sha256_bytes(data)
    if actual != str(entry["sha256"]).lower():
        raise StartupError(
            f"sha256 mismatch for {what}: the model card says {entry['sha256']}, the file has {actual}; "
            f"refusing to load it"
        )
    if expected_sha256 and actual != expected_sha256.lower():
        raise StartupError(
            f"sha256 mismatch for {what}: expected {expected_sha256} (--expected-sha256), "
            f"the file has {actual}; refusing to load it"
        )
    size = entry.get("bytes")
    if isinstance(size, int) and size != len(data):
        raise StartupError(f"size mismatch for {what}: the model card says {size} bytes, the file has {len(data)}")


def load_verified(artifact: Artifact, expected_sha256: str) -> bytes:
    """The artifact's bytes, hashed again here: what a worker process parses is what was checked."""
    data = Path(artifact.path).read_bytes()
    entry = cards.artifact(artifact.card, artifact.format)
    verify(data, entry, expected_sha256, artifact.path)
    return data


def _s3_get(uri: str, name: str, local: Path) -> bytes:
    """Download one file of the version at uri into local (atomically: .part, then rename)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from kiln_contract.storage import parse_s3, s3_client

    loc = parse_s3(uri).child(name)
    target = local / name
    part = local / f".{name}.part"
    try:
        s3_client().download_file(loc.bucket, loc.key, str(part))
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            hint = " (the version is not committed: the card is written last)" if name == MODEL_CARD else ""
            raise StartupError(f"{loc.uri} does not exist{hint}") from exc
        raise StartupError(f"cannot download {loc.uri}: {exc}") from exc
    except BotoCoreError as exc:
        raise StartupError(f"cannot download {loc.uri}: {exc}") from exc
    os.replace(part, target)
    log.info("downloaded %s to %s", loc.uri, target)
    return target.read_bytes()
