"""What a namespace may reach: its storage prefixes and the scheduling keys its training pods may carry.

A tenant is someone who may create Kiln objects in one namespace. Everything the operator does in
S3 it does with its own credentials, so every S3 location a spec names is checked against the
prefixes of the spec's namespace before anything is read, written or deleted:

- read-write (Model storage: versions written by training runs and imports, deleted by
  deleteArtifacts): the operator's default `<KILN_DEFAULT_STORAGE>/<namespace>`, plus what
  KILN_STORAGE_PREFIXES adds;
- read-only (datasets, bring-your-own artifacts): the read-write ones plus KILN_READ_PREFIXES.

Both settings are JSON objects {namespace: [s3 prefix, ...]}; the key "*" applies to every
namespace, and "{namespace}" in a prefix is replaced by the namespace (the chart renders them from
storage.prefixes and storage.readPrefixes). Prefixes match on whole path segments: s3://kiln/models/a
does not contain s3://kiln/models/ab. A URI with "." or ".." segments, empty segments or a backslash
is refused outright: S3-compatible stores with a filesystem behind them (SeaweedFS's filer) may
normalise such keys to a path outside the prefix that was checked.

Pure functions of (namespace, settings, spec); unit-tested without a cluster.
"""

from __future__ import annotations

import json
import os
import re

from kiln_contract import storage

_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")


class NotAllowed(ValueError):
    """A spec field names something its namespace may not use; `field` is the dotted path."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def parse_prefix_map(text: str, setting: str) -> dict[str, list[str]]:
    """KILN_STORAGE_PREFIXES / KILN_READ_PREFIXES → {namespace or "*": [prefix, ...]}; refuses bad JSON."""
    if not text.strip():
        return {}
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{setting} is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or not all(
            isinstance(v, list) and all(isinstance(p, str) for p in v) for v in raw.values()):
        raise ValueError(f"{setting} must be an object of namespace → list of s3:// prefixes")
    for prefixes in raw.values():
        for prefix in prefixes:
            _segments(prefix.replace("{namespace}", "ns"), setting)
    return raw


def env_prefix_map(name: str) -> dict[str, list[str]]:
    return parse_prefix_map(os.environ.get(name, ""), name)


def _segments(uri: str, field: str) -> tuple[str, tuple[str, ...]]:
    """(bucket, key segments) of an s3:// URI, refusing what a store could resolve elsewhere."""
    if _CONTROL.search(uri):
        raise NotAllowed(field, f"{uri!r} contains a control character or a backslash")
    try:
        loc = storage.parse_s3(uri)
    except ValueError as exc:
        raise NotAllowed(field, str(exc)) from exc
    key = loc.key.rstrip("/")
    parts = tuple(key.split("/")) if key else ()
    if any(p in ("", ".", "..") for p in parts):
        raise NotAllowed(field, f"{uri!r} has an empty, '.' or '..' path segment")
    return loc.bucket, parts


def _expand(prefix_map: dict[str, list[str]], namespace: str) -> list[str]:
    return [p.replace("{namespace}", namespace) for key in ("*", namespace) for p in prefix_map.get(key, [])]


def writable(namespace: str, default_storage: str, extra: dict[str, list[str]]) -> list[str]:
    """Prefixes a namespace's Models may live under (read, written and deleted by the operator)."""
    return list(dict.fromkeys([f"{default_storage.rstrip('/')}/{namespace}", *_expand(extra, namespace)]))


def readable(namespace: str, default_storage: str, extra: dict[str, list[str]],
             read: dict[str, list[str]]) -> list[str]:
    """Prefixes a namespace's specs may read from (datasets, bring-your-own artifacts)."""
    return list(dict.fromkeys([*writable(namespace, default_storage, extra), *_expand(read, namespace)]))


def within(uri: str, prefixes: list[str], field: str) -> None:
    """Raise NotAllowed naming field unless the s3:// uri is one of prefixes or below one of them."""
    bucket, parts = _segments(uri, field)
    for prefix in prefixes:
        p_bucket, p_parts = _segments(prefix, "prefix")
        if bucket == p_bucket and parts[:len(p_parts)] == p_parts:
            return
    raise NotAllowed(field, f"{uri} is outside the storage this namespace may use ({', '.join(prefixes)})")


def check_scheduling(spec: dict, toleration_keys: list[str], node_selector_keys: list[str],
                     scheduler_names: list[str] = ("default-scheduler",)) -> None:
    """Tolerations, nodeSelector keys and the scheduler of a TrainingJob against the platform team's allowlist.

    Patterns: an exact key, a prefix ending in "*", or "*" alone for any key. A toleration without a key
    tolerates every taint (control-plane ones included), so only "*" allows it. Refused, not filtered:
    a pod silently scheduled elsewhere than asked is harder to debug than a condition naming the field.
    """
    for i, toleration in enumerate(spec.get("tolerations") or []):
        key = (toleration or {}).get("key") or ""
        if not _allowed(key, toleration_keys):
            what = f"key {key!r}" if key else "no key (it tolerates every taint)"
            raise NotAllowed(f"spec.tolerations[{i}].key",
                             f"a toleration with {what} is not allowed; allowed keys: {_say(toleration_keys)}")
    for key in (spec.get("nodeSelector") or {}):
        if not _allowed(key, node_selector_keys):
            raise NotAllowed(f"spec.nodeSelector.{key}",
                             f"node selector key {key!r} is not allowed; allowed keys: {_say(node_selector_keys)}")
    # Another scheduler may place pods by other rules (quotas, taints, gangs): the platform names the ones
    # it runs. An unset name is the cluster's default scheduler.
    name = spec.get("schedulerName")
    if name and not _allowed(name, list(scheduler_names)):
        raise NotAllowed("spec.schedulerName",
                         f"scheduler {name!r} is not allowed; allowed schedulers: {_say(list(scheduler_names))}")


def _allowed(key: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern == "*" or (key and (key == pattern or (pattern.endswith("*") and key.startswith(pattern[:-1])))):
            return True
    return False


def _say(patterns: list[str]) -> str:
    return ", ".join(patterns) if patterns else "none"
