"""Spans the SDK first hears of when they end: the scheduler's cheap spans.

A live span of the OpenTelemetry SDK asks the sampler, takes a lock per
attribute, validates every value and copies its links when it starts; under
load that was most of tracing's cost in the scheduler (~70 us a span here,
against ~8 us for a span built finished). The scheduler's own spans (queue,
batch, placement, backend call) have a sampled parent, attributes it made
itself, and a known end, so they need none of that: ``start_deferred`` makes
one that only holds its fields, and ``end`` builds the finished span and
hands it to the tracer's span processor, as the SDK does for its own spans
when they end (to a ``RecordProcessor``, scheduler/span_records.py, as a
plain record instead: no ``ReadableSpan`` at all); ``emit_span`` does both at
once for a span that has already ended (a queue wait, a placement), and under
a deferred parent, for a ``RecordProcessor``, builds its record alone, with
no span object at all. ``finish`` and ``emit_span`` return the record they
sent, which a batch's copies reuse (scheduler/span_mirror.py).

Only with the SDK's tracer and a sampled parent: otherwise (no SDK, another
SDK, an unsampled or missing parent) ``start_deferred`` returns None and the
caller makes an ordinary span (so does ``emit_span``). A deferred span
follows its parent's sampling decision, as the default ``parentbased_*``
samplers do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from scheduler.current_span import current_span, span_in
from scheduler.finished_spans import Scope, emit_finished, scope_pair, span_ids
from scheduler.span_records import (
    UNSET,
    UNSET_RECORD,
    Record,
    RecordProcessor,
    context_of,
    record,
)
from scheduler.span_records import Context as RecordContext

__all__ = [
    "DeferredLink",
    "DeferredSpan",
    "emit_span",
    "end_with_record",
    "link_to",
    "start_deferred",
    "trace_id_of",
]


class DeferredSpan(trace.NonRecordingSpan):
    """A span that records into plain fields and is written once, at ``end``.

    It is a ``NonRecordingSpan`` to the API (so ``use_span`` makes it the
    current span and its context propagates to backends) that says it records
    until it ends. Its context is held as a record ``Context`` tuple
    (``own``; scheduler/span_records.py), and so is its parent's: the API's
    ``SpanContext`` (a Python-built tuple, validated) is made only when asked
    for (``get_span_context``: propagation to a backend, a link, the
    ``ReadableSpan`` of a provider that takes no records), so a member's
    batch span never makes one, nor ends up converting one.
    """

    def __init__(
        self,
        tracer: SdkTracer,
        scope: Scope,
        name: str,
        own: RecordContext,
        parent: RecordContext | None,
        trace_state: TraceState | None,
        start_ns: int,
        links: Sequence[Link],
        kind: SpanKind,
        *,
        parent_context: SpanContext | None = None,
        attributes: dict[str, AttributeValue] | None = None,
    ) -> None:
        # Not NonRecordingSpan.__init__, which only stores a ready SpanContext.
        self._context: SpanContext | None = None  # type: ignore[assignment]
        self.own = own
        self._tracer = tracer
        self._scope = scope
        self._name = name
        self._parent = parent
        self._parent_context = parent_context
        self.trace_state = trace_state
        self._start_ns = start_ns
        self._links = links
        self._kind = kind
        # The caller's dict, kept as it is (it gives a new one per span).
        self._attributes: dict[str, AttributeValue] = {} if attributes is None else attributes
        self._status = UNSET
        self._ended = False
        #: The trace id in hex, once asked for (``tracing.trace_id_of``); a
        #: child started under a deferred span takes its parent's.
        self.hex_trace_id = ""

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            trace_id, span_id, flags, _, _ = self.own
            context = self._context = SpanContext(
                trace_id, span_id, False, TraceFlags(flags), self.trace_state
            )
        return context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        self._attributes.update(attributes)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self._status = status if isinstance(status, Status) else Status(status, description)

    def finish(self, end_time: int | None = None) -> Record | None:
        """``end``, and the span's record when its tracer's processor takes
        records (the record it was given; a batch's copies reuse it, see
        scheduler/span_mirror.py), else None."""
        if self._ended:
            return None
        self._ended = True
        end_ns = end_time if end_time is not None else time.time_ns()
        processor = self._tracer.span_processor
        if isinstance(processor, RecordProcessor):
            status = self._status
            finished = (
                self._name,
                self.own,
                self._parent,
                self._kind._value_,  # the enum's value without its property's cost
                self._start_ns,
                end_ns,
                self._attributes or None,
                (),
                _link_records(self._links) if self._links else (),
                UNSET_RECORD
                if status is UNSET
                else (status.status_code._value_, status.description),
                self._scope[1],
            )
            processor.sink(finished)
            return finished
        parent = self._parent_context
        if parent is None and self._parent is not None:
            trace_id, span_id, flags, remote, _ = self._parent
            parent = SpanContext(trace_id, span_id, remote, TraceFlags(flags), self.trace_state)
        emit_finished(
            self._tracer,
            self._name,
            self.get_span_context(),
            parent,
            self._attributes,
            self._links,
            self._kind,
            self._status,
            self._start_ns,
            end_ns,
            self._scope[0],
        )
        return None

    # ``end`` is ``finish`` (whose record the API's callers ignore), not a
    # method that calls it: one Python call less for each span.
    end = finish  # type: ignore[assignment]


def trace_id_of(span: trace.Span) -> str:
    """``span``'s 32-hex-digit trace id, or "" for an invalid context (a
    deferred span's is read from its record context: no ``SpanContext`` made)."""
    if type(span) is DeferredSpan:  # not isinstance: an ABC's check is a Python call
        text = span.hex_trace_id  # formatted once per trace (a request's spans share it)
        if not text:
            text = span.hex_trace_id = format(span.own[0], "032x")
        return text
    span_context = span.get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else ""


