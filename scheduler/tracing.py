"""The scheduler's own spans: queue wait, batch, placement, backend call, CPU execution.

Every request's own trace holds everything that happened to it, batched or not::

    gateway server span (contrib gRPC interceptor, in the gateway)
    ├── queue                     admission until its batch is cut
    └── batch                     cut until the request has its outputs back
        │                         (size, trigger, members, attempt)
        ├── placement             chosen backend, reason, score, runner-up
        └── inference.GRPCInferenceService/ModelInfer   (CLIENT, RPC semantic
            │                     conventions; ``backend.infer`` for a backend
            │                     that is not a gRPC server)
            ├── (Triton's spans, via the W3C headers sent with the call)
            └── cpu.execute       for the local CPU pool

A batch is run once, under its first member's ``batch`` span (the *leader*):
its placement and backend-call spans are real, and only they carry the
context sent to the backend, so Triton's spans sit in the leader's trace.
Every other member gets its own ``batch`` span, linked to the leader's, and
when the batch ends a copy of each placement and backend call with the same
timings and attributes, linked to the real one (``mirror``,
scheduler/span_mirror.py): from any member's trace Triton's spans are one
click away, and the member's own server span is covered by named spans end
to end. With the gateway's exporter the
copies travel as one record per batch, made into spans in the export process
(scheduler/span_records.py); the alternative, one shared batch span in a
trace of its own, left the members' traces with a hole where the backend
call was.

A member's ``batch`` span ends in the member's own task, when its outputs
reach it, so the hand-off from the batch to each waiting caller is inside it.

The backend call's span, and the headers that carry it to the backend, are
in scheduler/backend_call_span.py. A queued request holds no span: its
``queue`` span is made whole when its wait ends (by ``start_batch_spans``,
or ``queue_span`` for a wait that ends without a batch), and a placement's
when the decision is made, each as a bare record under a deferred parent
(``deferred_span.emit_span``).

Only the OpenTelemetry *API* is used here. With no SDK configured the
scheduler's tracer is a no-op and the scheduler makes no spans at all
(``recording``); a caller's incoming ``traceparent`` still reaches Triton with
our own tracing off (``BatchInfo.propagation``). Attributes are only computed
when a span records, and kept few: span export is most of tracing's cost.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import repeat

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from scheduler.backend_call_span import BackendCall
from scheduler.deferred_span import (
    emit_span,
    link_to,
    start_deferred,
    trace_id_of,
)
from scheduler.placement import Decision
from scheduler.span_mirror import mirror
from scheduler.span_records import UNSET, Record

__all__ = [
    "BackendCall",
    "cpu_execution",
    "default_tracer",
    "mirror",
    "placement_span",
    "queue_span",
    "recording",
    "solo_batch",
    "start_batch_spans",
    "trace_id_of",
]

TRACER_NAME = "inference-gateway.scheduler"


def recording(tracer: Tracer) -> bool:
    """Whether spans of ``tracer`` can record, i.e. are worth making at all:
    with tracing off the scheduler makes none (even a no-op span costs a few
    microseconds of context switching per request)."""
    # The SDK's tracer first: the ABC check of NoOpTracer is a Python call.
    return type(tracer) is SdkTracer or not isinstance(tracer, trace.NoOpTracer)


def default_tracer() -> Tracer:
    """The global provider's tracer, or a no-op tracer when no SDK provider is
    installed yet: decided now, so install the provider before building the
    scheduler (the gateway does)."""
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME)


def queue_span(
    tracer: Tracer,
    parent: Context | None,
    *,
    model: str,
    start_ns: int,
    end_ns: int | None = None,
    error: str | None = None,
) -> None:
    """A request's wait, from ``start_ns`` (admission, or when the front end
    received it) to ``end_ns`` (its batch's start) or now, failed with
    ``error``: emitted whole when the wait ends (``emit_span``), so a queued
    request holds no span object, only when it came (``Pending``)."""
    status = UNSET if error is None else Status(StatusCode.ERROR, error)
    end = end_ns if end_ns is not None else time.time_ns()
    emit_span(
        tracer,
        "queue",
        {"gateway.model": model},
        start_ns=start_ns,
        end_ns=end,
        status=status,
        parent=parent,
    )


def start_batch_spans(
    tracer: Tracer,
    parents: Sequence[Context | None],
    *,
    model: str,
    size: int,
    trigger: str,
    attempt: int,
    start_ns: int | None = None,
    waits: Sequence[int] = (),
) -> list[Span]:
    """A ``batch`` span per member, each a child of its ``parents`` entry (the
    member's server span), the first member's (the leader's) first; the
    others' are linked to the leader's. They share one attributes dict (no
    one sets attributes on a batch span): one per batch, not per member.

    ``waits`` (with ``start_ns``): when each member's wait began, or 0 for
    one whose queue span is made already (a re-run half of a split): the
    queue spans that end where the batch spans begin, made here, in the same
    pass (``queue_span``'s, sharing one attributes dict too)."""
    attributes: dict[str, AttributeValue] = {
        "gateway.model": model,
        "gateway.batch.size": size,
        "gateway.batch.members": len(parents),
        "gateway.batch.trigger": trigger,
    }
    if attempt:
        attributes["gateway.batch.attempt"] = attempt
    waited: dict[str, AttributeValue] = {"gateway.model": model}
    spans: list[Span] = []
    links: Sequence[Link] = ()
    for parent, since in zip(parents, waits or repeat(0), strict=False):  # repeat: no waits
        if since and start_ns is not None:
            emit_span(tracer, "queue", waited, start_ns=since, end_ns=start_ns, parent=parent)
        span = start_deferred(
            tracer, "batch", parent, start_ns=start_ns, links=links, attributes=attributes
        ) or tracer.start_span(
            "batch", context=parent, links=links, start_time=start_ns, attributes=attributes
        )
        if not spans and len(parents) > 1:
            # Links go from each other member to the leader only: that is the
            # way to Triton's spans, and N links back would be paid on every batch.
            links = (link_to(span, {"gateway.link": "batch"}),)
        spans.append(span)
    return spans


@contextmanager
def solo_batch(tracer: Tracer, parent: Context | None, model: str, rows: int) -> Iterator[Span]:
    """The batch span of a request the gateway does not batch: a batch of one."""
    (span,) = start_batch_spans(tracer, [parent], model=model, size=rows, trigger="solo", attempt=0)
    with trace.use_span(span, end_on_exit=True):
        yield span


def placement_span(
    tracer: Tracer,
    decision: Decision,
    *,
    start_ns: int,
    tries: int,
    phases: list[Record] | None,
) -> None:
    """A span from ``start_ns`` (the decision began) to now, with the decision's
    numbers; its record kept in ``phases`` (when given) for ``mirror``."""
    values: dict[str, AttributeValue] = {
        "gateway.placement.verdict": decision.verdict.value,
        "gateway.placement.reason": decision.reason,
    }
    if tries:
        values["gateway.placement.try"] = tries
    if decision.backend_id is not None:
        values["gateway.placement.backend"] = decision.backend_id
    if decision.runner_up is not None:
        values["gateway.placement.runner_up"] = decision.runner_up
    # NaN means "not known": leave the attribute out rather than export a NaN.
    for key, number in (
        ("gateway.placement.score_s", decision.predicted_s),
        ("gateway.placement.telemetry_age_s", decision.telemetry_age_s),
    ):
        if math.isfinite(number):
            values[key] = number
    status = UNSET
    if decision.backend_id is None:
        status = Status(StatusCode.ERROR, decision.reason)
    finished = emit_span(
        tracer, "placement", values, start_ns=start_ns, end_ns=time.time_ns(), status=status
    )
    if phases is not None:
        phases.append(finished)


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
