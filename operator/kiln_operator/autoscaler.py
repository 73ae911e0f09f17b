"""The metric-driven autoscaler (concurrency or rps), with a stable and a panic window. Pure.

Concurrency is measured by Little's law from the servers' latency histograms (busy seconds
per elapsed second), so it sees short requests that an in-flight gauge sampled once a
second would miss. Like Knative's KPA: the stable window decides normally; when the
panic window asks for at least twice the current replicas, it panics and scales up at
once, and never scales down while panicking.
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

    def observe(self, t: float, concurrency: float, rps: float) -> None:
        self.points.append((t, concurrency, rps))
        if self.last_traffic is None:
            self.last_traffic = t  # a new Deployment counts as active: no scale to zero before it served
        if rps > 0 or concurrency > 0:
            self.last_traffic = t
        while self.points and self.points[0][0] < t - 3600:
            self.points.popleft()

    def poke(self, t: float) -> None:
        """A request arrived through the activator: there is traffic now."""
        self.last_traffic = t

    def _average(self, t: float, window: float, index: int) -> float | None:
        vals = [p[index] for p in self.points if p[0] >= t - window]
        return sum(vals) / len(vals) if vals else None

    def desired(self, t: float, current: int, spec: dict) -> int:
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
        idle_for = t - self.last_traffic if self.last_traffic is not None else math.inf
        if low == 0:
            if idle_for >= float(scaling.get("scaleToZeroAfter", 300)):
                return 0
            want = max(want, 1)
        return max(low, min(high, want))
