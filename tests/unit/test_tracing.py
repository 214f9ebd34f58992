"""The scheduler's spans, their links and the context sent to backends (in-memory exporter),
plus the gateway's tracing and logging set-up."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

from gateway.config import ConfigError
from gateway.logs import JsonFormatter, TraceContextFilter
from gateway.span_export import rebuild
from gateway.telemetry import MODEL_INFER, configure_tracing, trace_id_metadata
from scheduler.backends.base import DecodedTensorsOnly, Device, DeviceKind
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.placement import Tier
from scheduler.request import InferRequest, Parameters
from scheduler.span_records import RecordProcessor, expand
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

VEC = TensorSpec("X", DataType.FP32, (-1, 2))
DOUBLE = ModelSpec("double", (VEC,), (dataclasses.replace(VEC, name="Y"),), max_batch_size=8)
CONFIG = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class RecordingBackend(DecodedTensorsOnly):
    """A Backend that remembers the trace headers of every call; ``gate`` holds calls."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.gate: asyncio.Event | None = None

    @property
    def id(self) -> str:
        return "b1"

    @property
    def device(self) -> Device:
        return Device(DeviceKind.GPU, host="gpu-host")

    @property
    def tier(self) -> Tier:
        return Tier.ACCELERATOR

    @property
    def endpoint(self) -> str:
        return ""  # no gRPC server behind it: its call span is ``backend.infer``

    @property
    def workers(self) -> int:
        return 1

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return {"double": DOUBLE}

    async def start(self) -> None:
        return None

    async def infer(
        self,
        model: ModelSpec,
        inputs: Mapping[str, Tensor],
        *,
        version: str = "",
        outputs: tuple[str, ...] = (),
        parameters: Parameters | None = None,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> dict[str, Tensor]:
        self.headers.append(dict(trace_context or {}))
        if self.gate is not None:
            await self.gate.wait()
        return {"Y": inputs["X"] * 2}

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _request(name: str, parent: trace.Span | None = None) -> InferRequest:
    context = trace.set_span_in_context(parent) if parent is not None else None
    x = np.ones((1, 2), np.float32)
    return InferRequest("double", {"X": x}, id=name, trace_context=context)


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _finished_spans(
    as_records: bool,
) -> tuple[TracerProvider, Callable[[], tuple[ReadableSpan, ...]]]:
    """A provider, and what it has exported: as ``ReadableSpan`` objects to an
    in-memory exporter, or (``as_records``) as records to a ``RecordProcessor``'s
    sink, expanded and rebuilt as the export process does."""
    if not as_records:
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        return provider, exporter.get_finished_spans
    records: list[Any] = []
    provider = TracerProvider(active_span_processor=RecordProcessor(records.append))
    resource = provider.resource
    return provider, lambda: tuple(rebuild(r, resource, {}) for r in expand(records))


@pytest.mark.parametrize("as_records", [False, True], ids=["spans", "records"])
async def test_one_batch_span_linked_to_every_member_and_parent_of_the_call(
    as_records: bool,
) -> None:
    provider, finished = _finished_spans(as_records)
    tracer = provider.get_tracer("test")
    backend = RecordingBackend()
    scheduler = Scheduler([backend], config=CONFIG, tracer=tracer)
    await scheduler.start()
    try:
        backend.gate = asyncio.Event()
        roots = [tracer.start_span(f"server-{i}") for i in range(4)]
        first = asyncio.create_task(scheduler.infer(_request("0", roots[0])))
        await asyncio.sleep(0.01)  # the first request holds the backend
        rest = [asyncio.create_task(scheduler.infer(_request(str(i), roots[i]))) for i in (1, 2, 3)]
        await asyncio.sleep(0.01)
        backend.gate.set()
        results = await asyncio.gather(first, *rest)
    finally:
        await scheduler.aclose()
    assert {r.backend_id for r in results} == {"b1"}
    spans = finished()
    calls = _by_name(spans, "backend.infer")
    # Two batches (the first alone, then the three others), so two real calls,
    # and their context is what the backend was sent.
    sent = [propagate.extract(h) for h in backend.headers]
    sent_ids = {trace.get_current_span(c).get_span_context().span_id for c in sent}
    real = [c for c in calls if not c.links]
    assert len(real) == 2 and sent_ids == {c.context.span_id for c in real}
    for root in roots:  # every request's own trace holds its whole story
        trace_id = root.get_span_context().trace_id
        own = [s for s in spans if s.context.trace_id == trace_id]
        (queue,) = _by_name(tuple(own), "queue")
        (batch,) = _by_name(tuple(own), "batch")
        (placement,) = _by_name(tuple(own), "placement")
        (call,) = _by_name(tuple(own), "backend.infer")
        root_id = root.get_span_context().span_id
        assert queue.parent is not None and queue.parent.span_id == root_id
        assert batch.parent is not None and batch.parent.span_id == root_id
        assert queue.end_time == batch.start_time  # no gap between wait and batch
        assert placement.parent is not None and placement.parent.span_id == batch.context.span_id
        assert call.parent is not None and call.parent.span_id == batch.context.span_id
        assert call.kind is trace.SpanKind.CLIENT
        assert call.attributes is not None and call.attributes["gateway.backend.id"] == "b1"
        assert batch.end_time is not None and call.end_time is not None
        assert batch.end_time >= call.end_time
    merged = [b for b in _by_name(spans, "batch") if b.attributes["gateway.batch.size"] == 3]
    assert len(merged) == 3 and all(b.attributes["gateway.batch.members"] == 3 for b in merged)
    (leader,) = [b for b in merged if not any(link.attributes for link in b.links)]
    others = [b for b in merged if b is not leader]
    for member in others:  # each other member: a link to the leader's batch span
        assert [link.context.span_id for link in member.links] == [leader.context.span_id]
        (copy,) = [c for c in calls if c.parent and c.parent.span_id == member.context.span_id]
        (original,) = [c for c in real if c.context.span_id == copy.links[0].context.span_id]
        assert (copy.start_time, copy.end_time) == (original.start_time, original.end_time)
        assert original.parent is not None and original.parent.span_id == leader.context.span_id


async def test_with_tracing_off_the_callers_context_still_reaches_the_backend() -> None:
    backend = RecordingBackend()
    tracer = NoOpTracerProvider().get_tracer("off")
    scheduler = Scheduler([backend], config=CONFIG, tracer=tracer)
    await scheduler.start()
    try:
        context = propagate.extract({"traceparent": CALLER})
        x = np.ones((1, 2), np.float32)
        await scheduler.infer(InferRequest("double", {"X": x}, trace_context=context))
    finally:
        await scheduler.aclose()
    assert backend.headers[0]["traceparent"] == CALLER


class CountingTracer(trace.NoOpTracer):
    """The tracer of tracing off (a no-op), counting the spans asked of it."""

    def __init__(self) -> None:
        self.spans = 0

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        self.spans += 1
        return super().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        self.spans += 1
        return super().start_as_current_span(*args, **kwargs)


async def test_with_tracing_off_no_span_is_made_per_request() -> None:
    """Batched, solo, and with a caller's traceparent: not one span, not even
    a no-op one (each costs context switching); the gateway adds no wrapper
    and no interceptor."""
    tracer = CountingTracer()
    backend = RecordingBackend()
    scheduler = Scheduler([backend], config=CONFIG, tracer=tracer)
    await scheduler.start()
    try:
        backend.gate = asyncio.Event()
        first = asyncio.create_task(scheduler.infer(_request("0")))
        await asyncio.sleep(0.01)  # the first request holds the backend: the rest batch
        caller = propagate.extract({"traceparent": CALLER})
        x = np.ones((1, 2), np.float32)
        rest = [
            asyncio.create_task(
                scheduler.infer(InferRequest("double", {"X": x}, id=str(i), trace_context=caller))
            )
            for i in (1, 2, 3)
        ]
        await asyncio.sleep(0.01)
        backend.gate.set()
        await asyncio.gather(first, *rest)
    finally:
        await scheduler.aclose()
    assert len(backend.headers) == 2 and tracer.spans == 0
    off = configure_tracing({"OTEL_TRACES_EXPORTER": "none"}, install_global=False)

    async def behaviour(request: bytes, context: Any) -> bytes:
        return request

    assert off.traced(MODEL_INFER, behaviour) is behaviour and off.server_interceptors() == []


def test_tracing_is_off_without_an_exporter() -> None:
    assert not configure_tracing({}, install_global=False).enabled
    off = configure_tracing({"OTEL_TRACES_EXPORTER": "none"}, install_global=False)
    assert off.server_interceptors() == []
    assert off.request_context([("traceparent", CALLER)]) is not None
    disabled = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"}
    assert not configure_tracing(disabled, install_global=False).enabled


def test_an_otlp_endpoint_turns_tracing_on() -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    tracing = configure_tracing(env, install_global=False)
    try:
        assert tracing.enabled and len(tracing.server_interceptors()) == 1
        assert tracing.request_context([("traceparent", CALLER)]) is None  # the server span's
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "unknown exporter 'zipkin'"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "http/json"),
    ],
)
def test_unknown_exporters_and_protocols_are_config_errors(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        configure_tracing(env, install_global=False)


def test_log_records_carry_trace_and_span_ids_in_json() -> None:
    tracer = TracerProvider().get_tracer("test")
    record = logging.LogRecord("gw", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    with tracer.start_as_current_span("work") as span:
        TraceContextFilter().filter(record)
        assert trace_id_metadata() == (
            ("x-trace-id", format(span.get_span_context().trace_id, "032x")),
        )
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "hello there" and entry["level"] == "INFO"
    assert entry["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert entry["span_id"] == format(span.get_span_context().span_id, "016x")
    outside = logging.LogRecord("gw", logging.INFO, __file__, 1, "bye", (), None)
    TraceContextFilter().filter(outside)
    assert "trace_id" not in json.loads(JsonFormatter().format(outside))
    assert trace_id_metadata() == ()


class CountingNoOpTracer(trace.NoOpTracer):
    """The no-op tracer the scheduler gets with tracing off, counting spans asked for."""

    def __init__(self) -> None:
        self.asked = 0

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        self.asked += 1
        return super().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        self.asked += 1
        return super().start_as_current_span(*args, **kwargs)


async def test_with_tracing_off_no_span_is_made() -> None:
    tracer = CountingNoOpTracer()
    backend = RecordingBackend()
    scheduler = Scheduler([backend], config=CONFIG, tracer=tracer)
    await scheduler.start()
    try:
        await scheduler.infer(_request("alone"))  # the lean path
        backend.gate = asyncio.Event()
        calls = [asyncio.create_task(scheduler.infer(_request(str(i)))) for i in range(6)]
        await asyncio.sleep(0.01)  # the first holds the backend, the rest batch up
        backend.gate.set()
        await asyncio.gather(*calls)
    finally:
        await scheduler.aclose()
    assert len(backend.headers) >= 2 and tracer.asked == 0
