"""The gateway's Prometheus metrics, in a registry of its own (served on the admin port at /metrics).

Its own registry, not prometheus_client's global one: modules the gateway imports (kiln_operator.kube) may
register the operator's metrics there, which would show up here as zeros.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.process_collector import ProcessCollector

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)

REQUESTS = Counter("kiln_gateway_requests", "Requests answered by the gateway, by HTTP status code "
                   "(499: the client went away first)", ["code"], registry=REGISTRY)
DURATION = Histogram("kiln_gateway_request_duration_seconds",
                     "Time from a request's arrival to its answer, waiting for a replica included",
                     buckets=(.0005, .001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120),
                     registry=REGISTRY)
WAITING = Gauge("kiln_gateway_waiting_requests", "Requests held until their Deployment has a ready pod",
                registry=REGISTRY)
WAKES = Counter("kiln_gateway_wakes", "Wake requests sent to the operator for Deployments with no ready pod, "
                "by outcome (accepted, refused, error)", ["outcome"], registry=REGISTRY)
RETRIES = Counter("kiln_gateway_upstream_retries", "Requests sent to another pod because one could not be reached",
                  registry=REGISTRY)
READY_PODS = Gauge("kiln_gateway_ready_pods", "Ready serving pods the gateway routes to", registry=REGISTRY)
DEPLOYMENTS = Gauge("kiln_gateway_deployments", "Kiln Deployments the gateway knows", registry=REGISTRY)
WATCH_EVENTS = Counter("kiln_gateway_watch_events", "Watch events applied to the routing table, by resource",
                       ["resource"], registry=REGISTRY)
RELISTS = Counter("kiln_gateway_watch_relists", "Full lists after the first, by resource and reason "
                  "(expired: 410 Gone; error: the API server could not be read)", ["resource", "reason"],
                  registry=REGISTRY)
# No token, user, namespace or Deployment label: this port is open to Prometheus, and cardinality stays fixed.
AUTH_REVIEWS = Counter("kiln_gateway_auth_reviews", "Reviews sent to the API server for requests whose answer was not "
                       "cached, by review (token: TokenReview; access: SubjectAccessReview) and outcome (allowed, "
                       "denied, error)", ["review", "outcome"], registry=REGISTRY)
AUTH_CACHED = Gauge("kiln_gateway_auth_cached", "Answers held in the gateway's authentication and authorization "
                    "caches", registry=REGISTRY)

_by_code: dict[int, object] = {}


def answered(code: int, seconds: float) -> None:
    """Count one answer (the labelled child is cached: no label lookup per request)."""
    child = _by_code.get(code)
    if child is None:
        child = _by_code[code] = REQUESTS.labels(str(code))
    child.inc()
    DURATION.observe(seconds)
