"""What the batcher tells the dispatcher about a batch, and the counters it keeps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from opentelemetry.trace import SpanContext

from scheduler.batching.queue import Trigger
from scheduler.request import Parameters
from scheduler.spec import ModelSpec, Tensor

#: Why a batch ran: a queue trigger, or ``split`` for a half of a failed batch.
BatchTrigger = Trigger | Literal["split"]

#: Parameters that describe scheduling, not the inference: they do not keep
#: requests apart, and are not forwarded as the batch's parameters.
SCHEDULING_PARAMETERS = frozenset({"priority", "timeout"})


@dataclass(frozen=True, slots=True)
class BatchInfo:
    """What ``run_batch`` is told about the batch besides its tensors.

    ``deadline`` is the earliest member deadline: pass it to the backend
    (Triton gets the remainder as its timeout). ``outputs`` is the union of
    the members' requested outputs, ``()`` meaning all. ``priority`` is the
    most urgent member's level. ``parameters`` are the members' shared
    parameters, without ``priority`` and ``timeout``. ``trace_contexts`` are
    the members' span contexts (their queue spans), which the batch span links.
    ``served_by`` collects the ids of the backends the batch was sent to, in
    order (the dispatcher appends; the last one ran it or failed it).
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


#: Runs one batch: placement and the backend call. Returns every output the
#: batch asked for, first dimension = ``info.size``; raises scheduler errors.
RunBatch = Callable[[ModelSpec, dict[str, Tensor], BatchInfo], Awaitable[Mapping[str, Tensor]]]


@dataclass(slots=True)
class BatcherCounters:
    """Plain counters for metrics; read them, never write them from outside."""

    submitted: int = 0
    rejected_queue_full: int = 0
    expired_in_queue: int = 0
    cancelled_in_queue: int = 0
    failed_batches: int = 0
    isolation_splits: int = 0
    batches_by_trigger: Counter[str] = field(default_factory=Counter)
    #: rows -> number of batches of that size (splits included)
    batch_sizes: Counter[int] = field(default_factory=Counter)
