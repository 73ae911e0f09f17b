"""The scale benchmark's pure helpers: percentiles, apiserver metrics parsing, the per-resource split."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import bench_scale as bs  # noqa: E402


def _line(verb, group, resource, value, subresource="", code="200"):
    return (f'apiserver_request_total{{code="{code}",component="apiserver",dry_run="",group="{group}",'
            f'resource="{resource}",scope="resource",subresource="{subresource}",verb="{verb}",version="v1"}} {value}')


METRICS = "\n".join([
    "# HELP apiserver_request_total [STABLE] Counter of apiserver requests",
    "# TYPE apiserver_request_total counter",
    _line("GET", "kiln.dev", "models", 10),
    _line("GET", "kiln.dev", "models", 2, code="404"),
    _line("PATCH", "kiln.dev", "trainingjobs", 5, subresource="status"),
    _line("PUT", "coordination.k8s.io", "leases", 7),
    _line("WATCH", "batch", "jobs", 3, code="0"),
    _line("GET", "", "", 4, subresource="/metrics"),
    "# HELP apiserver_request_duration_seconds x",
    "# TYPE apiserver_request_duration_seconds histogram",
    'apiserver_request_duration_seconds_bucket{verb="GET",resource="models",le="0.1"} 99',
    'apiserver_request_duration_seconds_count{verb="GET",resource="models"} 99',
    'apiserver_request_duration_seconds_sum{verb="GET",resource="models"} 1.0',
]) + "\n"


def test_percentile_interpolates_between_ranks():
    values = [4.0, 1.0, 3.0, 2.0]
    assert bs.percentile(values, 0) == 1.0
    assert bs.percentile(values, 100) == 4.0
    assert bs.percentile(values, 50) == pytest.approx(2.5)
    assert bs.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert bs.percentile([], 50) is None
    assert bs.percentile([7.0], 90) == 7.0


def test_latency_summary_counts_missing_jobs():
    created = {"a": 10.0, "b": 10.0, "c": 11.0}
    seen = {"a": 10.5, "c": 14.0, "stray": 1.0}
    s = bs.latency_summary(created, seen)
    assert s["count"] == 2 and s["missing"] == 1
    assert s["max_s"] == pytest.approx(3.0)
    assert s["p50_s"] == pytest.approx(1.75)


def test_parse_sums_over_codes_and_ignores_other_metrics():
    totals = bs.parse_request_totals(METRICS)
    assert totals[("GET", "kiln.dev", "models", "")] == 12
    assert totals[("PATCH", "kiln.dev", "trainingjobs", "status")] == 5
    assert totals[("GET", "", "", "/metrics")] == 4
    assert len(totals) == 5


def test_delta_and_counter_reset():
    before = {("GET", "", "pods", ""): 10.0, ("LIST", "", "pods", ""): 4.0}
    after = {("GET", "", "pods", ""): 25.0, ("LIST", "", "pods", ""): 4.0, ("PUT", "", "nodes", ""): 3.0}
    assert bs.delta(before, after) == {("GET", "", "pods", ""): 15.0, ("PUT", "", "nodes", ""): 3.0}
    assert bs.delta({("GET", "", "pods", ""): 100.0}, {("GET", "", "pods", ""): 6.0}) == {("GET", "", "pods", ""): 6.0}


def test_split_separates_kiln_other_watch_and_own_reads():
    d = {
        ("GET", "kiln.dev", "models", ""): 60.0,
        ("PATCH", "kiln.dev", "trainingjobs", "status"): 30.0,
        ("LIST", "batch", "jobs", ""): 6.0,
        ("PUT", "coordination.k8s.io", "leases", ""): 12.0,
        ("WATCH", "batch", "jobs", ""): 2.0,
        ("GET", "", "", "/metrics"): 1.0,
        ("PATCH", "events.k8s.io", "events", ""): 6.0,  # the scheduler's, not the operator's
        ("POST", "", "events", ""): 6.0,  # kopf.event
    }
    s = bs.split_requests(d, seconds=60.0, objects=10)
    assert s["own_metrics_reads_excluded"] == 1.0
    assert s["requests"] == 122.0
    assert s["watch_requests"] == 2.0
    assert s["rps_kiln_resources"] == pytest.approx(102 / 60, abs=1e-3)
    assert s["rps_other_resources"] == pytest.approx(18 / 60, abs=1e-3)
    assert s["rps_non_watch"] == pytest.approx(120 / 60, abs=1e-3)
    assert s["rps_per_kiln_object"] == pytest.approx(120 / 60 / 10, abs=1e-4)
    assert s["by_resource"]["events.events.k8s.io"]["kiln"] is False
    assert s["by_resource"]["events"]["kiln"] is True
    assert sum(row[-1] for row in s["raw"]) == 122.0
    assert list(s["by_resource"])[0] == "models.kiln.dev"
    assert s["by_resource"]["trainingjobs.kiln.dev/status"]["kiln"] is True
    assert s["by_resource"]["leases.coordination.k8s.io"]["kiln"] is False
    assert s["by_verb"]["GET"] == 1.0  # the /metrics read is not in it


def test_manifests_models_before_their_trainingjobs():
    tasks = bs.manifests(10, 6, 3)
    flat = [(plural, body) for task in tasks for plural, body in task]
    assert sum(p == "models" for p, _ in flat) == 10
    assert sum(p == "trainingjobs" for p, _ in flat) == 6
    assert sum(p == "deployments" for p, _ in flat) == 3
    for task in tasks:
        plurals = [p for p, _ in task]
        if "trainingjobs" in plurals:
            assert plurals == ["models", "trainingjobs"]
            model, tj = task[0][1], task[1][1]
            assert tj["spec"]["model"] == model["metadata"]["name"]
            assert tj["spec"]["nodeSelector"] == bs.UNSCHEDULABLE and tj["spec"]["schedulerName"] == bs.HELD_BY
    deps = [b for p, b in flat if p == "deployments"]
    assert all(b["spec"]["replicas"] == {"min": 0, "max": 2} for b in deps)
