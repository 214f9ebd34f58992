"""Spans handed to the SDK finished, and what the scheduler keeps of each tracer.

The SDK builds a ``ReadableSpan`` for its span processors when a live span
ends; the spans the gateway builds finished (scheduler/deferred_span.py) are
handed over the same way (``emit_finished``), or as plain records to a
``RecordProcessor`` (scheduler/span_records.py). What they need of their
tracer is looked up once per tracer: its instrumentation scope with that
scope's record form (``scope_pair``), and its id sources as C callables
where the SDK's ``RandomIdGenerator`` makes the ids (``span_ids``,
``trace_ids``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status
from opentelemetry.util.types import AttributeValue

from scheduler.span_records import RecordProcessor, ScopeKey, record, scope_key

__all__ = [
    "Scope",
    "child_context",
    "emit_finished",
    "scope_of",
    "scope_pair",
    "span_ids",
    "trace_ids",
]

#: A tracer's instrumentation scope and its record form (``scope_pair``).
Scope = tuple[InstrumentationScope | None, ScopeKey | None]


def span_ids(generator: IdGenerator) -> Callable[[], int]:
    """``generator.generate_span_id``, or for the SDK's ``RandomIdGenerator``
    what it calls, ``random.getrandbits(64)``, as a C callable (no Python
    frame); that one may return the invalid id 0 (one time in 2**64): callers
    write ``new_id() or generator.generate_span_id()``."""
    if type(generator) is RandomIdGenerator:
        return partial(random.getrandbits, 64)
    return generator.generate_span_id


def trace_ids(generator: IdGenerator) -> Callable[[], int]:
    """``span_ids`` for trace ids: ``random.getrandbits(128)`` for the SDK's
    ``RandomIdGenerator`` (callers write ``new_id() or
    generator.generate_trace_id()``)."""
    if type(generator) is RandomIdGenerator:
        return partial(random.getrandbits, 128)
    return generator.generate_trace_id


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


def scope_of(tracer: SdkTracer) -> InstrumentationScope | None:
    """The tracer's instrumentation scope (not public API; a span without one still exports)."""
    scope: InstrumentationScope | None = getattr(tracer, "_instrumentation_scope", None)
    return scope


def scope_pair(tracer: SdkTracer) -> Scope:
    """The tracer's scope (``scope_of``) and its record form (``scope_key``):
    a ``DeferredSpan``'s ``scope``."""
    scope = scope_of(tracer)
    return scope, scope_key(scope)
