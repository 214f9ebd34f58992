"""gateway.span_export / gateway.otlp_records: spans cross to the export process unchanged."""

from __future__ import annotations

import datetime
import multiprocessing
import pickle
import threading
import time
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from gateway.otlp_records import RecordEncoder, _key_value
from gateway.span_export import decode, encode, flatten, rebuild, serve

RESOURCE = Resource({"service.name": "gw", "host.name": "h"}, "https://example.test/schema")


def _spans() -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("scope.a", "1.2", "https://example.test/scope")
    other = provider.get_tracer("scope.b")
    caller = SpanContext(
        0x0AF7651916CD43DD8448EB211C80319C,
        0xB7AD6B7169203331,
        True,
        TraceFlags(TraceFlags.SAMPLED),
        TraceState([("vendor", "x")]),
    )
    server = tracer.start_span(
        "server",
        context=trace.set_span_in_context(trace.NonRecordingSpan(caller)),
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "net.peer.port": "5", "n": 3, "ok": True},
    )
    with trace.use_span(server, end_on_exit=True):
        server.add_event("retry", {"attempt": 2})
        child = other.start_span(
            "call",
            kind=SpanKind.CLIENT,
            links=[Link(caller, {"gateway.link": "batch"})],
            attributes={"score_s": 0.25, "sizes": (1, 2)},
        )
        child.set_status(Status(StatusCode.ERROR, "it broke"))
        child.end()
    return exporter.get_finished_spans()


def test_flattened_spans_rebuild_as_they_were() -> None:
    for span in _spans():
        record = pickle.loads(pickle.dumps(flatten(span)))
        again = rebuild(record, RESOURCE, {})
        assert again.to_json() == span.to_json()


def test_requests_built_from_records_match_the_sdks_encoder() -> None:
    spans = _spans()
    encoder = RecordEncoder(dict(RESOURCE.attributes), RESOURCE.schema_url)
    for _ in range(2):  # the second time, from cached attribute messages
        ours = encoder.request([flatten(s) for s in spans])
        assert ours.spans == len(spans)
        assert ours.request == encode_spans(spans)


def test_a_repeated_attribute_set_is_encoded_once_and_equal_values_by_type() -> None:
    encoder = RecordEncoder({}, None)
    queue = {"gateway.model": "m", "gateway.batch.size": 8, "ok": True}
    first = encoder._span_attributes(queue)
    assert encoder._span_attributes(dict(queue)) is first  # kept: one look-up
    # ``True == 1`` and ``0.0 == -0.0``, but each encodes as its own type and sign.
    pairs: list[list[dict[str, Any]]] = [[{"a": True}, {"a": 1}], [{"a": 0.0}, {"a": -0.0}]]
    for pair in pairs:
        for attributes in pair:
            span = Span(attributes=[_key_value("a", attributes["a"])])
            assert encoder._span_attributes(attributes) == span.SerializeToString()


def test_record_batches_cross_the_pipe_with_marshal_else_pickle() -> None:
    records = [flatten(span) for span in _spans()]
    message = encode(records)
    assert message[:1] == b"m" and decode(message) == records
    # An attribute of a type marshal cannot write: the batch goes as a pickle.
    odd = (*records[0][:6], {"at": datetime.date(2026, 11, 29)}, *records[0][7:])
    message = encode([odd, *records])
    assert message[:1] == b"p" and decode(message) == [odd, *records]


def _until(condition: Any, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


class _Serving:
    """``serve`` on a thread, at the far end of a pipe, recording its exports."""

    def __init__(self, period_s: float) -> None:
        self.pipe, theirs = multiprocessing.Pipe(duplex=True)
        self.sent: list[list[Any]] = []
        self.flushes = 0
        self.loop = threading.Thread(
            target=serve, args=(theirs, self.sent.append, self._flush),
            kwargs={"period_s": period_s, "most": 5},
        )  # fmt: skip
        self.loop.start()

    def _flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.pipe.close()
        self.loop.join(10)


RECORDS = [flatten(span) for span in _spans()]  # two records a message


def test_the_export_process_gathers_messages_for_a_period() -> None:
    serving = _Serving(period_s=0.2)
    try:
        for _ in range(2):  # two messages within the period: one export, after it
            serving.pipe.send_bytes(encode(RECORDS))
        _until(lambda: serving.sent)
        assert serving.sent == [RECORDS * 2]
    finally:
        serving.close()


def test_the_export_process_sends_early_when_full_flushed_or_stopped() -> None:
    serving = _Serving(period_s=60)
    try:
        for _ in range(2):
            serving.pipe.send_bytes(encode(RECORDS))
        serving.pipe.send_bytes(b"flush")  # a flush sends what has gathered first
        assert serving.pipe.poll(10) and serving.pipe.recv_bytes() == b"flushed"
        assert serving.sent == [RECORDS * 2] and serving.flushes == 1
        for _ in range(3):  # ``most`` (5) records gathered: sent, long before the period
            serving.pipe.send_bytes(encode(RECORDS))
        _until(lambda: len(serving.sent) == 2)
        assert serving.sent[1] == RECORDS * 3
        serving.pipe.send_bytes(encode(RECORDS))  # what has gathered at the stop is sent too
        serving.pipe.send_bytes(b"stop")
        serving.loop.join(10)
        assert not serving.loop.is_alive() and serving.sent[2:] == [RECORDS]
    finally:
        serving.close()
