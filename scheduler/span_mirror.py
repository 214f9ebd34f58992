"""Copies of a batch's placement and backend-call spans in its other members' traces.

A batch runs once, under its first member's (the leader's) batch span, so
only the leader's trace holds the real placement and backend-call spans
(and, under the call, the backend's own). ``Phase`` keeps what each real
span recorded; ``mirror`` copies each phase under every other member's
batch span, with a link back to the real one (see scheduler/tracing.py for
the whole trace). With the gateway's exporter the copies travel as one
record per batch (``span_records.mirror_record``) and become spans in the
export process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode, TraceFlags, Tracer
from opentelemetry.util.types import AttributeValue

from scheduler.deferred_span import DeferredSpan, child_context, emit_finished, scope_of
from scheduler.span_records import (
    UNSET,
    UNSET_RECORD,
    Record,
    RecordProcessor,
    context_of,
    mirror_record,
    record,
    scope_key,
)

__all__ = ["Phase", "mirror"]


@dataclass(slots=True)
class Phase:
    """A step of a batch's run (a placement or a backend call) as its real span
    recorded it, so that ``mirror`` can copy it into the other members' traces."""

    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttributeValue]
    span: Span
    error: str | None = None


def mirror(tracer: Tracer, phases: Sequence[Phase], batch_spans: Sequence[Span]) -> None:
    """Copy each of the leader's ``phases`` under each of the other members'
    ``batch_spans``: same name, kind, timings and attributes, a link to the
    real span (under which the backend's own spans are).

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
    scope = scope_of(sdk) if sdk is not None else None
    if sdk is not None and isinstance(sdk.span_processor, RecordProcessor):
        # One record for all the copies, made in the export process.
        parents = [
            b.own if type(b) is DeferredSpan else context_of(b.get_span_context())
            for b in batch_spans
        ]
        parents = [p for p in parents if p[2] & TraceFlags.SAMPLED]
        if parents:
            sdk.span_processor.sink(mirror_record([_record(p, scope) for p in phases], parents))
        return
    for batch in batch_spans:
        parent = batch.get_span_context()
        if not parent.trace_flags.sampled:
            continue
        for phase in phases:
            status = Status(StatusCode.ERROR, phase.error) if phase.error is not None else UNSET
            links = (Link(phase.span.get_span_context()),)
            if isinstance(tracer, SdkTracer):
                emit_finished(
                    tracer,
                    phase.name,
                    child_context(tracer, parent),
                    parent,
                    phase.attributes,
                    links,
                    phase.kind,
                    status,
                    phase.start_ns,
                    phase.end_ns,
                    scope,
                )
                continue
            span = tracer.start_span(
                phase.name,
                context=trace.set_span_in_context(batch),
                kind=phase.kind,
                attributes=phase.attributes,
                links=links,
                start_time=phase.start_ns,
            )
            if phase.error is not None:
                span.set_status(status)
            span.end(end_time=phase.end_ns)


def _record(phase: Phase, scope: InstrumentationScope | None) -> Record:
    span = phase.span
    if type(span) is DeferredSpan:  # its record context as it is: no SpanContext made
        # What ``record`` makes of the span's ``SpanContext``, without one.
        return (
            phase.name,
            span.own,
            None,
            phase.kind._value_,
            phase.start_ns,
            phase.end_ns,
            dict(phase.attributes) if phase.attributes else None,
            (),
            (),
            UNSET_RECORD if phase.error is None else (StatusCode.ERROR._value_, phase.error),
            scope_key(scope),
        )
    status = Status(StatusCode.ERROR, phase.error) if phase.error is not None else UNSET
    return record(
        phase.name,
        phase.span.get_span_context(),
        None,
        phase.attributes,
        (),
        phase.kind,
        status,
        phase.start_ns,
        phase.end_ns,
        scope,
    )