class DeferredLink(Link):
    """A ``Link`` to a ``DeferredSpan``, held in record form (``record``: the
    span's record ``Context`` and the link's attributes, as a record's links
    are): its ``SpanContext`` is the span's, made only when asked for (by a
    provider that takes no records), so linking a batch's members to their
    leader makes no ``SpanContext`` and converts none."""

    def __init__(self, span: DeferredSpan, attributes: dict[str, AttributeValue]) -> None:
        # Not Link.__init__, which wants the SpanContext made.
        self._span = span
        self._attributes = attributes
        self.record = (span.own, attributes)

    @property
    def context(self) -> SpanContext:
        return self._span.get_span_context()


def link_to(span: trace.Span, attributes: dict[str, AttributeValue]) -> Link:
    """A link to ``span`` with ``attributes``: a ``DeferredLink`` for a deferred span."""
    if type(span) is DeferredSpan:
        return DeferredLink(span, attributes)
    return Link(span.get_span_context(), attributes)


#: The last links converted, and their records: a batch's members share one
#: tuple of links (to the leader's batch span), converted once for all.
_last_links: tuple[Sequence[Link], tuple[tuple[RecordContext, dict[str, Any]], ...]] = ((), ())


def _link_records(links: Sequence[Link]) -> tuple[tuple[RecordContext, dict[str, Any]], ...]:
    global _last_links
    if not links:
        return ()
    if links is not _last_links[0]:
        _last_links = (
            links,
            tuple(
                k.record
                if type(k) is DeferredLink
                else (context_of(k.context), dict(k.attributes or {}))
                for k in links
            ),
        )
    return _last_links[1]


def _api_parent(span: trace.Span) -> tuple[RecordContext, TraceState | None, SpanContext]:
    """A sampled parent's record context, trace state and ``SpanContext``, for
    a span that is not a ``DeferredSpan``; raises LookupError when ``span`` is
    not a valid sampled parent."""
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        raise LookupError
    return context_of(context), context.trace_state, context


#: Per tracer (by id; tracers live as long as their provider): the tracer, its
#: scope (``scope_pair``) and its span id source (``span_ids``).
_TRACERS: dict[int, tuple[SdkTracer, Scope, Callable[[], int]]] = {}


def _known(tracer: Tracer) -> tuple[SdkTracer, Scope, Callable[[], int]] | None:
    """``tracer``'s entry in ``_TRACERS``, made on first sight; None for a
    tracer that is not the SDK's."""
    if not isinstance(tracer, SdkTracer):
        return None
    known = _TRACERS[id(tracer)] = (tracer, scope_pair(tracer), span_ids(tracer.id_generator))
    return known


