"""What the batcher tells the dispatcher about a batch, and the counters it keeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext

from scheduler.batching.queue import Trigger
from scheduler.request import Parameters
from scheduler.spec import ModelSpec, Tensor

if TYPE_CHECKING:
    from scheduler.span_records import Record

#: Why a batch ran: a queue trigger, ``split`` for a half of a failed batch,
#: ``stream`` for requests that arrived together on streams and ran at once
#: (``Batcher.submit_group``), ``alone`` for a request that skipped the queue
#: (nothing to merge with, a backend free), or ``solo`` for a request of a model
#: the gateway does not batch. The last two are single requests, not batches,
#: for the metrics.
BatchTrigger = Trigger | Literal["split", "stream", "solo", "alone"]
#: Triggers of single requests that were never batched.
UNBATCHED = frozenset({"solo", "alone"})

#: Parameters that describe scheduling, not the inference: they do not keep
#: requests apart, and are not forwarded as the batch's parameters.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout"})


@dataclass(slots=True)  # not frozen: one is made per batch, and frozen init is slow
class BatchInfo:
    """What ``run_batch`` is told about the batch besides its tensors.

    ``deadline`` is the earliest member deadline: pass it to the backend
    (Triton gets the remainder as its timeout). ``outputs`` is the union of
    the members' requested outputs, ``()`` meaning all. ``priority`` is the
    most urgent member's level. ``parameters`` are the members' shared
    parameters, without ``priority`` and ``timeout``. ``trace_contexts`` are
    the members' callers' span contexts when the gateway does not trace (it
    sends the first on to the backend), invalid when it does.
    ``served_by`` collects the ids of the backends the batch was sent to, in
    order (the dispatcher appends; the last one ran it or failed it).
    ``wire`` is the single member's request in its encoded form, for a
    backend that forwards it (None for a merged batch). ``caller_context`` is
    the OpenTelemetry context of a solo request's caller. ``phases`` collects
    the records of the placement and backend-call spans of a traced batch of
    several members, for copies in the other members' traces (None: not
    collected).
    ``backend_s`` adds up the time of the batch's backend calls (the runner adds).
    """

    model_name: str
    model_version: str
    size: int
    request_ids: tuple[str, ...]
    deadline: float | None
    trigger: BatchTrigger
    outputs: tuple[str, ...]
    priority: int
    parameters: Parameters
    trace_contexts: tuple[SpanContext, ...]
    #: When each member entered the queue (monotonic), for queue-wait accounting.
    enqueued_at: tuple[float, ...] = ()
    attempt: int = 0
    served_by: list[str] = field(default_factory=list)
    wire: bytes | None = None
    caller_context: Context | None = None
    phases: list[Record] | None = None
    backend_s: float = 0.0

    def propagation(self) -> dict[str, str] | None:
        """W3C headers with the caller's trace context (of the first member
        for a batch), so that with the gateway's own tracing off a backend
        still joins the caller's trace; None when there is none."""
        context = self.caller_context
        if context is None:
            if not self.trace_contexts or not self.trace_contexts[0].is_valid:
                return None
            context = trace.set_span_in_context(trace.NonRecordingSpan(self.trace_contexts[0]))
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=context)
        return carrier or None


#: Runs one batch: placement and the backend call. Returns every output the
#: batch asked for, first dimension = ``info.size``; raises scheduler errors.
#: A batch whose ``wire`` a backend forwarded yields that backend's encoded response.
RunBatch = Callable[
    [ModelSpec, dict[str, Tensor], BatchInfo], Awaitable[Mapping[str, Tensor] | bytes]
]


@dataclass(slots=True)
class BatcherCounters:
    """Plain counters for metrics; read them, never write them from outside."""

    submitted: int = 0
    rejected_queue_full: int = 0
    #: Refused at admission: the queue ahead would make them miss their deadline.
    rejected_late: int = 0
    expired_in_queue: int = 0
    cancelled_in_queue: int = 0
    failed_batches: int = 0
    isolation_splits: int = 0
    #: Batches run as sub-batches because their tensors would not fit in one message.
    byte_splits: int = 0
    batches_by_trigger: Counter[str] = field(default_factory=Counter)
    #: Requests that skipped the queue and ran on their own (not batches).
    ran_alone: int = 0
    #: rows -> number of batches of that size (splits included)
    batch_sizes: Counter[int] = field(default_factory=Counter)
