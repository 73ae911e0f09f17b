"""In-memory serving state the operator keeps per Kiln Deployment: autoscaler windows and metric baselines.

Lost on restart by design: windows refill within seconds, and nothing durable lives here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from kiln_operator.autoscaler import Autoscaler
from kiln_operator.serving_metrics import Sample


@dataclass
class ServingState:
    autoscaler: Autoscaler = field(default_factory=Autoscaler)
    last: dict[str, Sample] = field(default_factory=dict)  # pod name -> last scrape
    last_time: float | None = None
    canary_base: Sample | None = None  # canary pods' totals when the current step began
    wake: bool = False  # the activator asked for a replica
    texts: dict[str, tuple[int, str]] = field(default_factory=dict)  # pod -> (version, last /metrics text)
    cards: dict[int, dict] = field(default_factory=dict)  # version -> model card (training distributions)
    drift_checked: float = 0.0
    drifted: bool = False


_states: dict[tuple[str, str], ServingState] = {}
_lock = threading.Lock()


def get(namespace: str, name: str) -> ServingState:
    with _lock:
        return _states.setdefault((namespace, name), ServingState())


def forget(namespace: str, name: str) -> None:
    with _lock:
        _states.pop((namespace, name), None)
