"""OTLP export in a child process, so the gateway's GIL never pays for encoding.

With the SDK's ``BatchSpanProcessor`` and OTLP exporter in the gateway, turning
each finished span into OTLP protobuf (and the exporter's gRPC channel) ran on
a thread of the gateway under its GIL: a fifth to a quarter of the gateway's
CPU under load at 100 % sampling. Here spans reach ``ProcessSpanExporter`` as
plain records (scheduler/span_records.py): the spans the gateway builds
finished (``ModelInfer``'s server, queue, batch, placement and backend-call
spans, scheduler/deferred_span.py) as records from birth, through
the provider's ``RecordProcessor``; any other span through the SDK's
``BatchSpanProcessor`` (its queue, batch size, schedule delay and drops, from
``OTEL_BSP_*``), flattened into a record (``flatten``) on its thread. Records
are serialised in batches with ``marshal`` (``encode``: C code, about half
the time ``pickle`` takes for these tuples of ints, strings and dicts, and
less to read back; ``pickle`` for a batch marshal cannot write) and written to a
pipe. A child process started with ``spawn`` reads the pipe, gathers the
batches for up to half a second (``serve``: an export call's cost is mostly
fixed), and hands them to the SDK's own OTLP exporter, which reads the standard
``OTEL_EXPORTER_OTLP_*`` variables as it would in the gateway: over gRPC, as
a request built straight from the tuples (gateway/otlp_records.py); over
HTTP/protobuf, as spans rebuilt as SDK ``ReadableSpan`` objects (``rebuild``)
for its encoder; mirror records are expanded into their copies first
(``span_records.expand``).

What a span carries across: name, ids, flags and trace state, parent (and
whether it was remote), kind, times, attributes, events, links (with their
attributes), status and instrumentation scope; the resource is sent once, at
start-up. Counts of items the SDK's limits dropped are not carried: the
gateway's spans stay well under those limits.

The pipe is the only channel. The child exits at the ``STOP`` message or when
the pipe closes (the gateway exited, however it exited), after its exporter's
own shutdown flushes what it holds. A send that blocks (the child is busy
exporting) blocks a sending thread only (the batch processor's or the
records'); their bounded queues then drop spans, as the batch processor does
when an in-process exporter is slow.
"""

from __future__ import annotations

import logging
import marshal
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from itertools import islice
from multiprocessing.connection import Connection
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from scheduler.span_records import MirrorRecord, Record, context_of, expand, span_context_of

__all__ = ["ProcessSpanExporter", "decode", "encode", "flatten", "rebuild", "serve"]

log = logging.getLogger(__name__)

_STOP = b"stop"
_FLUSH = b"flush"
_FLUSHED = b"flushed"
_START_TIMEOUT_S = 30.0
#: How often the sender thread sends the records gathered, and at most how
#: many go in one message (at 1,000 requests/s, a few hundred records).
_RECORD_PERIOD_S = 0.1
_RECORD_BATCH = 1024
#: The export process gathers records for up to this long, or up to this many
#: (each message adds at most ``_RECORD_BATCH``), per OTLP request: an export
#: call's gRPC round costs it about 0.3 ms of CPU whatever the request's size
#: (timed on this machine against a local rotel), so a few large requests cost
#: less than many small ones. Spans reach the collector up to this much later.
_EXPORT_PERIOD_S = 0.5
_EXPORT_RECORDS = 2048
#: Records held at most while the export process is behind (then the oldest
#: are dropped); ``OTEL_BSP_MAX_QUEUE_SIZE`` when set, as for the batch span
#: processor (which drops the newest instead).
_MAX_RECORDS = 8192


def encode(records: list[Record | MirrorRecord]) -> bytes:
    """A batch of records as one message: ``marshal``'s bytes after ``m``, or
    ``pickle``'s after ``p`` for a batch with a value marshal cannot write (an
    attribute of a type of its own). Both ends run the same Python, which is
    all marshal's format asks."""
    try:
        return b"m" + marshal.dumps(records, 4)
    except ValueError:
        return b"p" + pickle.dumps(records, pickle.HIGHEST_PROTOCOL)


def decode(message: bytes) -> list[Record | MirrorRecord]:
    """The records ``encode`` wrote into ``message``."""
    body = memoryview(message)[1:]
    records: list[Record | MirrorRecord] = (
        marshal.loads(body) if message[:1] == b"m" else pickle.loads(body)
    )
    return records


