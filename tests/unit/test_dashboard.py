"""The Grafana dashboard asks only for metrics the gateway exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from gateway.metrics import build_registry
from scheduler.clock import ManualClock
from scheduler.dispatcher import Scheduler
from scheduler.telemetry.monitor import DeviceMonitor
from tests.unit.test_scheduler import DOUBLE, FakeBackend

DASHBOARD = Path(__file__).resolve().parents[2] / "loadtests" / "dashboards" / "gateway.json"


def _exported() -> set[str]:
    """Every series name the gateway's registry can expose."""
    clock = ManualClock()
    scheduler = Scheduler([FakeBackend("b1", DOUBLE)], monitor=DeviceMonitor([], clock=clock))
    registry, _ = build_registry(scheduler, clock)
    names: set[str] = set()
    for family in registry.collect():
        if isinstance(family, CounterMetricFamily) or family.type == "counter":
            names.add(f"{family.name}_total")
        elif isinstance(family, HistogramMetricFamily) or family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
        else:
            names.add(family.name)
    return names


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    expressions += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {name for e in expressions for name in re.findall(r"\bgateway_[a-z_]+", e)}
    assert used and used <= _exported(), sorted(used - _exported())
    # requests, latency, queue, batches, placements, devices, breakers: all there
    for needed in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_queue_depth",
        "gateway_queue_wait_seconds_bucket",
        "gateway_batch_size_bucket",
        "gateway_placement_spillovers_total",
        "gateway_device_memory_used_bytes",
        "gateway_device_utilization_ratio",
        "gateway_backend_breaker_state",
    ):
        assert needed in used, needed
