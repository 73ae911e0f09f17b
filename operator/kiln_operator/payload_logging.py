"""spec.logging of a Kiln Deployment → what its serving pods are told (pure, given the settings).

The records go under spec.logging.uri, by default <the namespace's storage>/payload-logs/<deployment>; the
prefix must lie inside the storage the namespace may write (kiln_operator.tenancy), checked like every other
S3 location a spec names: a prefix outside is refused with tenancy.NotAllowed naming spec.logging.uri.
"""

from __future__ import annotations

from dataclasses import dataclass

from kiln_operator import tenancy


@dataclass(frozen=True)
class Logging:
    uri: str
    sample_rate: float
    compression: str  # Parquet codec: snappy | zstd | none (the CRD's enum)
    secret: str  # the Secret with the credentials the server writes the records with


def resolve(dep: dict, cfg) -> Logging | None:
    """The payload logging a Deployment asks for, or None; raises tenancy.NotAllowed (spec.logging.uri)."""
    spec = dep["spec"].get("logging") or {}
    if not spec.get("enabled"):
        return None
    ns, name = dep["metadata"]["namespace"], dep["metadata"]["name"]
    writable = tenancy.writable(ns, cfg.storage, cfg.storage_prefixes)
    uri = (spec.get("uri") or f"{writable[0].rstrip('/')}/payload-logs/{name}").rstrip("/")
    tenancy.within(uri, writable, "spec.logging.uri")
    return Logging(uri=uri, sample_rate=float(spec.get("sampleRate", 1.0)),
                   compression=str(spec.get("compression") or "snappy"), secret=cfg.s3_logging_secret)