def flatten(span: ReadableSpan) -> Record:
    """A finished span as a record (scheduler/span_records.py): a tuple of
    ints, strings, dicts and tuples (picklable)."""
    scope = span.instrumentation_scope
    status = span.status
    assert span.context is not None  # a span the SDK finished always has one
    return (
        span.name,
        context_of(span.context),
        context_of(span.parent) if span.parent is not None else None,
        span.kind.value,
        span.start_time,
        span.end_time,
        dict(span.attributes) if span.attributes else None,
        tuple((e.name, e.timestamp, dict(e.attributes or {})) for e in span.events),
        tuple((context_of(k.context), dict(k.attributes or {})) for k in span.links),
        (status.status_code.value, status.description),
        (scope.name, scope.version, scope.schema_url) if scope is not None else None,
    )


def rebuild(
    record: Record,
    resource: Resource,
    scopes: dict[tuple[str, str | None, str | None], InstrumentationScope],
) -> ReadableSpan:
    """The ``ReadableSpan`` that ``flatten`` flattened (``scopes`` caches scope objects)."""
    name, context, parent, kind, start, end, attributes, events, links, status, scope = record
    instrumentation_scope = None
    if scope is not None:
        instrumentation_scope = scopes.get(scope)
        if instrumentation_scope is None:
            instrumentation_scope = scopes[scope] = InstrumentationScope(*scope)
    code, description = status
    return ReadableSpan(
        name,
        span_context_of(context),
        span_context_of(parent) if parent is not None else None,
        resource,
        attributes,
        tuple(Event(n, a, t) for n, t, a in events),
        tuple(Link(span_context_of(c), a) for c, a in links),
        SpanKind(kind),
        None,
        Status(StatusCode(code), description),
        start,
        end,
        instrumentation_scope,
    )


def _child(
    conn: Connection,
    env: Mapping[str, str],
    protocol: str,
    resource_attributes: dict[str, Any],
    schema_url: str | None,
) -> None:
    """The export process: read batches from ``conn`` and export them until told to stop."""
    # A Ctrl-C reaches the whole process group; the gateway decides when this ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.update(env)
    send: Callable[[list[Record]], object]
    exporter: SpanExporter
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        resource = Resource(resource_attributes, schema_url)
        scopes: dict[tuple[str, str | None, str | None], InstrumentationScope] = {}
        exporter = http = HttpSpanExporter()
        send = lambda records: http.export([rebuild(r, resource, scopes) for r in records])  # noqa: E731
    else:
        from gateway.otlp_records import GrpcRequestExporter, RecordEncoder

        encoder = RecordEncoder(resource_attributes, schema_url)
        exporter = grpc_exporter = GrpcRequestExporter()
        send = lambda records: grpc_exporter.export_encoded(encoder.request(records))  # noqa: E731
    conn.send_bytes(_FLUSHED)  # ready
    try:
        serve(conn, send, exporter.force_flush)
    finally:
        exporter.shutdown()


def serve(
    conn: Connection,
    send: Callable[[list[Record]], object],
    flush: Callable[[], object],
    *,
    period_s: float = _EXPORT_PERIOD_S,
    most: int = _EXPORT_RECORDS,
) -> None:
    """The export process's loop: gather the records of the messages read from
    ``conn`` (mirror records expanded into their copies) and ``send`` them as
    one export once ``most`` have gathered or ``period_s`` after the first of
    them came; at ``_FLUSH``, send what has gathered, ``flush`` and answer; at
    ``_STOP`` or a closed pipe, send what has gathered and return."""
    pending: list[Record] = []
    due = 0.0
    try:
        while True:
            if pending and (
                len(pending) >= most or not conn.poll(max(0.0, due - time.monotonic()))
            ):
                send(pending)
                pending = []
                continue
            try:
                message = conn.recv_bytes()
            except (EOFError, OSError):
                break
            if message == _STOP:
                break
            if message == _FLUSH:
                if pending:
                    send(pending)
                    pending = []
                flush()
                conn.send_bytes(_FLUSHED)
                continue
            if not pending:
                due = time.monotonic() + period_s
            pending.extend(expand(decode(message)))
    finally:
        if pending:
            send(pending)


