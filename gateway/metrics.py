"""Prometheus metrics: counters and histograms on the request path, gauges read at scrape time.

Two halves, one registry:

- ``GatewayMetrics`` is updated as work happens (as plain numbers, exposed at
  scrape time: ``gateway.metric_series``): the servicer reports each
  request (model, status code, backend, latency), and as the scheduler's
  ``SchedulerObserver`` it sees each batch (size, members' queue waits), each
  placement decision (verdict, spill) and each backend call. It also keeps the
  last placement decisions, with model, batch size and trace id, for the admin
  view.
- ``SchedulerCollector`` reads the scheduler's live state only when Prometheus
  scrapes: queue depths, backend health / breaker / in-flight, learned service
  times, batcher rejections, and the device telemetry snapshot. Nothing is
  kept up to date between scrapes, so idle gauges cost nothing.

Names follow Prometheus conventions (base units, ``_total`` counters, ``_ratio``
for fractions); ``promtool check metrics`` is run on a live scrape by the tests.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.metric_series import CounterSeries, HistogramSeries, families
from scheduler.clock import Clock
from scheduler.current_span import current_span
from scheduler.dispatcher import Scheduler
from scheduler.health import BreakerState
from scheduler.placement import Decision, Verdict
from scheduler.tracing import trace_id_of

_LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: Each verdict's label: an enum member's ``value`` is a Python property call,
#: and a verdict is counted once per decision (``Verdict`` hashes by identity).
_VERDICT_LABELS = {verdict: verdict.value for verdict in Verdict}


_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


class Refusals(grpc.aio.ServerInterceptor):
    """Counts the ``ModelInfer`` rpcs gRPC accepted and those the servicer got.

    gRPC runs server interceptors before it checks ``maximum_concurrent_rpcs``
    and before it reads the message, so ``arrived`` (counted here) minus
    ``handled`` (counted by the servicer as it starts) is what gRPC refused on
    its own with RESOURCE_EXHAUSTED (over the concurrency limit, or a message
    over ``max_message_bytes``), give or take the few rpcs between the two
    points at the moment of a scrape. One comparison and an addition per rpc:
    ``intercept_service`` is a plain function that hands gRPC the
    continuation's own awaitable, so the interceptor adds no coroutine of its
    own to an rpc (gRPC awaits whatever it returns). ``others``, when set, is
    an interceptor that every other rpc goes through (tracing's, the contrib
    one): in gRPC's chain each interceptor is a step of every rpc, even one
    that lets it pass, so ``ModelInfer`` skips it here instead.
    """

    def __init__(self) -> None:
        self.arrived = 0
        self.handled = 0
        self.others: grpc.aio.ServerInterceptor | None = None

    def intercept_service(  # type: ignore[override]
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Awaitable[grpc.RpcMethodHandler[Any, Any] | None]:
        if handler_call_details.method == _MODEL_INFER:
            self.arrived += 1
        elif self.others is not None:
            return self.others.intercept_service(continuation, handler_call_details)
        return continuation(handler_call_details)

    @property
    def refused(self) -> int:
        return max(self.arrived - self.handled, 0)


@dataclass(slots=True)  # not frozen: one is made per decision, and frozen init is slow
class DecisionRecord:
    """A placement decision as the admin view lists it."""

    model: str
    rows: int
    decision: Decision
    trace_id: str


class GatewayMetrics(Collector):
    """Request-path metrics and the recent-decisions log (a ``SchedulerObserver``).

    Updated on the event loop as work happens, as plain numbers
    (``gateway.metric_series``), and registered as a collector that exposes
    them when Prometheus scrapes.
    """

    def __init__(
        self, registry: CollectorRegistry, *, decision_log_size: int = 256, trace_ids: bool = True
    ) -> None:
        self.registry = registry
        #: Whether decisions record the current trace id (only our own spans have one).
        self._trace_ids = trace_ids
        self.recent_decisions: deque[DecisionRecord] = deque(maxlen=decision_log_size)
        self.requests = CounterSeries(
            "gateway_requests",
            "Inference requests that ended, by model, gRPC status code and backend.",
            ["model", "code", "backend"],
        )
        self.request_duration = HistogramSeries(
            "gateway_request_duration_seconds",
            "Time from decoding a request to its answer, by model, code and backend.",
            ["model", "code", "backend"],
            _LATENCY_BUCKETS_S,
        )
        self.queue_wait = HistogramSeries(
            "gateway_queue_wait_seconds",
            "Time a request waited in the gateway's batch queue before placement.",
            ["model"],
            _LATENCY_BUCKETS_S,
        )
        self.batch_size = HistogramSeries(
            "gateway_batch_size",
            "Rows per batch sent to placement (a split half counts as its own batch).",
            ["model"],
            _BATCH_BUCKETS,
        )
        self.batches = CounterSeries(
            "gateway_batches",
            "Batches sent to placement, by what triggered them.",
            ["model", "trigger"],
        )
        self.decisions = CounterSeries(
            "gateway_placement_decisions",
            "Placement decisions by verdict (placed, spilled, no_capacity, too_late) and backend.",
            ["model", "verdict", "backend"],
        )
        self.spillovers = CounterSeries(
            "gateway_placement_spillovers",
            "Batches placed on the CPU tier because no accelerator could meet the deadline.",
            ["model", "backend"],
        )
        self.backend_calls = CounterSeries(
            "gateway_backend_calls",
            "Backend calls (one per batch attempt), by backend, model and status code.",
            ["backend", "model", "code"],
        )
        self.backend_call_duration = HistogramSeries(
            "gateway_backend_call_duration_seconds",
            "Duration of backend calls, by backend and model.",
            ["backend", "model"],
            _LATENCY_BUCKETS_S,
        )
        self.first_response = HistogramSeries(
            "gateway_stream_first_response_seconds",
            "Time from a streamed request (decoupled model) to its first response, by model.",
            ["model"],
            _LATENCY_BUCKETS_S,
        )
        self.response_gap = HistogramSeries(
            "gateway_stream_response_gap_seconds",
            "Time between consecutive responses of a streamed request, by model.",
            ["model"],
            _LATENCY_BUCKETS_S,
        )
        self._series = (
            self.requests,
            self.request_duration,
            self.queue_wait,
            self.batch_size,
            self.batches,
            self.decisions,
            self.spillovers,
            self.backend_calls,
            self.backend_call_duration,
            self.first_response,
            self.response_gap,
        )
        self.refusals = Refusals()
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        yield from families(self._series)
        refused = CounterMetricFamily(
            "gateway_requests_refused",
            "ModelInfer rpcs gRPC refused with RESOURCE_EXHAUSTED before the gateway's "
            "handler ran (over max_concurrent_rpcs, or a message over max_message_bytes); "
            "not in gateway_requests_total.",
        )
        refused.add_metric([], self.refusals.refused)
        yield refused

    # -- the servicer ------------------------------------------------------
    def request_done(
        self, model: str, code: str, backend: str, seconds: float, trace_id: str = ""
    ) -> None:
        labels = (model, code, backend or "none")
        self.requests.inc(labels)
        self.request_duration.observe(labels, seconds, trace_id)

    def requests_done(self, model: str, backend: str, seconds: Sequence[float]) -> None:
        """``request_done`` for several OK requests at once (a stream group's)."""
        labels = (model, "OK", backend or "none")
        self.requests.inc(labels, len(seconds))
        self.request_duration.observe_many(labels, seconds)

    def stream_first_response(self, model: str, seconds: float) -> None:
        self.first_response.observe((model,), seconds)

    def stream_response_gap(self, model: str, seconds: float) -> None:
        self.response_gap.observe((model,), seconds)

    # -- SchedulerObserver -------------------------------------------------
    def batch_started(
        self, model: str, rows: int, trigger: str, queue_waits_s: Sequence[float]
    ) -> None:
        self.batch_size.observe((model,), rows)
        self.batches.inc((model, trigger))
        self.queue_wait.observe_many((model,), [max(seconds, 0.0) for seconds in queue_waits_s])

    def placed(self, model: str, rows: int, decision: Decision) -> None:
        backend = decision.backend_id or "none"
        verdict = decision.verdict
        self.decisions.inc((model, _VERDICT_LABELS[verdict], backend))
        if verdict is Verdict.SPILLED:
            self.spillovers.inc((model, backend))
        trace_id = ""
        if self._trace_ids:
            trace_id = trace_id_of(current_span())
        self.recent_decisions.append(DecisionRecord(model, rows, decision, trace_id))

    def backend_called(self, model: str, backend_id: str, seconds: float, code: str) -> None:
        self.backend_calls.inc((backend_id, model, code))
        trace_id = ""
        if self._trace_ids:  # the batch's (its first member's) trace
            trace_id = trace_id_of(current_span())
        self.backend_call_duration.observe((backend_id, model), seconds, trace_id)


class SchedulerCollector(Collector):
    """Gauges over the scheduler's live state, read at scrape time."""

    def __init__(self, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._backends()
        yield from self._devices()

    def _queues(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "gateway_queue_depth",
            "Requests waiting in the batch queue.",
            labels=["model", "priority"],
        )
        running = GaugeMetricFamily(
            "gateway_batches_in_flight", "Batches of the model running now.", labels=["model"]
        )
        dropped = CounterMetricFamily(
            "gateway_queue_dropped",
            "Requests that left the queue without a batch: full, expired or cancelled.",
            labels=["model", "reason"],
        )
        for spec in self._scheduler.models():
            batcher = self._scheduler.batcher(spec.name)
            if batcher is None:
                continue
            for level, count in sorted(batcher.queue_depth().items()):
                depth.add_metric([spec.name, str(level)], count)
            running.add_metric([spec.name], batcher.in_flight)
            c = batcher.counters
            for reason, value in (
                ("queue_full", c.rejected_queue_full),
                ("predicted_late", c.rejected_late),
                ("expired", c.expired_in_queue),
                ("cancelled", c.cancelled_in_queue),
            ):
                dropped.add_metric([spec.name, reason], value)
        yield from (depth, running, dropped)

    def _backends(self) -> Iterator[Metric]:
        now = self._clock.now()
        up = GaugeMetricFamily(
            "gateway_backend_up",
            "1 when the backend takes work (discovered, breaker admits, not drained).",
            labels=["backend", "tier"],
        )
        drained = GaugeMetricFamily(
            "gateway_backend_drained", "1 when an operator drained the backend.", labels=["backend"]
        )
        breaker = GaugeMetricFamily(
            "gateway_backend_breaker_state",
            "Circuit breaker state: 1 for the current state, 0 for the others.",
            labels=["backend", "state"],
        )
        in_flight = GaugeMetricFamily(
            "gateway_backend_in_flight", "Backend calls in flight.", labels=["backend"]
        )
        streams = GaugeMetricFamily(
            "gateway_backend_open_streams",
            "Response streams (decoupled models) open on the backend.",
            labels=["backend"],
        )
        sequences = GaugeMetricFamily(
            "gateway_backend_live_sequences",
            "Live sequences (sequence models) held by the backend: a drained backend "
            "is empty when this and its in-flight calls are 0.",
            labels=["backend"],
        )
        service = GaugeMetricFamily(
            "gateway_backend_service_time_seconds",
            "Learned (EWMA) service time per model and batch-size bucket.",
            labels=["backend", "model", "batch_bucket"],
        )
        for state in self._scheduler.fleet:
            up.add_metric([state.id, state.tier.name.lower()], float(state.usable(now)))
            drained.add_metric([state.id], float(state.drained))
            for value in BreakerState:
                breaker.add_metric([state.id, value.value], float(state.breaker.state is value))
            in_flight.add_metric([state.id], state.in_flight)
            streams.add_metric([state.id], self._scheduler.stateful.streams.count(state.id))
            sequences.add_metric([state.id], self._scheduler.live_sequences(state.id))
        for backend_id, models in self._scheduler.estimator.snapshot().items():
            for model, buckets in models.items():
                for bucket, seconds in sorted(buckets.items()):
                    service.add_metric([backend_id, model, str(bucket)], seconds)
        yield from (up, drained, breaker, in_flight, streams, sequences, service)

    def _devices(self) -> Iterator[Metric]:
        monitor = self._scheduler.monitor
        if monitor is None:
            return
        labels = ["device", "kind", "source", "host"]
        total = GaugeMetricFamily(
            "gateway_device_memory_total_bytes", "Device memory in total.", labels=labels
        )
        used = GaugeMetricFamily(
            "gateway_device_memory_used_bytes", "Device memory in use.", labels=labels
        )
        busy = GaugeMetricFamily(
            "gateway_device_utilization_ratio",
            "Fraction of time the device was busy.",
            labels=labels,
        )
        age = GaugeMetricFamily(
            "gateway_device_telemetry_age_seconds",
            "Seconds since the device's telemetry was read.",
            labels=labels,
        )
        now = self._clock.now()
        for device in monitor.snapshot().devices.values():
            values = [device.device_id, device.kind, device.source, device.host]
            # Unknown stays absent: a missing series is not a zero.
            if device.memory_total_bytes is not None:
                total.add_metric(values, device.memory_total_bytes)
            if device.memory_used_bytes is not None:
                used.add_metric(values, device.memory_used_bytes)
            if device.utilization is not None and not math.isnan(device.utilization):
                busy.add_metric(values, device.utilization)
            age.add_metric(values, device.age_s(now))
        yield from (total, used, busy, age)


def build_registry(
    scheduler: Scheduler, clock: Clock, *, trace_ids: bool = True
) -> tuple[CollectorRegistry, GatewayMetrics]:
    """A private registry (not the process-global one, so several gateways can live
    in one process in tests) with process metrics, the collector and the counters."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(SchedulerCollector(scheduler, clock))
    metrics = GatewayMetrics(
        registry, decision_log_size=scheduler.config.decision_log_size, trace_ids=trace_ids
    )
    return registry, metrics
