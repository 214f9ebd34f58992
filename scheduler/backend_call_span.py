"""The CLIENT span around a backend call, and the W3C headers that carry it to the backend.

Part of the scheduler's spans (scheduler/tracing.py draws the whole trace):
the backend call's span is current while the call runs, so a backend that
makes spans of its own (the CPU pool's ``cpu.execute``) nests them under it,
and its context travels to a gRPC backend (Triton) as ``traceparent`` and
``tracestate`` headers, so the backend's spans join the trace too.
"""

from __future__ import annotations

import time

import grpc
from opentelemetry import propagate
from opentelemetry.baggage import _BAGGAGE_KEY
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from scheduler.current_span import current_context, make_current, restore
from scheduler.deferred_span import DeferredSpan, end_with_record, start_deferred, trace_id_of
from scheduler.errors import GatewayError
from scheduler.span_records import UNSET, Record

__all__ = ["RPC_METHOD", "RPC_SERVICE", "BackendCall", "w3c_headers"]

#: The rpc a gRPC backend is called with (OpenTelemetry RPC conventions: ``service/method``).
RPC_SERVICE = "inference.GRPCInferenceService"
RPC_METHOD = "ModelInfer"
#: gRPC status code numbers, for ``rpc.grpc.status_code`` (the conventions want the number).
_GRPC_CODES = {code.name: int(code.value[0]) for code in grpc.StatusCode}


class BackendCall:
    """A CLIENT span around one backend call: ``with BackendCall(...) as
    headers`` yields the W3C headers that carry its context
    (``traceparent``/``tracestate``) for the backend to join.

    A backend with an endpoint is a gRPC server: the span follows the
    OpenTelemetry RPC conventions (name ``service/method``, ``rpc.*``,
    ``server.address``/``port``, ``rpc.grpc.status_code``). Its record is
    kept in ``phases`` (when given) for ``mirror``. A class, not a
    ``@contextmanager`` generator: entering and leaving one of those costs
    three Python calls more, on every batch.
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
        if self._phases is None:  # a lone member's batch: no copies, no record wanted
            span.end(end_time=time.time_ns())
            return
        self._phases.append(
            end_with_record(
                self._tracer,
                span,
                self._name,
                self._attributes,
                SpanKind.CLIENT,
                status,
                self._start_ns,
                time.time_ns(),
            )
        )


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
