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
once for a span that has already ended (the placement).

Only with the SDK's tracer and a sampled parent: otherwise (no SDK, another
SDK, an unsampled or missing parent) ``start_deferred`` returns None and the
caller makes an ordinary span (so does ``emit_span``). A deferred span
follows its parent's sampling decision, as the default ``parentbased_*``
samplers do.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

from scheduler.current_span import span_in
from scheduler.span_records import (
    UNSET,
    UNSET_RECORD,
    RecordProcessor,
    ScopeKey,
    context_of,
    record,
    scope_key,
)
from scheduler.span_records import Context as RecordContext

__all__ = [
    "DeferredSpan",
    "Scope",
    "emit_finished",
    "emit_span",
    "scope_pair",
    "span_ids",
    "start_deferred",
]

#: A tracer's instrumentation scope and its record form (``scope_pair``).
Scope = tuple[InstrumentationScope | None, ScopeKey | None]


class DeferredSpan(trace.NonRecordingSpan):
    """A span that records into plain fields and is written once, at ``end``.

    It is a ``NonRecordingSpan`` to the API (so ``use_span`` makes it the
    current span and its context propagates to backends) that says it records
    until it ends. Its context is held as a record ``Context`` tuple
    (``own``; scheduler/span_records.py), and so is its parent's: the API's
    ``SpanContext`` (a Python-built tuple, validated) is made only when asked
    for (``get_span_context``: propagation to a backend, a link, the
    ``ReadableSpan`` of a provider that takes no records), so a queue span or
    a member's batch span never makes one, nor ends up converting one.
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

    def end(self, end_time: int | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        end_ns = end_time if end_time is not None else time.time_ns()
        processor = self._tracer.span_processor
        if isinstance(processor, RecordProcessor):
            status = self._status
            processor.sink(
                (
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
            )
            return
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
            tuple((context_of(k.context), dict(k.attributes or {})) for k in links),
        )
    return _last_links[1]


def _parent_of(span: trace.Span) -> tuple[RecordContext, TraceState | None, SpanContext | None]:
    """A sampled parent's record context, trace state and ``SpanContext`` (if
    made); raises LookupError when ``span`` is not a valid sampled parent."""
    if type(span) is DeferredSpan:  # sampled, or it would not be one
        return span.own, span.trace_state, span._context
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        raise LookupError
    return context_of(context), context.trace_state, context


def span_ids(generator: IdGenerator) -> Callable[[], int]:
    """``generator.generate_span_id``, or for the SDK's ``RandomIdGenerator``
    what it calls, ``random.getrandbits(64)``, as a C callable (no Python
    frame); that one may return the invalid id 0 (one time in 2**64): callers
    write ``new_id() or generator.generate_span_id()``."""
    if type(generator) is RandomIdGenerator:
        return partial(random.getrandbits, 64)
    return generator.generate_span_id


#: Per tracer (by id; tracers live as long as their provider): the tracer, its
#: scope (``scope_pair``) and its span id source (``span_ids``).
_TRACERS: dict[int, tuple[SdkTracer, Scope, Callable[[], int]]] = {}


def child_context(tracer: SdkTracer, parent: SpanContext) -> SpanContext:
    """A new span's context under ``parent``, following its sampling decision."""
    return SpanContext(
        parent.trace_id,
        tracer.id_generator.generate_span_id(),
        False,
        parent.trace_flags,
        parent.trace_state,
    )


def emit_finished(
    tracer: SdkTracer,
    name: str,
    context: SpanContext,
    parent: SpanContext | None,
    attributes: Mapping[str, AttributeValue],
    links: Sequence[Link],
    kind: SpanKind,
    status: Status,
    start_ns: int,
    end_ns: int,
    scope: InstrumentationScope | None,
) -> None:
    """Hand a span that is finished from birth to the tracer's span processor,
    as the SDK does for its own spans when they end (the one place that
    builds ``ReadableSpan`` itself), or as a record to a ``RecordProcessor``'s
    sink (scheduler/span_records.py), which takes no ``ReadableSpan``."""
    processor = tracer.span_processor
    if isinstance(processor, RecordProcessor):
        processor.sink(
            record(name, context, parent, attributes, links, kind, status, start_ns, end_ns, scope)
        )
        return
    processor.on_end(
        ReadableSpan(
            name,
            context,
            parent,
            tracer.resource,
            attributes,
            (),
            links,
            kind,
            None,
            status,
            start_ns,
            end_ns,
            scope,
        )
    )


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
    if known is None or known[0] is not tracer:
        if not isinstance(tracer, SdkTracer):
            return None
        known = _TRACERS[id(tracer)] = (tracer, scope_pair(tracer), span_ids(tracer.id_generator))
    span = span_in(parent)
    try:
        up, state, up_context = _parent_of(span)
    except LookupError:
        return None
    child = DeferredSpan(
        tracer,
        known[1],
        name,
        (up[0], known[2]() or tracer.id_generator.generate_span_id(), up[2], False, up[4]),
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


def scope_of(tracer: SdkTracer) -> InstrumentationScope | None:
    """The tracer's instrumentation scope (not public API; a span without one still exports)."""
    scope: InstrumentationScope | None = getattr(tracer, "_instrumentation_scope", None)
    return scope


def scope_pair(tracer: SdkTracer) -> Scope:
    """The tracer's scope (``scope_of``) and its record form (``scope_key``):
    a ``DeferredSpan``'s ``scope``."""
    scope = scope_of(tracer)
    return scope, scope_key(scope)


def emit_span(
    tracer: Tracer,
    name: str,
    attributes: dict[str, AttributeValue],
    *,
    start_ns: int,
    end_ns: int,
    status: Status = UNSET,
) -> DeferredSpan | None:
    """A span under the current one that already ended (``start_ns`` to
    ``end_ns``), built finished, with ``attributes`` (the caller's dict,
    kept); the span, ended, or None where an ordinary span must be made
    instead (the conditions of ``start_deferred``)."""
    span = start_deferred(tracer, name, None, start_ns=start_ns, attributes=attributes)
    if span is None:
        return None
    if status is not UNSET and status.status_code is not StatusCode.UNSET:
        span.set_status(status)
    span.end(end_ns)
    return span