def start_deferred(
    tracer: Tracer,
    name: str,
    parent: Context | None,
    *,
    start_ns: int | None = None,
    links: Sequence[Link] = (),
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, AttributeValue] | None = None,
) -> DeferredSpan | None:
    """A deferred span under ``parent`` (None: the current context), with
    ``attributes`` (a dict of the caller's, kept), or None where an ordinary
    span must be made instead (see the module docstring)."""
    known = _TRACERS.get(id(tracer))
    if (known is None or known[0] is not tracer) and (known := _known(tracer)) is None:
        return None
    span = current_span() if parent is None else span_in(parent)  # one call, not two
    if type(span) is DeferredSpan:  # sampled, or it would not be one
        up, state, up_context = span.own, span.trace_state, span._context
    else:
        try:
            up, state, up_context = _api_parent(span)
        except LookupError:
            return None
    sdk = known[0]
    child = DeferredSpan(
        sdk,
        known[1],
        name,
        (up[0], known[2]() or sdk.id_generator.generate_span_id(), up[2], False, up[4]),
        up,
        state,
        start_ns if start_ns is not None else time.time_ns(),
        links,
        kind,
        parent_context=up_context,
        attributes=attributes,
    )
    if type(span) is DeferredSpan:
        child.hex_trace_id = span.hex_trace_id
    return child


def emit_span(
    tracer: Tracer,
    name: str,
    attributes: dict[str, AttributeValue],
    *,
    start_ns: int,
    end_ns: int,
    status: Status = UNSET,
    parent: Context | None = None,
) -> Record:
    """An INTERNAL span under ``parent`` (None: the current context) that
    already ended (``start_ns`` to ``end_ns``), with ``attributes`` (the
    caller's dict, kept), and its record: the one its tracer's processor was
    given, or for a processor that takes no records one made alike.

    Under a ``DeferredSpan``, for a ``RecordProcessor``, the record is all
    that is made: no span object. Otherwise a deferred span where
    ``start_deferred`` makes one, else an ordinary span."""
    known = _TRACERS.get(id(tracer))
    if known is None or known[0] is not tracer:
        known = _known(tracer)
    up = current_span() if parent is None else span_in(parent)
    if known is not None and type(up) is DeferredSpan:
        processor = known[0].span_processor
        if isinstance(processor, RecordProcessor):
            own = up.own  # a ``Record`` (scheduler/span_records.py), as ``finish`` makes one
            finished = (
                name,
                (own[0], known[2]() or known[0].id_generator.generate_span_id(), own[2], False,
                 own[4]),
                own,
                0,  # SpanKind.INTERNAL's value
                start_ns,
                end_ns,
                attributes or None,
                (),
                (),
                UNSET_RECORD
                if status is UNSET
                else (status.status_code._value_, status.description),
                known[1][1],
            )  # fmt: skip
            processor.sink(finished)
            return finished
    failed = status is not UNSET and status.status_code is not StatusCode.UNSET
    span = start_deferred(
        tracer, name, parent, start_ns=start_ns, attributes=attributes
    ) or tracer.start_span(name, context=parent, start_time=start_ns, attributes=attributes)
    if failed:
        span.set_status(status)
    return end_with_record(
        tracer, span, name, attributes, SpanKind.INTERNAL, status, start_ns, end_ns
    )


def end_with_record(
    tracer: Tracer,
    span: trace.Span,
    name: str,
    attributes: Mapping[str, AttributeValue],
    kind: SpanKind,
    status: Status,
    start_ns: int,
    end_ns: int,
) -> Record:
    """End ``span`` (of ``tracer``, its status set, started at ``start_ns``)
    at ``end_ns``, and its record: the one a ``RecordProcessor`` was
    given, else one made alike from ``name``, ``attributes``, ``kind`` and
    ``status`` (for the copies of scheduler/span_mirror.py)."""
    if type(span) is DeferredSpan:
        finished = span.finish(end_ns)
        if finished is not None:
            return finished
    else:
        span.end(end_time=end_ns)
    known = _TRACERS.get(id(tracer))
    scope = known[1][0] if known is not None and known[0] is tracer else None
    return record(
        name, span.get_span_context(), None, attributes, (), kind, status, start_ns, end_ns, scope
    )
