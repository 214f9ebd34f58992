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

A queued request holds no span: its ``queue`` span is made whole when its
wait ends (``queue_span``), and a placement's when the decision is made, each
as a bare record under a deferred parent (``deferred_span.emit_span``).

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

import grpc
from opentelemetry import propagate, trace
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from scheduler.current_span import current_context, make_current, restore
from scheduler.deferred_span import (
    DeferredSpan,
    emit_span,
    end_with_record,
    link_to,
    start_deferred,
)
from scheduler.errors import GatewayError
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
#: The rpc a gRPC backend is called with (OpenTelemetry RPC conventions: ``service/method``).
RPC_SERVICE = "inference.GRPCInferenceService"
RPC_METHOD = "ModelInfer"
#: gRPC status code numbers, for ``rpc.grpc.status_code`` (the conventions want the number).
_GRPC_CODES = {code.name: int(code.value[0]) for code in grpc.StatusCode}


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


def trace_id_of(span: Span) -> str:
    """``span``'s 32-hex-digit trace id, or "" for an invalid context (a
    deferred span's is read from its record context: no ``SpanContext`` made)."""
    if type(span) is DeferredSpan:  # not isinstance: an ABC's check is a Python call
        text = span.hex_trace_id  # formatted once per trace (a request's spans share it)
        if not text:
            text = span.hex_trace_id = format(span.own[0], "032x")
        return text
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


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


class BackendCall:
    """A CLIENT span around one backend call: ``with BackendCall(...) as
    headers`` yields the W3C headers that carry its context
    (``traceparent``/``tracestate``) for the backend to join.

    A backend with an endpoint is a gRPC server: the span follows the
    OpenTelemetry RPC conventions (name ``service/method``, ``rpc.*``,
    ``server.address``/``port``, ``rpc.grpc.status_code``). Its record is
    kept in ``phases`` (when given) for ``mirror``. A class, not a
    ``@contextmanager`` generator: entering and leaving one of those costs
    four Python calls more, on every batch.
    """

    __slots__ = (
        "_attributes", "_endpoint", "_name", "_phases", "_span", "_start_ns", "_token", "_tracer",
    )  # fmt: skip

    def __init__(
        self,
        tracer: Tracer,
        *,
        backend_id: str,
        endpoint: str,
        retries: int,
        phases: list[Record] | None,
    ) -> None:
        attributes: dict[str, AttributeValue] = {"gateway.backend.id": backend_id}
        name = "backend.infer"
        if endpoint:
            name = f"{RPC_SERVICE}/{RPC_METHOD}"
            host, _, port = endpoint.rpartition(":")
            attributes["rpc.system"] = "grpc"
            attributes["rpc.service"] = RPC_SERVICE
            attributes["rpc.method"] = RPC_METHOD
            attributes["server.address"] = host
            if port.isdigit():
                attributes["server.port"] = int(port)
        if retries:
            attributes["gateway.retries"] = retries
        self._tracer = tracer
        self._attributes = attributes
        self._name = name
        self._endpoint = endpoint
        self._phases = phases

    def __enter__(self) -> dict[str, str]:
        tracer, name, attributes = self._tracer, self._name, self._attributes
        self._start_ns = start_ns = time.time_ns()
        # The span keeps ``attributes`` (the dict): those known at the end join it there.
        self._span = span = start_deferred(
            tracer, name, None, start_ns=start_ns, kind=SpanKind.CLIENT, attributes=attributes
        ) or tracer.start_span(
            name, kind=SpanKind.CLIENT, start_time=start_ns, attributes=attributes
        )
        # The span is current for the call (``use_span`` without its own context
        # manager's cost: neither recording exceptions nor ending the span here).
        self._token = make_current(span)
        return w3c_headers(span)

    def __exit__(self, kind: object, exc: BaseException | None, trace: object) -> None:
        restore(self._token)
        span = self._span
        error = exc if isinstance(exc, GatewayError) else None
        if self._endpoint:
            code = "OK" if error is None else error.code
            span.set_attribute("rpc.grpc.status_code", _GRPC_CODES.get(code, 2))
        status = UNSET
        if error is not None:
            span.set_attribute("gateway.error.code", error.code)
            status = Status(StatusCode.ERROR, error.message)
            span.set_status(status)
        finished = end_with_record(
            self._tracer,
            span,
            self._name,
            self._attributes,
            SpanKind.CLIENT,
            status,
            self._start_ns,
            time.time_ns(),
        )
        if self._phases is not None:
            self._phases.append(finished)


def w3c_headers(span: Span) -> dict[str, str]:
    """``propagate.inject`` into a new dict, ``span`` being current. With the
    API's default propagators (W3C trace context, and W3C baggage when no
    baggage is current) a deferred span's ``traceparent`` and ``tracestate``
    are written from its record context, as the W3C propagator writes them,
    without making a ``SpanContext`` or calling each propagator."""
    global _w3c
    textmap = propagate.get_global_textmap()
    if textmap is not _w3c[0]:
        _w3c = (textmap, _plain_w3c(textmap))
    if _w3c[1] and type(span) is DeferredSpan and not current_context().get(_BAGGAGE_KEY):
        _, span_id, flags, _, state = span.own
        carrier = {"traceparent": f"00-{trace_id_of(span)}-{span_id:016x}-{flags:02x}"}
        if state:
            carrier["tracestate"] = state
        return carrier
    carrier = {}
    propagate.inject(carrier)
    return carrier


def _plain_w3c(textmap: TextMapPropagator) -> bool:
    """Whether ``textmap`` is W3C trace context, with or without W3C baggage
    (the API's default, ``OTEL_PROPAGATORS=tracecontext,baggage``)."""
    parts = getattr(textmap, "_propagators", ()) if type(textmap) is CompositePropagator else ()
    kinds = {type(p) for p in parts or (textmap,)}
    return TraceContextTextMapPropagator in kinds and kinds <= _W3C


_W3C = {TraceContextTextMapPropagator, W3CBaggagePropagator}
#: The global propagator last seen by ``w3c_headers``, and whether it is ``_plain_w3c``.
_w3c: tuple[TextMapPropagator | None, bool] = (None, False)


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
