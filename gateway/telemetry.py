"""OpenTelemetry tracing set-up, from the standard ``OTEL_*`` environment variables.

What is read (all standard; the SDK and exporters read most of them themselves):

- ``OTEL_SDK_DISABLED=true``: tracing off, whatever else is set.
- ``OTEL_TRACES_EXPORTER``: ``otlp``, ``console`` or ``none`` (comma-separated
  for several). Unset: ``otlp`` when an OTLP endpoint variable is set, else
  ``none`` (the SDK's own default would export to localhost:4317 and log an
  error per batch when nothing listens there).
- ``OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL``: ``grpc`` (default) or ``http/protobuf``;
  ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``..._HEADERS``, ``..._TIMEOUT``.
- ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` (default service name
  ``inference-gateway``), ``OTEL_TRACES_SAMPLER`` / ``OTEL_TRACES_SAMPLER_ARG``
  (default ``parentbased_always_on``: a caller's sampled flag is respected),
  ``OTEL_BSP_*`` for the batch span processor, ``OTEL_PROPAGATORS``.

With tracing on, OTLP encoding and export run in a child process
(``gateway.span_export``), which takes the spans built finished as plain
records (``scheduler.span_records``) and others from the SDK's batch span
processor, and
``ModelInfer``'s SERVER span is made at registration (``traced``,
``gateway.server_span``) rather than by the contrib interceptor.

With tracing off no SDK is installed: the API's tracers are no-ops, the gRPC
server gets no interceptor, and the only work left per request is a metadata
lookup for an incoming ``traceparent`` (forwarded to Triton so it can still join
the caller's trace).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from gateway.config import ConfigError
from gateway.server_span import ServerSpans
from gateway.span_export import ProcessSpanExporter
from scheduler.current_span import current_span, span_in
from scheduler.span_records import RecordProcessor
from scheduler.tracing import trace_id_of

log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "inference-gateway"
#: Trailing metadata key that carries the request's trace id back to the caller.
TRACE_ID_KEY = "x-trace-id"

_OTLP_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


@dataclass
class Tracing:
    """The gateway's tracing: an SDK provider when on, nothing when off."""

    provider: TracerProvider | None = None

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def tracer(self, name: str) -> trace.Tracer:
        return trace.get_tracer(name, tracer_provider=self.provider)

    def server_interceptors(self) -> list[grpc.aio.ServerInterceptor]:
        """The contrib aio server interceptor (SERVER spans, W3C extraction,
        status on abort), health checks and ``ModelInfer`` left out (see
        ``traced``); none when tracing is off."""
        if self.provider is None:
            return []
        from opentelemetry.instrumentation.grpc import aio_server_interceptor

        interceptor: grpc.aio.ServerInterceptor = aio_server_interceptor(  # type: ignore[no-untyped-call]
            tracer_provider=self.provider, filter_=_contrib_traces
        )
        return [interceptor]

    def traced(self, method: str, behaviour: Any) -> Any:
        """A unary rpc's ``behaviour`` under its SERVER span, made at
        registration by ``gateway.server_span`` rather than per call by the
        interceptor (``ModelInfer``'s; unchanged when tracing is off)."""
        if self.provider is None:
            return behaviour
        return ServerSpans(self.provider).wrap(method, behaviour)

    def request_context(self, metadata: Iterable[tuple[str, Any]] | None) -> Context | None:
        """The context a request's scheduler spans descend from.

        On: None, i.e. the current context, which the interceptor made the
        SERVER span's. Off: the caller's ``traceparent`` if it sent one, so the
        backend call still carries it (the no-op tracer passes it through).
        """
        if self.provider is not None or not metadata:
            return None
        carrier: dict[str, Any] = {}
        for key, value in metadata:  # a loop, not a comprehension: no frame per call
            if key == "traceparent" or key == "tracestate":
                carrier[key] = value
        return propagate.extract(carrier) if carrier else None

    def answer_metadata(
        self, metadata: Iterable[tuple[str, Any]] | None
    ) -> tuple[tuple[str, str], ...]:
        """The ``x-trace-id`` trailer of an answer: the server span's trace id
        when tracing is on, else the caller's, when it sent a ``traceparent``."""
        if self.provider is not None:
            return trace_id_metadata()
        return caller_trace_id(metadata) if metadata else ()

    # grpc builds a call's metadata anew at each read (about 6 µs here): with
    # tracing on, ``ModelInfer``'s is read once, by its SERVER span
    # (gateway/server_span.py), as neither of these needs it then.
    def call_trailer(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[tuple[str, str], ...]:
        """``answer_metadata`` of a call, its metadata read only if needed."""
        return self.answer_metadata(self._metadata_if_off(context))

    def call_context(self, context: grpc.aio.ServicerContext[Any, Any]) -> Context | None:
        """``request_context`` of a call, its metadata read only if needed."""
        return self.request_context(self._metadata_if_off(context))

    def _metadata_if_off(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Iterable[tuple[str, Any]] | None:
        return None if self.provider is not None else context.invocation_metadata()

    def answering_with_trace_id(self, behaviour: Any) -> Any:
        """An rpc's ``behaviour`` whose answers, errors included, carry
        ``answer_metadata`` (the inference rpcs set it on their hot path)."""

        @functools.wraps(behaviour)
        async def answer(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            if trailer := self.call_trailer(context):
                context.set_trailing_metadata(trailer)
            return await behaviour(request, context)

        return answer

    def shutdown(self) -> None:
        """Flush what is buffered (bounded by the exporter's timeout) and stop."""
        if self.provider is not None:
            self.provider.shutdown()


_HEALTH_PREFIX = "/grpc.health.v1.Health/"
#: The rpc whose SERVER span ``Tracing.traced`` makes instead of the interceptor.
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"


def _contrib_traces(details: Any) -> bool:
    """Whether the contrib interceptor traces an rpc: all but health checks and
    ``ModelInfer``. (The contrib ``filters.health_check()`` does the first
    through a runtime Protocol isinstance check that cost ~4 % of the
    gateway's CPU per request under load; a prefix test is enough here.)"""
    method = str(getattr(details, "method", ""))
    return method != MODEL_INFER and not method.startswith(_HEALTH_PREFIX)


def caller_trace_id(metadata: Iterable[tuple[str, Any]] | None) -> tuple[tuple[str, str], ...]:
    """``(("x-trace-id", <32 hex>),)`` from the caller's W3C ``traceparent``
    (``version-traceid-parentid-flags``), or ``()`` when it sent none or an
    invalid one: with tracing off, the id a caller can still find its trace by."""
    for key, value in metadata or ():
        if key == "traceparent":
            parts = str(value).split("-")
            if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
                try:
                    int(parts[1], 16)
                except ValueError:
                    return ()
                return ((TRACE_ID_KEY, parts[1].lower()),)
            return ()
    return ()


def trace_id_metadata(context: Context | None = None) -> tuple[tuple[str, str], ...]:
    """``(("x-trace-id", <32 hex>),)`` for the span in ``context`` (default: the
    current one), or ``()`` when there is no valid span."""
    trace_id = trace_id_of(current_span() if context is None else span_in(context))
    return ((TRACE_ID_KEY, trace_id),) if trace_id else ()


def _exporter_names(env: Mapping[str, str]) -> list[str]:
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None:
        raw = "otlp" if any(env.get(v) for v in _OTLP_ENDPOINT_VARS) else "none"
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in ("otlp", "console", "none"):
            raise ConfigError(
                f"OTEL_TRACES_EXPORTER: unknown exporter {name!r}; use otlp, console or none"
            )
    return [n for n in names if n != "none"]


def _exporter(name: str, env: Mapping[str, str], resource: Resource) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise ConfigError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not supported; use grpc or http/protobuf"
        )
    # The SDK's OTLP exporter, in a child process (gateway/span_export.py).
    return ProcessSpanExporter(protocol, resource, env)


def configure_tracing(
    env: Mapping[str, str] | None = None, *, install_global: bool = True
) -> Tracing:
    """Tracing as the environment asks; installs the provider globally when on
    (unless ``install_global`` is False, for tests).

    Raises ConfigError for an exporter or protocol it does not know.
    """
    env = os.environ if env is None else env
    names = _exporter_names(env)
    if not names:
        return Tracing()
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    exporters = [_exporter(name, env, resource) for name in names]
    # Alone, the export process takes the spans built finished as records
    # (scheduler/span_records.py); beside another exporter, all go as spans.
    processor = None
    if len(exporters) == 1 and isinstance(exporters[0], ProcessSpanExporter):
        processor = RecordProcessor(exporters[0].add_record)
    # sampler=None: the SDK reads OTEL_TRACES_SAMPLER / _ARG.
    provider = TracerProvider(resource=resource, active_span_processor=processor)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if install_global:
        trace.set_tracer_provider(provider)
    log.info(
        "tracing on: service %s, exporters %s, sampler %s",
        resource.attributes.get(SERVICE_NAME),
        ", ".join(names),
        provider.sampler.get_description(),
    )
    return Tracing(provider)
