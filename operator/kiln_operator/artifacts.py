"""The operator's view of storage: model cards (the registry's durable truth) and BYO artifacts."""

from __future__ import annotations

import json
import logging
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

from botocore.exceptions import ClientError

from kiln_contract import MODEL_CARD, card, checksums, storage
from kiln_contract import fetch as remote
from kiln_operator import registry

log = logging.getLogger(__name__)

_VERSION_DIR = re.compile(r"/v(\d+)/$")


class StoredCard(NamedTuple):
    card: dict
    sha256: str  # of the card's bytes as stored: recorded in Model status, checked by the server before use


def read_card(prefix: str) -> StoredCard | None:
    """The committed model card under a version prefix, or None while the version is unfinished."""
    loc = storage.parse_s3(storage.card_uri(prefix))
    try:
        body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return StoredCard(card.loads(body), checksums.sha256_bytes(body))


class StoredModels:
    """Which Model directories a storage prefix holds: one listing per prefix, not one per Model.

    A new Model is checked against storage once (a cluster rebuilt from Git adopts what S3 holds);
    with hundreds of Models created at once, one delimited listing of the prefix answers for all of
    them. Directories this operator creates (every reservation) are noted as they are made; the
    listing itself is refreshed after `ttl` seconds, for writers other than this operator.
    """

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._seen: dict[str, tuple[float, set[str]]] = {}
        self._lock = threading.Lock()

    def holds(self, storage_uri: str, model: str) -> bool:
        with self._lock:  # one listing at a time per operator: concurrent callers wait for its answer
            hit = self._seen.get(storage_uri)
            if hit is None or time.monotonic() - hit[0] > self.ttl:
                hit = self._seen[storage_uri] = (time.monotonic(), _model_dirs(storage_uri))
            return model in hit[1]

    def note(self, storage_uri: str, model: str) -> None:
        with self._lock:
            if storage_uri in self._seen:
                self._seen[storage_uri][1].add(model)


def _model_dirs(storage_uri: str) -> set[str]:
    base = storage.parse_s3(storage_uri)
    prefix = base.key.rstrip("/") + "/" if base.key else ""
    names = set()
    for page in storage.s3_client().get_paginator("list_objects_v2").paginate(
            Bucket=base.bucket, Prefix=prefix, Delimiter="/"):
        for common in page.get("CommonPrefixes", []):
            names.add(common["Prefix"][len(prefix):].rstrip("/"))
    return names


STORED = StoredModels()


def list_cards(storage_uri: str, model: str, skip: set[int] | frozenset = frozenset()
               ) -> dict[int, tuple[str, StoredCard]]:
    """Every committed version of a model in storage: {version: (prefix uri, stored card)}; the cards of
    versions in `skip` (already known from the history index) are not read."""
    base = storage.parse_s3(storage_uri).child(model)
    s3 = storage.s3_client()
    found: dict[int, tuple[str, dict]] = {}
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=base.bucket, Prefix=base.key + "/", Delimiter="/")
    for page in pages:
        for common in page.get("CommonPrefixes", []):
            match = _VERSION_DIR.search(common["Prefix"])
            if not match or int(match.group(1)) in skip:
                continue
            prefix = f"s3://{base.bucket}/{common['Prefix'].rstrip('/')}"
            found_card = read_card(prefix)
            if found_card is not None:  # a prefix without a card is an unfinished upload
                found[int(match.group(1))] = (prefix, found_card)
    return found


# --- the history index: Model versions that left status (registry.to_history) ------------------------
HISTORY_DIR = "index"
_HISTORY_PAGE = re.compile(r"/versions-(\d+)\.json$")


def history_uri(storage_uri: str, model: str) -> str:
    return storage.parse_s3(storage_uri).child(model, HISTORY_DIR).uri + "/"


def _page_location(storage_uri: str, model: str, page: int):
    return storage.parse_s3(storage_uri).child(model, HISTORY_DIR, f"versions-{page:05d}.json")


def _read_page(storage_uri: str, model: str, page: int) -> list[dict]:
    loc = _page_location(storage_uri, model, page)
    try:
        body = storage.s3_client().get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return []
        raise
    return list(json.loads(body).get("versions") or [])


def read_history(storage_uri: str, model: str, numbers: set[int] | None = None) -> dict[int, dict]:
    """{version: entry} from the history index: every index object, or only those holding `numbers`."""
    if numbers is not None:
        pages = registry.history_pages(numbers)
    else:
        base = storage.parse_s3(history_uri(storage_uri, model))
        pages = set()
        for listing in storage.s3_client().get_paginator("list_objects_v2").paginate(Bucket=base.bucket,
                                                                                    Prefix=base.key):
            for obj in listing.get("Contents", []):
                match = _HISTORY_PAGE.search(obj["Key"])
                if match:
                    pages.add(int(match.group(1)))
    out = {}
    for page in sorted(pages):
        out.update({int(v["version"]): v for v in _read_page(storage_uri, model, page)})
    return out if numbers is None else {n: v for n, v in out.items() if n in numbers}


