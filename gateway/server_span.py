"""The SERVER span of ``ModelInfer``, made where the rpc is registered.

Every other rpc gets its SERVER span from the contrib aio server interceptor.
For ``ModelInfer``, the rpc the gateway serves at saturation, that
interceptor cost more than the rest of tracing (measured with tracing on and
nothing sampled: a quarter of the gateway's CPU per request here): per call
it wraps the rpc's handler anew, wraps the servicer context in a proxy whose
every call goes through Python, and starts a live SDK span. ``ServerSpans``
wraps the behaviour once, at registration, and per call makes the same span
as the interceptor does, the cheap way:

- W3C context from the ``traceparent``/``tracestate`` metadata (the global
  propagator), the provider's sampler asked once;
- a sampled span is a ``DeferredSpan`` (scheduler/deferred_span.py): plain
  fields until it ends, then built finished for the provider's processors;
  an unsampled one is a ``NonRecordingSpan`` that carries the context on;
- same name (``/inference.GRPCInferenceService/ModelInfer``), kind, and
  attributes (``rpc.system``, ``rpc.service``, ``rpc.method``,
  ``rpc.grpc.status_code``, ``rpc.user_agent``, ``net.peer.ip``/``port``/
  ``name``), and the same status for an aborted call (ERROR for the codes the
  contrib instrumentation counts as server errors, with ``code:details``).

The contrib span also carries an ``exception`` event for each abort (the
``AbortError`` that ends it, with a stack trace); this one does not: its
status code says the same.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.grpc.version import __version__ as CONTRIB_VERSION
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, Decision
from opentelemetry.trace import (
    INVALID_SPAN_CONTEXT,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

from scheduler.current_span import make_current, restore
from scheduler.deferred_span import DeferredSpan
from scheduler.finished_spans import scope_pair, span_ids, trace_ids
from scheduler.span_records import context_of

__all__ = ["ServerSpans"]

#: The contrib instrumentation's scope, so both kinds of server span look alike.
INSTRUMENTATION = "opentelemetry.instrumentation.grpc"
SCHEMA_URL = "https://opentelemetry.io/schemas/1.11.0"
_SAMPLED = int(TraceFlags.SAMPLED)
_UNSAMPLED = TraceFlags(TraceFlags.DEFAULT)
#: The codes the contrib instrumentation reports as an ERROR status on a server span.
_SERVER_ERRORS = {
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}

Behaviour = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]


class ServerSpans:
    """Wraps unary rpc behaviours so that each call runs under its SERVER span."""

    def __init__(self, provider: TracerProvider) -> None:
        tracer = provider.get_tracer(INSTRUMENTATION, CONTRIB_VERSION, SCHEMA_URL)
        assert isinstance(tracer, SdkTracer)
        self._tracer = tracer
        self._scope = scope_pair(tracer)
        self._sampler = provider.sampler
        self._ids = provider.id_generator
        self._new_span_id = span_ids(provider.id_generator)
        self._new_trace_id = trace_ids(provider.id_generator)
        # The SDK's always_on and parentbased_always_on samplers sample a span
        # without a parent, add no attributes and give it no trace state: for
        # a caller that sent no ``traceparent`` there is nothing to ask them.
        self._roots_sampled = provider.sampler is ALWAYS_ON or provider.sampler is DEFAULT_ON

    def wrap(self, method: str, behaviour: Behaviour) -> Behaviour:
        """``behaviour`` under a SERVER span named ``method`` (``/service/method``)."""
        service, _, name = method.lstrip("/").partition("/")
        base: dict[str, Any] = {"rpc.system": "grpc", "rpc.method": name, "rpc.service": service}
        base["rpc.grpc.status_code"] = 0  # until ``_failed`` says otherwise

        @functools.wraps(behaviour)
        async def traced(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            span = self._start(method, base, context)
            token = make_current(span)
            try:
                return await behaviour(request, context)
            finally:
                restore(token)
                if type(span) is DeferredSpan:  # not isinstance: an ABC's check is slow
                    code = context.code()
                    if isinstance(code, grpc.StatusCode) and code is not grpc.StatusCode.OK:
                        _failed(span, code, context)
                    span.end()

        return traced

    def _start(
        self,
        method: str,
        base: dict[str, Any],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace.Span:
        metadata = context.invocation_metadata() or ()
        carrier: dict[str, str] = {}
        user_agent = None
        for key, value in metadata:
            if key in ("traceparent", "tracestate"):
                carrier[key] = str(value)
            elif key == "user-agent":
                user_agent = str(value)
        # A call's context is empty when its handler starts: without a
        # ``traceparent`` the span is a root.
        caller = propagate.extract(carrier) if carrier else None
        parent = (
            trace.get_current_span(caller).get_span_context()
            if caller is not None
            else INVALID_SPAN_CONTEXT
        )
        valid = parent.is_valid
        trace_id = (
            parent.trace_id if valid else self._new_trace_id() or self._ids.generate_trace_id()
        )
        attributes = base.copy()
        if user_agent is not None:
            attributes["rpc.user_agent"] = user_agent
        peer = context.peer()
        attributes.update(_PEERS.get(peer) or _peer_attributes(peer))
        span_id = self._new_span_id() or self._ids.generate_span_id()
        state = None
        if valid or not self._roots_sampled:
            sampled = self._sampler.should_sample(
                caller, trace_id, method, SpanKind.SERVER, attributes
            )
            state = sampled.trace_state
            if sampled.decision is not Decision.RECORD_AND_SAMPLE:
                # DROP (or RECORD_ONLY, which no built-in sampler returns: only
                # sampled spans are exported): the context carries on, unsampled.
                return trace.NonRecordingSpan(
                    SpanContext(trace_id, span_id, False, _UNSAMPLED, state)
                )
            # A sampler may add attributes; the SDK's own hand back those they were
            # given, as a read-only view that is slow to copy from (a few µs).
            if sampled.attributes and sampled.attributes != attributes:
                attributes.update(sampled.attributes)
        # The SpanContext is made only if asked for (DeferredSpan): the answer's
        # trace id and the backend's headers come from the span's record context.
        return DeferredSpan(
            self._tracer,
            self._scope,
            method,
            (trace_id, span_id, _SAMPLED, False, state.to_header() if state else ""),
            context_of(parent) if valid else None,
            state,
            time.time_ns(),
            (),
            SpanKind.SERVER,
            parent_context=parent if valid else None,
            attributes=attributes,
        )


def _failed(
    span: DeferredSpan, code: grpc.StatusCode, context: grpc.aio.ServicerContext[Any, Any]
) -> None:
    """A call that did not end OK: its code, and an ERROR status for the codes
    the contrib instrumentation counts as server errors."""
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code}:{context.details() or ''}"))


def _peer_attributes(peer: str) -> dict[str, str]:
    """``net.peer.*`` from gRPC's peer string (``ipv4:127.0.0.1:57284``,
    ``ipv6:[::1]:57284``), as the contrib instrumentation splits it; a
    connection's calls share a peer, so the split is remembered (in
    ``_PEERS``, where the SERVER span looks first)."""
    attributes: dict[str, str] = {}
    if not peer.startswith("unix:"):
        try:
            ip, port = peer.split(",")[0].split(":", 1)[1].rsplit(":", 1)
        except (IndexError, ValueError):
            ip = port = ""
        if ip:
            ip = unquote(ip)
            attributes = {"net.peer.ip": ip, "net.peer.port": port}
            if ip in ("[::1]", "127.0.0.1"):
                attributes["net.peer.name"] = "localhost"
    if len(_PEERS) >= _PEERS_KEPT:
        _PEERS.clear()
    _PEERS[peer] = attributes
    return attributes


#: Peer strings split so far (cleared when full: a bound on its memory).
_PEERS: dict[str, dict[str, str]] = {}
_PEERS_KEPT = 1024
