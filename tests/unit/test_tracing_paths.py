"""The traced request path's shortcuts do what the calls they replace do:
``scheduler.current_span`` (the API's current span and context), the SERVER
span made without asking the SDK's always-on samplers (``gateway.server_span``),
and ``Refusals`` handing tracing's interceptor every rpc but ``ModelInfer``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, Decision, StaticSampler
from opentelemetry.trace import Status, StatusCode

from gateway.metrics import Refusals
from gateway.server_span import ServerSpans
from gateway.telemetry import MODEL_INFER
from scheduler.current_span import current_context, current_span, make_current, restore, span_in
from scheduler.deferred_span import DeferredLink, DeferredSpan, emit_span, link_to, start_deferred
from scheduler.span_records import Record, RecordProcessor, context_of
from scheduler.tracing import BackendCall, trace_id_of

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_current_span_is_read_and_set_as_the_api_does() -> None:
    tracer = TracerProvider().get_tracer("test")
    assert current_span() is trace.get_current_span() is trace.INVALID_SPAN
    outer = tracer.start_span("outer")
    token = make_current(outer)
    try:
        assert current_span() is trace.get_current_span() is outer
        assert current_context() is otel_context.get_current()
        assert span_in(None) is outer and span_in(current_context()) is outer
        inner = tracer.start_span("inner")
        assert span_in(trace.set_span_in_context(inner)) is inner
        assert span_in(otel_context.Context()) is trace.INVALID_SPAN
        with trace.use_span(inner):  # the API's own way, seen by ours
            assert current_span() is inner
        assert current_span() is outer
    finally:
        restore(token)
    assert current_span() is trace.INVALID_SPAN


@pytest.mark.parametrize("caller_state", ["", "vendor=x"])
@pytest.mark.parametrize("bags", [False, True])
def test_a_backend_calls_headers_are_the_w3c_propagators(caller_state: str, bags: bool) -> None:
    tracer = TracerProvider(active_span_processor=RecordProcessor(lambda record: None)).get_tracer(
        "test"
    )
    carrier = {"traceparent": CALLER, "tracestate": caller_state}
    context = propagate.extract(carrier)
    if bags:
        context = baggage.set_baggage("tenant", "a", context)
    queue = start_deferred(tracer, "queue", context)  # a deferred span, as in the gateway
    assert type(queue) is DeferredSpan
    token = otel_context.attach(trace.set_span_in_context(queue, context))
    try:
        with BackendCall(tracer, backend_id="b", endpoint="h:1", retries=0, phases=None) as sent:
            expected: dict[str, str] = {}
            propagate.inject(expected)
            assert sent == expected and sent["traceparent"].startswith("00-0af76519")
            assert ("baggage" in sent) is bags and ("tracestate" in sent) is bool(caller_state)
            assert trace_id_of(current_span()) == CALLER.split("-")[1] == trace_id_of(queue)
    finally:
        otel_context.detach(token)


@pytest.mark.parametrize("error", [None, "it broke"])
def test_a_span_emitted_whole_is_the_record_its_deferred_span_sends(error: str | None) -> None:
    sent: list[Record] = []
    tracer = TracerProvider(active_span_processor=RecordProcessor(sent.append)).get_tracer("test")
    context = propagate.extract({"traceparent": CALLER, "tracestate": "vendor=x"})
    parent = start_deferred(tracer, "batch", context)
    assert type(parent) is DeferredSpan
    under = trace.set_span_in_context(parent)
    status = Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET)
    # No span object for this one: its record is built under the deferred parent.
    emitted = emit_span(tracer, "placement", {"a": 1}, start_ns=1, end_ns=2, status=status,
                        parent=under)  # fmt: skip
    span = start_deferred(tracer, "placement", under, start_ns=1, attributes={"a": 1})
    assert type(span) is DeferredSpan
    if error:
        span.set_status(status)
    finished = span.finish(2)
    assert sent == [emitted, finished]

    def without_span_id(r: Record) -> tuple[object, ...]:
        return (r[0], r[1][:1] + r[1][2:], *r[2:])

    assert without_span_id(emitted) == without_span_id(finished)
    assert emitted[2] == parent.own and emitted[1][0] == parent.own[0]
    assert emitted[9] == ((2, error) if error else (0, None))


def test_a_link_to_a_deferred_span_is_the_link_its_span_context_makes() -> None:
    tracer = TracerProvider(active_span_processor=RecordProcessor(lambda record: None)).get_tracer(
        "test"
    )
    context = propagate.extract({"traceparent": CALLER, "tracestate": "vendor=x"})
    leader = start_deferred(tracer, "batch", context)
    assert type(leader) is DeferredSpan
    deferred = link_to(leader, {"gateway.link": "batch"})
    made = trace.Link(leader.get_span_context(), {"gateway.link": "batch"})
    assert type(deferred) is DeferredLink
    assert deferred.context == made.context and deferred.attributes == made.attributes
    assert deferred.record == (context_of(made.context), {"gateway.link": "batch"})


@dataclass
class _Call:
    """What the SERVER span reads of a gRPC servicer context."""

    metadata: tuple[tuple[str, str], ...]

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self.metadata

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50123"

    def code(self) -> grpc.StatusCode | None:
        return None

    def details(self) -> str | None:
        return None


async def _server_span(sampler: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    async def behaviour(request: bytes, context: Any) -> bytes:
        assert current_span().is_recording()  # the SERVER span is current in the rpc
        return request

    traced = ServerSpans(provider).wrap(MODEL_INFER, behaviour)
    call: Any = _Call(metadata)
    assert await traced(b"x", call) == b"x"
    assert current_span() is trace.INVALID_SPAN
    (span,) = exporter.get_finished_spans()
    return span


@pytest.mark.parametrize("sampler", [ALWAYS_ON, DEFAULT_ON])
@pytest.mark.parametrize("traceparent", [False, True])
async def test_server_spans_of_the_always_on_samplers_match_those_of_an_asked_sampler(
    sampler: Any, traceparent: bool
) -> None:
    metadata: tuple[tuple[str, str], ...] = (("user-agent", "grpc-go/1.0"),)
    if traceparent:
        metadata += (("traceparent", CALLER),)
    # A sampler of the same decision that is not the SDK's own object is asked.
    asked = StaticSampler(Decision.RECORD_AND_SAMPLE)
    ours, theirs = await _server_span(sampler, metadata), await _server_span(asked, metadata)
    assert ours.name == theirs.name == MODEL_INFER and ours.kind is trace.SpanKind.SERVER
    assert dict(ours.attributes or {}) == dict(theirs.attributes or {})
    assert dict(ours.attributes or {})["net.peer.name"] == "localhost"
    assert ours.context.trace_flags.sampled and theirs.context.trace_flags.sampled
    assert ours.context.trace_state == theirs.context.trace_state
    if traceparent:
        assert format(ours.context.trace_id, "032x") == CALLER.split("-")[1]
        assert ours.parent is not None and ours.parent.is_remote
    else:
        assert ours.parent is None and theirs.parent is None


@dataclass
class _Details:
    method: str


class _Seen(grpc.aio.ServerInterceptor):
    """An interceptor that remembers the rpcs it saw."""

    def __init__(self) -> None:
        self.methods: list[str] = []

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        self.methods.append(details.method)
        return await continuation(details)


async def test_model_infer_never_enters_the_interceptor_the_other_rpcs_go_through() -> None:
    refusals, seen = Refusals(), _Seen()
    refusals.others = seen

    async def continuation(details: Any) -> Any:
        return f"handler of {details.method}"

    ready = "/inference.GRPCInferenceService/ModelReady"
    for method in (MODEL_INFER, ready, MODEL_INFER):
        details: Any = _Details(method)
        handler: Any = await refusals.intercept_service(continuation, details)
        assert handler == f"handler of {method}"
    assert seen.methods == [ready] and refusals.arrived == 2