class ProcessSpanExporter(SpanExporter):
    """A span exporter whose OTLP encoding and sending happen in a child process.

    Two ways in, one pipe. ``export`` (the SDK's batch span processor's, for
    ordinary spans) flattens the batch, encodes it and writes it to the pipe.
    ``add_record`` (a ``RecordProcessor``'s sink, for the spans built
    finished, already records) appends to a bounded deque: no lock, no
    flattening, no ``ReadableSpan``; a sender thread wakes every
    ``_RECORD_PERIOD_S``, encodes what has gathered as one message (at most
    ``_RECORD_BATCH`` records each) and writes it. Writes share a lock with
    ``force_flush``/``shutdown``, whose control messages share the pipe; the
    child encodes the records (mirror records as their copies) and calls the
    SDK's OTLP exporter. ``force_flush`` sends what the deque holds, then waits for
    the child to say it has exported everything sent before it.
    """

    def __init__(
        self, protocol: str, resource: Resource, env: Mapping[str, str] | None = None
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe(duplex=True)
        env = env or os.environ
        otel_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        self._process = context.Process(
            target=_child,
            args=(child_conn, otel_env, protocol, dict(resource.attributes), resource.schema_url),
            name="span-export",
            daemon=True,
        )
        self._process.start()
        child_conn.close()
        self._lock = threading.Lock()
        self._broken = False
        try:
            ready = self._conn.poll(_START_TIMEOUT_S) and self._conn.recv_bytes() == _FLUSHED
        except (EOFError, OSError):
            ready = False
        if not ready:
            log.error("span export process did not start; spans are dropped")
            self._broken = True
        self._records: deque[Record | MirrorRecord] = deque(
            maxlen=_int_env(env, "OTEL_BSP_MAX_QUEUE_SIZE", _MAX_RECORDS)
        )
        #: Queue a span record for the export process (any thread; never
        #: blocks): the deque's own ``append``, a C call, the one the event
        #: loop makes per span; a full deque drops its oldest record.
        self.add_record: Callable[[Record | MirrorRecord], None] = self._records.append
        #: Times the sender found the deque full (the export process was
        #: behind): its oldest records were dropped then.
        self.overflows = 0
        self._draining = threading.Lock()
        self._stopping = threading.Event()
        self._sender = threading.Thread(target=self._send_records, name="span-records", daemon=True)
        self._sender.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def _send_records(self) -> None:
        while not self._stopping.wait(_RECORD_PERIOD_S):
            self._drain()

    def _drain(self) -> None:
        records = self._records
        # One drainer at a time (the sender thread, a flush, the shutdown):
        # records leave in the order they came, and none pops from an empty deque.
        with self._draining:
            if len(records) == records.maxlen:
                self.overflows += 1
            while records:
                # ``popleft`` called from C until ``islice`` has enough (the
                # deque holds at least that many: only one drainer takes).
                batch = list(islice(iter(records.popleft, None), min(len(records), _RECORD_BATCH)))
                message = encode(batch)
                with self._lock:
                    if self._broken:
                        records.clear()
                        return
                    self._send(message)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._broken:
            return SpanExportResult.FAILURE
        message = encode([flatten(span) for span in spans])
        with self._lock:
            return self._send(message)

    def _send(self, message: bytes) -> SpanExportResult:
        try:
            self._conn.send_bytes(message)
        except OSError as exc:  # the child exited: say so once, then drop quietly
            if not self._broken:
                log.error("span export process is gone (%s); spans are dropped from now on", exc)
            self._broken = True
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        self._drain()
        with self._lock:
            if self._broken or self._send(_FLUSH) is not SpanExportResult.SUCCESS:
                return False
            if not self._conn.poll(timeout_millis / 1000):
                return False
            return self._conn.recv_bytes() == _FLUSHED

    def shutdown(self, timeout_millis: float = 30000) -> None:
        self._stopping.set()
        self._sender.join(timeout_millis / 1000)
        self._drain()
        if self.overflows:
            log.warning(
                "span export: the span record queue was full %d time(s) (the export process "
                "was behind); its oldest records were dropped",
                self.overflows,
            )
        with self._lock:
            if not self._broken:
                self._send(_STOP)
            self._broken = True
            self._conn.close()
        self._process.join(timeout_millis / 1000)
        if self._process.is_alive():
            log.warning("span export process did not stop in time; terminating it")
            self._process.terminate()
            self._process.join(5)


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(env.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 else default
