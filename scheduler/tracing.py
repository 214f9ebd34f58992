"""The scheduler's own spans: queue wait, batch, placement, backend call, CPU execution.

One request's trace, as the scheduler extends it::

    gateway server span (contrib gRPC interceptor, in the gateway)
    └── queue                     admission until its batch is cut
        └── batch                 one per batch; parent = first member's queue span,
            │                     a link to every member's queue span
            ├── placement         chosen backend, score, runner-up, telemetry age
            └── backend.infer     endpoint, device, retries; its context is injected
                ├── (Triton's spans, via the W3C headers sent with the call)
                └── cpu.execute   for the local CPU pool

Each member's queue span also gets a link back to its batch span, so from any
member's trace the batch (which lives in the first member's trace) is one click.

Only the OpenTelemetry *API* is used here. With no SDK configured the
scheduler's tracer is a no-op and the scheduler makes no spans at all
(``recording``); a caller's incoming ``traceparent`` still reaches Triton with
our own tracing off (``BatchInfo.propagation``). Attributes are only computed
when a span records.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, Tracer

from scheduler.errors import GatewayError
from scheduler.placement import Decision

__all__ = [
    "backend_call",
    "cpu_execution",
    "default_tracer",
    "end_queue_span",
    "record_placement",
    "recording",
    "solo_batch",
    "start_batch_span",
    "start_queue_span",
    "trace_id_of",
]

TRACER_NAME = "inference-gateway.scheduler"


def recording(tracer: Tracer) -> bool:
    """Whether spans of ``tracer`` can record, i.e. are worth making at all:
    with tracing off the scheduler makes none (even a no-op span costs a few
    microseconds of context switching per request)."""
    return not isinstance(tracer, trace.NoOpTracer)


def default_tracer() -> Tracer:
    """The global provider's tracer, or a no-op tracer when no SDK provider is
    installed yet: decided now, so install the provider before building the
    scheduler (the gateway does)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME)


def trace_id_of(span_context: SpanContext) -> str:
    """The 32-hex-digit trace id, or "" for an invalid context."""
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


def start_queue_span(
    tracer: Tracer, parent: Context | None, *, model: str, priority: int, rows: int
) -> Span:
    """Opened at admission, ended by ``end_queue_span`` when the batch is cut."""
    span = tracer.start_span("queue", context=parent)
    if span.is_recording():
        span.set_attributes(
            {"gateway.model": model, "gateway.priority": priority, "gateway.rows": rows}
        )
    return span


def end_queue_span(span: Span, *, batch: Span | None = None, error: str | None = None) -> None:
    """Close a queue span: linked to the batch it joined, or failed with ``error``."""
    if span.is_recording():
        if batch is not None and batch.get_span_context().is_valid:
            span.add_link(batch.get_span_context(), {"gateway.link": "batch"})
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def start_batch_span(
    tracer: Tracer,
    members: Sequence[SpanContext],
    *,
    model: str,
    size: int,
    trigger: str,
    attempt: int,
    parent: Context | None = None,
) -> Span:
    """One span per batch, a child of the first member (so it sits in that
    request's trace), with a link to every member's span."""
    valid = [m for m in members if m.is_valid]
    if parent is None and valid:
        parent = trace.set_span_in_context(trace.NonRecordingSpan(valid[0]))
    links = [Link(m, {"gateway.link": "member"}) for m in valid]
    span = tracer.start_span("batch", context=parent, links=links)
    if span.is_recording():
        span.set_attributes(
            {
                "gateway.model": model,
                "gateway.batch.size": size,
                "gateway.batch.members": len(members),
                "gateway.batch.trigger": trigger,
                "gateway.batch.attempt": attempt,
            }
        )
    return span


@contextmanager
def solo_batch(tracer: Tracer, parent: Context | None, model: str, rows: int) -> Iterator[Span]:
    """The batch span of a request the gateway does not batch: a batch of one."""
    member = trace.get_current_span(parent).get_span_context()
    span = start_batch_span(
        tracer, [member], model=model, size=rows, trigger="idle", attempt=0, parent=parent
    )
    with trace.use_span(span, end_on_exit=True):
        yield span


def record_placement(span: Span, decision: Decision, *, candidates: int, tries: int) -> None:
    """The decision's numbers as attributes of the placement span."""
    if not span.is_recording():
        return
    values: dict[str, str | int | float] = {
        "gateway.placement.verdict": decision.verdict.value,
        "gateway.placement.reason": decision.reason,
        "gateway.placement.candidates": candidates,
        "gateway.placement.try": tries,
    }
    if decision.backend_id is not None:
        values["gateway.placement.backend"] = decision.backend_id
    if decision.runner_up is not None:
        values["gateway.placement.runner_up"] = decision.runner_up
    # NaN means "not known": leave the attribute out rather than export a NaN.
    for key, number in (
        ("gateway.placement.score_s", decision.predicted_s),
        ("gateway.placement.service_s", decision.service_s),
        ("gateway.placement.runner_up_score_s", decision.runner_up_s),
        ("gateway.placement.telemetry_age_s", decision.telemetry_age_s),
    ):
        if math.isfinite(number):
            values[key] = number
    span.set_attributes(values)
    if decision.backend_id is None:
        span.set_status(Status(StatusCode.ERROR, decision.reason))


@contextmanager
def backend_call(
    tracer: Tracer,
    *,
    backend_id: str,
    endpoint: str,
    device: str,
    model: str,
    size: int,
    retries: int,
) -> Iterator[dict[str, str]]:
    """A CLIENT span around one backend call; yields the W3C headers that carry
    its context (``traceparent``/``tracestate``) for the backend to join."""
    with tracer.start_as_current_span(
        "backend.infer", kind=SpanKind.CLIENT, record_exception=False, set_status_on_exception=False
    ) as span:
        if span.is_recording():
            attributes: dict[str, str | int] = {
                "gateway.backend.id": backend_id,
                "gateway.backend.device": device,
                "gateway.model": model,
                "gateway.batch.size": size,
                "gateway.retries": retries,
            }
            if endpoint:
                host, _, port = endpoint.rpartition(":")
                attributes["gateway.backend.endpoint"] = endpoint
                attributes["server.address"] = host
                if port.isdigit():
                    attributes["server.port"] = int(port)
            span.set_attributes(attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        try:
            yield carrier
        except GatewayError as exc:
            if span.is_recording():
                span.set_attribute("gateway.error.code", exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.message))
            raise


@contextmanager
def cpu_execution(tracer: Tracer, *, model: str, backend_id: str, rows: int) -> Iterator[Span]:
    """The time a CPU model runs (and waits for a worker), under the backend call."""
    with tracer.start_as_current_span("cpu.execute") as span:
        if span.is_recording():
            span.set_attributes(
                {"gateway.model": model, "gateway.backend.id": backend_id, "gateway.rows": rows}
            )
        yield span


def backend_stream(
    tracer: Tracer, parent: Context | None, *, backend_id: str, model: str
) -> tuple[Span, dict[str, str]]:
    """A CLIENT span for a response stream from a backend, started but not made
    current (it outlives the caller's turns), and the W3C headers of its context."""
    span = tracer.start_span(
        "backend.stream",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes={"gateway.backend.id": backend_id, "gateway.model": model},
    )
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
    return span, carrier


def end_backend_stream(span: Span, code: str) -> None:
    if code != "OK":
        span.set_attribute("gateway.error.code", code)
        span.set_status(Status(StatusCode.ERROR, code))
    span.end()
