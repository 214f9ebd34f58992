"""Finished spans as plain records, for a provider whose exporter takes them as such.

The SDK hands a finished span to its span processors as a ``ReadableSpan``;
the gateway's exporter (gateway/span_export.py) then flattened each one back
into plain values on its processor's thread, to pickle them to the export
process. For the spans the scheduler and the gateway build finished
(scheduler/deferred_span.py) both steps are waste: ``RecordProcessor`` is
the provider's span processor (the SDK's synchronous multi-processor, so
ordinary spans still reach the processors added to it) with a ``sink`` that
takes those spans as ``Record`` tuples, built once, where they end.

A ``Record`` is ``(name, context, parent, kind, start_ns, end_ns, attributes,
events, links, (status code, description), scope)``: contexts are ``Context``
tuples, ``kind`` and the status code the API enums' values, ``events`` ``(name,
time_ns, attributes)`` and ``links`` ``(Context, attributes)`` tuples, ``scope``
``(name, version, schema_url)``. ``MirrorRecord`` stands for copies of a
batch's spans in its other members' traces (``mirror_record``): ``expand``
turns it into one record per member and span, in the export process, with
span ids from the SDK's id generator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import SynchronousMultiSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import AttributeValue

__all__ = [
    "UNSET",
    "UNSET_RECORD",
    "Context",
    "MirrorRecord",
    "Record",
    "RecordProcessor",
    "context_of",
    "expand",
    "mirror_record",
    "record",
    "scope_key",
    "span_context_of",
]

#: (trace id, span id, flags, is remote, trace state header)
Context = tuple[int, int, int, bool, str]
#: A finished span as plain values (see the module docstring).
Record = tuple[Any, ...]
#: ``(None, phases, parents)``: each of ``phases`` (records) copied under each
#: of ``parents`` (the members' batch span contexts), linked to the original.
MirrorRecord = tuple[None, tuple[Record, ...], tuple[Context, ...]]
ScopeKey = tuple[str, str | None, str | None]
#: A span's status before anything sets it, and that status in a record.
UNSET = Status(StatusCode.UNSET)
UNSET_RECORD = (StatusCode.UNSET.value, None)

_SCOPES: dict[int, tuple[InstrumentationScope, ScopeKey]] = {}


class RecordProcessor(SynchronousMultiSpanProcessor):
    """The SDK's multi-processor, plus ``sink``: where spans built finished go,
    as records, instead of to the processors as ``ReadableSpan`` objects."""

    def __init__(self, sink: Callable[[Record | MirrorRecord], None]) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.sink = sink


def context_of(context: SpanContext) -> Context:
    # ``SpanContext`` is a tuple (trace id, span id, is remote, flags, state,
    # is valid) whose properties are Python functions: indexing it is a third
    # of the cost, on a path taken twice or more per span.
    state = context[4]
    # An empty TraceState is falsy: most spans skip building a header.
    return (context[0], context[1], int(context[3]), context[2], state.to_header() if state else "")


def span_context_of(values: Context) -> SpanContext:
    """The API's ``SpanContext`` of a record ``Context`` (``context_of`` undone)."""
    trace_id, span_id, flags, remote, state = values
    return SpanContext(
        trace_id,
        span_id,
        remote,
        TraceFlags(flags),
        TraceState.from_header([state]) if state else None,
    )


def scope_key(scope: InstrumentationScope | None) -> ScopeKey | None:
    """``scope`` as a tuple, computed once per scope object (tracers live long)."""
    if scope is None:
        return None
    known = _SCOPES.get(id(scope))
    if known is None or known[0] is not scope:
        known = _SCOPES[id(scope)] = (scope, (scope.name, scope.version, scope.schema_url))
    return known[1]


def record(
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
) -> Record:
    return (
        name,
        context_of(context),
        context_of(parent) if parent is not None else None,
        kind._value_,  # the enum's value without its property's cost
        start_ns,
        end_ns,
        dict(attributes) if attributes else None,
        (),
        tuple((context_of(k.context), dict(k.attributes or {})) for k in links),
        (status.status_code.value, status.description),
        scope_key(scope),
    )


def mirror_record(phases: Sequence[Record], parents: Sequence[Context]) -> MirrorRecord:
    """One record for ``len(phases) x len(parents)`` copies (see ``expand``);
    ``phases`` may be the records the real spans were sent as (their parents
    and links are not copied)."""
    return (None, tuple(phases), tuple(parents))


def expand(
    records: Iterable[Record | MirrorRecord], ids: IdGenerator | None = None
) -> Iterator[Record]:
    """``records`` with each ``MirrorRecord`` replaced by its copies: same name,
    kind, times, attributes, status and scope as the phase, a new span id, the
    member's batch span as parent, a link to the phase's own span."""
    generator = ids or RandomIdGenerator()
    for item in records:
        if item[0] is not None:
            yield item
            continue
        _, phases, parents = item
        for parent in parents:
            trace_id, _, flags, _, state = parent
            for phase in phases:
                name, context, _, kind, start, end, attributes, events, _, status, scope = phase
                yield (
                    name,
                    (trace_id, generator.generate_span_id(), flags, False, state),
                    parent,
                    kind,
                    start,
                    end,
                    attributes,
                    events,
                    ((context, {}),),
                    status,
                    scope,
                )