def write_history(storage_uri: str, model: str, entries: list[dict], known: dict | None) -> dict:
    """Write entries into their index objects; returns the new status.history ({uri, count, highest}).

    Each index object is read, merged and written whole: an S3 PUT replaces an object atomically, so a
    reader sees the old or the new one. Only the operator's Model reconcile writes here (one per Model
    at a time). `known`: the status.history before, whose count is carried on; without it every index
    object is read to count.
    """
    s3 = storage.s3_client()
    known = known or {}
    if known.get("uri") and known.get("count") is not None:
        count, existing = known["count"], None
    else:  # nothing known: one read of every index object counts them and gives each page's entries
        existing = read_history(storage_uri, model)
        count = len(existing)
    added = 0
    for page, mine in sorted(registry.by_history_page(entries).items()):
        before = _read_page(storage_uri, model, page) if existing is None else \
            [existing[n] for n in sorted(existing) if registry.history_page(n) == page]
        merged = registry.merge_history(before, mine)
        added += len(merged) - len(before)
        if merged == before:
            continue
        loc = _page_location(storage_uri, model, page)
        body = json.dumps({"model": model, "page": page, "versions": merged}, sort_keys=True,
                          separators=(",", ":")).encode()
        s3.put_object(Bucket=loc.bucket, Key=loc.key, Body=body, ContentType="application/json")
    highest = max([v["version"] for v in entries] + [known.get("highest") or 0])
    return {"uri": history_uri(storage_uri, model), "count": count + added, "highest": highest}


def fetch(uri: str, dest: Path, sha256: str | None = None) -> None:
    """Download an external artifact (s3:// or https://) to dest; with sha256, only if it matches.

    file:// is refused: it would read the operator's own files (its service-account token).
    https:// goes through kiln_contract.fetch: the SSRF guard, pinned to the checked address,
    capped in size and time, no redirects. A mismatching or cut-short download leaves no dest.
    """
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        loc = storage.parse_s3(uri)
        storage.s3_client().download_file(loc.bucket, loc.key, str(dest))
        if sha256 and checksums.sha256_file(dest) != sha256.lower():
            dest.unlink()
            raise ValueError(f"sha256 mismatch: {uri} does not have sha256 {sha256}")
    elif parsed.scheme == "https":
        try:
            remote.fetch_to_file_sync(uri, dest, sha256=sha256)
        except remote.FetchError as exc:
            if exc.detail:
                # The cause stays in the operator's log: in the Model's status it would tell a
                # user which ports answer on the addresses the guard allows.
                log.warning("BYO artifact %s: %s (%s)", uri, exc.why, exc.detail)
            raise
    else:
        raise ValueError(f"unsupported artifact URI {uri!r}: give s3:// or https://")


def external_format(entry: dict) -> str:
    """The artifact format of a bring-your-own entry (spec.versions[]), checked before anything is fetched."""
    fmt = entry.get("format") or Path(urlparse(entry["uri"]).path).suffix.lstrip(".")
    if fmt not in card.FORMAT_FILES:
        raise ValueError(f"format {fmt!r} unknown; give one of {', '.join(card.FORMAT_FILES)}")
    return fmt


def import_external(entry: dict, prefix: str, model: str, version: int, now: str,
                    downloaded: Path | None = None) -> StoredCard:
    """Verify an external artifact's sha256, copy it under prefix with a model card; return the card.

    downloaded: the file already fetched and verified (https, kiln_operator.downloads); else it is fetched
    here (s3://). Nothing is written to the version's prefix unless the checksum matches.
    """
    fmt = external_format(entry)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / card.FORMAT_FILES[fmt]
        if downloaded is None:
            # The digest actually read is never echoed: it would let a user probe files they cannot read.
            fetch(entry["uri"], local, sha256=entry["sha256"])
        else:
            local = downloaded
        actual = entry["sha256"].lower()
        model_card = {
            "metrics": entry.get("metrics") or {}, "gates": [], "params": {},
            "artifacts": [{"file": card.FORMAT_FILES[fmt], "format": fmt, "sha256": actual,
                           "bytes": local.stat().st_size}],
            "dataset": {}, "features": {}, "libraries": {}, "spec": {"external": entry}, "timings": {},
            "device": {}, "task": entry.get("task"), "source": "external", "model": model, "version": version,
            card.CREATED_AT: now,
        }
        s3 = storage.s3_client()
        loc = storage.parse_s3(prefix)
        s3.upload_file(str(local), loc.bucket, loc.child(card.FORMAT_FILES[fmt]).key)
        # The card goes last: it is the commit marker.
        body = card.dumps(model_card)
        s3.put_object(Bucket=loc.bucket, Key=loc.child(MODEL_CARD).key, Body=body)
    return StoredCard(model_card, checksums.sha256_bytes(body))


def delete_prefix(uri: str) -> int:
    loc = storage.parse_s3(uri)
    s3 = storage.s3_client()
    removed = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=loc.key.rstrip("/") + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=loc.bucket, Delete={"Objects": keys})
            removed += len(keys)
    return removed
