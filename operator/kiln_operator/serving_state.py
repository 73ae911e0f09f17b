"""What the operator remembers per Kiln Deployment between samples: autoscaler windows, metric baselines.

Held by the controller (one per Deployment key), fed by the sampler, read by the reconcile.
It is rebuilt after a restart: the autoscaler then refuses to scale down until it has seen a
whole window again (autoscaler.py), so nothing durable depends on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln_operator import drift, labels, serving_metrics
from kiln_operator.autoscaler import Autoscaler
from kiln_operator.serving_metrics import Sample


@dataclass
class ServingState:
    autoscaler: Autoscaler = field(default_factory=Autoscaler)
    last: dict[str, Sample] = field(default_factory=dict)  # pod name -> last scrape
    last_time: float | None = None
    canary_version: int | None = None
    canary_seen: Sample | None = None  # the canary pods' requests since its step began
    texts: dict[str, tuple[int, str]] = field(default_factory=dict)  # pod -> (version, last /metrics text)
    cards: dict[int, dict] = field(default_factory=dict)  # version -> model card (training distributions)
    drift_checked: float = 0.0
    drift: tuple[int, bool | None, dict] | None = None  # (version, drifted, scores) of the last check
    woken_at: float = 0.0
    conflicts: list[str] = field(default_factory=list)  # children held by others, as last reported

    def ingest(self, now: float, scraped: list[tuple[dict, str]], canary: int | None) -> None:
        """One round of (pod, /metrics text): per-pod deltas feed the autoscaler and the canary's tally."""
        per_version: dict[int, Sample] = {}
        total = Sample()
        seen = {}
        self.texts = {}
        for pod, text in scraped:
            sample = serving_metrics.parse(text)
            name = pod["metadata"]["name"]
            version = int(pod["metadata"]["labels"][labels.VERSION])
            seen[name] = sample
            self.texts[name] = (version, text)
            d = serving_metrics.delta(sample, self.last.get(name))
            per_version[version] = per_version.get(version, Sample()) + d
            total = total + d
        elapsed = now - self.last_time if self.last_time else None
        self.last, self.last_time = seen, now
        if elapsed and elapsed > 0:
            self.autoscaler.observe(now, total.seconds / elapsed, total.total / elapsed)
        if canary != self.canary_version:
            self.canary_version, self.canary_seen = canary, None
        if canary is not None and canary in per_version and elapsed:
            d = per_version[canary]
            self.canary_seen = d if self.canary_seen is None else self.canary_seen + d

    def reset_canary(self) -> None:
        self.canary_seen = None

    def live_outputs(self, version: int) -> dict:
        """Category and prediction counts of a version's pods (drift.live_counts, merged)."""
        live: dict = {}
        for v, text in self.texts.values():
            if v == version:
                live = drift.merge_counts(live, drift.live_counts(text))
        return live

    def live_inputs(self, version: int) -> dict:
        live: dict = {}
        for v, text in self.texts.values():
            if v == version:
                live = drift.merge(live, drift.live_histograms(text))
        return live
