"""Reading serving pods' /metrics: request counts by code, in-flight, latency histogram. Pure."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class Sample:
    requests: dict[str, float] = field(default_factory=dict)  # code -> count
    in_flight: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    count: float = 0.0
    seconds: float = 0.0  # sum of request durations: busy time, so concurrency = seconds / elapsed

    @property
    def total(self) -> float:
        return sum(self.requests.values())

    @property
    def errors(self) -> float:
        return sum(v for code, v in self.requests.items() if code.startswith("5"))

    def __add__(self, other: Sample) -> Sample:
        out = Sample(dict(self.requests), self.in_flight + other.in_flight, dict(self.buckets),
                     self.count + other.count, self.seconds + other.seconds)
        for k, v in other.requests.items():
            out.requests[k] = out.requests.get(k, 0) + v
        for k, v in other.buckets.items():
            out.buckets[k] = out.buckets.get(k, 0) + v
        return out


def parse(text: str) -> Sample:
    sample = Sample()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kiln_inference_requests_total":
                code = s.labels.get("code", "")
                sample.requests[code] = sample.requests.get(code, 0) + s.value
            elif s.name == "kiln_inference_in_flight":
                sample.in_flight += s.value
            elif s.name == "kiln_inference_request_duration_seconds_bucket":
                le = float(s.labels["le"])
                sample.buckets[le] = sample.buckets.get(le, 0) + s.value
            elif s.name == "kiln_inference_request_duration_seconds_count":
                sample.count += s.value
            elif s.name == "kiln_inference_request_duration_seconds_sum":
                sample.seconds += s.value
    return sample


def delta(new: Sample, old: Sample | None) -> Sample:
    """What happened between two samples of the same pods (a restarted pod counts from zero)."""
    if old is None:
        return new
    out = Sample(in_flight=new.in_flight)
    for k, v in new.requests.items():
        out.requests[k] = max(0.0, v - old.requests.get(k, 0))
    for k, v in new.buckets.items():
        out.buckets[k] = max(0.0, v - old.buckets.get(k, 0))
    out.count = max(0.0, new.count - old.count)
    out.seconds = max(0.0, new.seconds - old.seconds)
    return out


def error_rate(d: Sample) -> float:
    return d.errors / d.total if d.total else 0.0


def quantile(d: Sample, q: float) -> float | None:
    """Upper bound (seconds) of the bucket holding quantile q, as Prometheus' histogram_quantile would bound it."""
    if not d.buckets:
        return None
    edges = sorted(d.buckets)
    total = d.buckets[edges[-1]]
    if total <= 0:
        return None
    rank = q * total
    for le in edges:
        if d.buckets[le] >= rank:
            return le if not math.isinf(le) else edges[-2] if len(edges) > 1 else None
    return None
