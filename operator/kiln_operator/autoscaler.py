"""The metric-driven autoscaler (concurrency or rps), with a stable and a panic window. Pure.

Concurrency is measured by Little's law from the servers' latency histograms (busy seconds
per elapsed second), so it sees short requests that an in-flight gauge sampled once a
second would miss. Like Knative's KPA: the stable window decides normally; when the
panic window asks for at least twice the current replicas, it panics and scales up at
once, and never scales down while panicking.

A fresh autoscaler (a new Deployment, or the operator restarted) has no history: one with
replicas counts as having seen traffic when it started, and scales down only after a whole
stable window of observations; one at zero stays at zero until a request arrives. So an
operator restart never scales anything up, down or to zero by itself.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

PANIC_THRESHOLD = 2.0


@dataclass
class Autoscaler:
    points: deque = field(default_factory=deque)  # (t, concurrency, rps)
    last_traffic: float | None = None
    panic_until: float = 0.0
    started: float | None = None  # first observation (or first decision) of this autoscaler

    def _start(self, t: float, serving: bool = True) -> None:
        if self.started is None:
            self.started = t
        if self.last_traffic is None and serving:
            self.last_traffic = t  # no scale to zero before a whole scaleToZeroAfter without traffic

    def observe(self, t: float, concurrency: float, rps: float) -> None:
        self._start(t)
        self.points.append((t, concurrency, rps))
        if rps > 0 or concurrency > 0:
            self.last_traffic = t
        while self.points and self.points[0][0] < t - 3600:
            self.points.popleft()

    def poke(self, t: float) -> None:
        """A request arrived through the activator: there is traffic now."""
        self._start(t)
        self.last_traffic = t

    def _average(self, t: float, window: float, index: int) -> float | None:
        vals = [p[index] for p in self.points if p[0] >= t - window]
        return sum(vals) / len(vals) if vals else None

    def desired(self, t: float, current: int, spec: dict) -> int:
        self._start(t, serving=current > 0)
        scaling = spec.get("autoscaling") or {}
        replicas = spec.get("replicas") or {}
        low, high = int(replicas.get("min", 1)), int(replicas.get("max", 3))
        target = float(scaling.get("target", 10))
        index = 2 if scaling.get("metric") == "rps" else 1
        stable = self._average(t, float(scaling.get("stableWindow", 60)), index)
        panic = self._average(t, float(scaling.get("panicWindow", 6)), index)
        want = current
        if stable is not None:
            want = math.ceil(stable / target)
        if panic is not None:
            panic_want = math.ceil(panic / target)
            if current and panic_want >= PANIC_THRESHOLD * current or not current and panic_want:
                self.panic_until = t + float(scaling.get("stableWindow", 60))
            if t < self.panic_until:
                want = max(want, panic_want, current)
        if t - self.started < float(scaling.get("stableWindow", 60)):
            want = max(want, current)  # not a whole window of history yet: never scale down on part of one
        idle_for = t - self.last_traffic if self.last_traffic is not None else math.inf
        if low == 0:
            if idle_for >= float(scaling.get("scaleToZeroAfter", 300)):
                return 0
            want = max(want, 1)
        return max(low, min(high, want))
