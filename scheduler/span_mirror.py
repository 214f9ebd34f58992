"""Copies of a batch's placement and backend-call spans in its other members' traces.

A batch runs once, under its first member's (the leader's) batch span, so
only the leader's trace holds the real placement and backend-call spans
(and, under the call, the backend's own). Each real span's record (see
scheduler/span_records.py; ``deferred_span.emit_span`` and
``tracing.BackendCall`` keep it in the batch's ``phases``) is what ``mirror``
copies under every other member's batch span, with a link back to the real
one (see scheduler/tracing.py for the whole trace). With the gateway's
exporter the copies travel as one record per batch
(``span_records.mirror_record``), holding the very records the real spans
were sent as, and become spans in the export process.
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TraceFlags, Tracer

from scheduler.deferred_span import DeferredSpan
from scheduler.finished_spans import child_context, emit_finished, scope_of
from scheduler.span_records import (
    UNSET,
    Record,
    RecordProcessor,
    context_of,
    mirror_record,
    span_context_of,
)

__all__ = ["mirror"]


def mirror(tracer: Tracer, phases: Sequence[Record], batch_spans: Sequence[Span]) -> None:
    """Copy each of the leader's ``phases`` (the records of its placement and
    backend-call spans) under each of the other members' ``batch_spans``:
    same name, kind, timings, attributes and status, a link to the real span
    (under which the backend's own spans are).

    With a ``RecordProcessor`` (the gateway's export process) that is one
    ``mirror_record``: the phases and the sampled members' batch span
    contexts, expanded into the copies in the export process, so a batch of N
    costs the gateway one record rather than 2(N-1) spans. With another SDK
    processor the copies are finished spans from birth, handed to it as such
    (no sampling: the member's batch span was sampled). Any other tracer gets
    live spans, started and ended at the recorded times.
    """
    # ``type() is`` first: the ABC checks of ``isinstance`` are Python calls.
    sdk: SdkTracer | None = None
    if type(tracer) is SdkTracer or isinstance(tracer, SdkTracer):
        sdk = tracer
    if sdk is not None and isinstance(sdk.span_processor, RecordProcessor):
        # One record for all the copies, made in the export process.
        parents = [
            b.own if type(b) is DeferredSpan else context_of(b.get_span_context())
            for b in batch_spans
        ]
        parents = [p for p in parents if p[2] & TraceFlags.SAMPLED]
        if parents:
            sdk.span_processor.sink(mirror_record(phases, parents))
        return
    scope = scope_of(sdk) if sdk is not None else None
    for batch in batch_spans:
        parent = batch.get_span_context()
        if not parent.trace_flags.sampled:
            continue
        for phase in phases:
            name, context, _, kind, start_ns, end_ns, attributes, _, _, status, _ = phase
            code, description = status
            copied = Status(StatusCode(code), description) if code else UNSET
            links = (Link(span_context_of(context)),)
            if sdk is not None:
                emit_finished(
                    sdk,
                    name,
                    child_context(sdk, parent),
                    parent,
                    attributes or {},
                    links,
                    SpanKind(kind),
                    copied,
                    start_ns,
                    end_ns,
                    scope,
                )
                continue
            span = tracer.start_span(
                name,
                context=trace.set_span_in_context(batch),
                kind=SpanKind(kind),
                attributes=attributes,
                links=links,
                start_time=start_ns,
            )
            if code:
                span.set_status(copied)
            span.end(end_time=end_ns)
