"""Running one cut batch: merge the members' inputs, call the backend, split the outputs.

The ``Batcher`` decides when a batch leaves; ``BatchExecutor`` runs it. Kept
apart so the waiting (queue, loop, wake-ups) and the running (spans, merge,
split, failure isolation) can each be read on their own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, Tracer

from scheduler import tracing
from scheduler.batching.info import (
    SCHEDULING_PARAMETERS,
    BatcherCounters,
    BatchInfo,
    BatchTrigger,
    RunBatch,
)
from scheduler.batching.merge import byte_runs, merge_inputs, split_outputs, tensor_bytes
from scheduler.batching.policy import BatchingPolicy, batch_bytes_for
from scheduler.batching.queue import BatchQueue
from scheduler.clock import Clock
from scheduler.current_span import make_current, restore
from scheduler.errors import (
    BackendError,
    Cancelled,
    DeadlineExceeded,
    GatewayError,
    Unavailable,
)
from scheduler.request import InferRequest, Outputs
from scheduler.spec import ModelSpec, Tensor

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pending:
    """A caller waiting in the batcher: its request, rows and the future its outputs go to."""

    request: InferRequest
    rows: int
    future: asyncio.Future[Outputs]
    enqueued_at: float
    #: Traced: when its wait began (ns since the epoch; 0: no wait open); its
    #: queue span is made when the wait ends (``tracing.start_batch_spans``
    #: when its batch is cut, else ``end_queue_span``).
    queue_since_ns: int = 0
    #: Untraced: the caller's span context, for ``BatchInfo.trace_contexts``.
    span_context: SpanContext = trace.INVALID_SPAN_CONTEXT
    #: Traced: the context of the caller's server span, the member's spans' parent.
    parent: Context | None = None
    #: Traced: the member's batch span, open until its task has its outputs.
    batch_span: Span | None = None

    def end_queue_span(
        self, tracer: Tracer, *, end_ns: int | None = None, error: str | None = None
    ) -> None:
        """The request's wait ends (a no-op once it has): its queue span is made."""
        if self.queue_since_ns:
            tracing.queue_span(
                tracer,
                self.parent,
                model=self.request.model_name,
                start_ns=self.queue_since_ns,
                end_ns=end_ns,
                error=error,
            )
            self.queue_since_ns = 0

    def hold_batch_span(self, span: Span, now_ns: int) -> None:
        """The member joins a batch (again, for a split half): its last batch span ends."""
        if self.batch_span is not None:
            self.batch_span.end(end_time=now_ns)
        self.batch_span = span

    def end_batch_span(self) -> None:
        if self.batch_span is not None:
            self.batch_span.end()
            self.batch_span = None


class BatchExecutor:
    """Runs the batches of one model's ``Batcher``, each in the task it is given.

    ``execute`` drops members whose callers are gone, merges the rest's
    inputs, calls ``run_batch``, checks one output row per input row, splits,
    and gives each request what it asked for. Traced, every member gets a
    batch span in its own trace; the batch runs under the first member's, and
    its placement and backend-call spans are copied into the others' when it
    ends (``scheduler.tracing``). Failure isolation: a batch of several requests
    that fails with an error that may be one member's fault (not a deadline,
    cancellation or unavailability) is split in halves, each retried while
    its deadline allows, down to the single request that fails alone.
    A batch whose tensors would not fit in one backend message (the policy's
    ``max_message_bytes``) runs as consecutive sub-batches that each fit.
    Service times go back to the queue, whose delay policy learns from them.
    """

    def __init__(
        self,
        spec: ModelSpec,
        policy: BatchingPolicy,
        run_batch: RunBatch,
        queue: BatchQueue[Pending],
        *,
        clock: Clock,
        tracer: Tracer,
        counters: BatcherCounters,
    ) -> None:
        self._spec = spec
        self._policy = policy
        self._run_batch = run_batch
        self._queue = queue
        self._clock = clock
        self._tracer = tracer
        self.counters = counters
        self._batch_bytes = batch_bytes_for(policy.max_message_bytes)

    async def execute(self, members: list[Pending], trigger: BatchTrigger, attempt: int) -> None:
        live = [m for m in members if not m.future.done()]  # callers gone or timed out
        if not live:
            return
        if len(live) > 1 and self._batch_bytes:
            # Cut here rather than in the queue: the queue cuts by rows in
            # O(log n) and would have to keep every group's running bytes to
            # cut by size as well. A request's size (the larger of its message
            # and its fixed-shape response, set at the door) bounds its tensors'
            # bytes both ways, so this costs an attribute read a member; only one
            # that came without it (0) has its tensors counted.
            sizes = [m.request.size_bytes or tensor_bytes(m.request.inputs) for m in live]
            runs = byte_runs(sizes, self._batch_bytes)
            if len(runs) > 1:
                self.counters.byte_splits += 1
                parts = [[live[i] for i in run] for run in runs]
                await asyncio.gather(*(self._execute_fitting(p, trigger, attempt) for p in parts))
                return
        await self._execute_fitting(live, trigger, attempt)

    async def _execute_fitting(
        self, live: list[Pending], trigger: BatchTrigger, attempt: int
    ) -> None:
        """``execute`` for live members whose batch fits in a backend message."""
        try:
            results = await self._call(live, trigger, attempt)
        except asyncio.CancelledError:
            for m in live:
                fail(m, Unavailable(f"model '{self._spec.name}' shut down during the batch"))
            raise
        except GatewayError as exc:
            error = exc
        except Exception as exc:  # a bug in run_batch must not leave callers waiting forever
            ref = f"{id(exc):x}"[-8:]
            log.exception("batch of model %s failed (reference %s)", self._spec.name, ref)
            # The exception's text stays in the log: it may name addresses or internals.
            error = BackendError(
                f"a batch of model '{self._spec.name}' failed inside the gateway "
                f"(reference {ref} in its logs)",
                backend_id="",
            )
            error.__cause__ = exc
        else:
            for m, outputs in zip(live, results, strict=True):
                if not m.future.done():
                    m.future.set_result(outputs)
            return
        self.counters.failed_batches += 1
        if len(live) > 1 and may_be_one_members_fault(error) and self._time_left(live):
            self.counters.isolation_splits += 1
            half = len(live) // 2
            await asyncio.gather(
                self.execute(live[:half], "split", attempt + 1),
                self.execute(live[half:], "split", attempt + 1),
            )
            return
        for m in live:
            fail(m, error)

    async def _call(
        self, live: list[Pending], trigger: BatchTrigger, attempt: int
    ) -> list[Outputs]:
        requests = [m.request for m in live]
        rows = [m.rows for m in live]
        deadlines = [r.deadline for r in requests if r.deadline is not None]
        head = requests[0]
        members = [m.span_context for m in live]
        batch_span: Span | None = None
        if tracing.recording(self._tracer):
            batch_span = self._start_batch_spans(live, trigger, attempt, sum(rows))
        info = BatchInfo(
            model_name=self._spec.name,
            model_version=head.model_version,
            size=sum(rows),
            request_ids=tuple([r.id for r in requests]),
            deadline=min(deadlines, default=None),
            trigger=trigger,
            outputs=self.union_of_outputs(requests),
            # Members mostly share one priority: map each distinct one once.
            priority=min(map(self._policy.level_of, {r.priority for r in requests})),
            parameters={k: v for k, v in head.parameters.items() if k not in SCHEDULING_PARAMETERS},
            trace_contexts=tuple(members),
            enqueued_at=tuple([m.enqueued_at for m in live]),
            attempt=attempt,
            # Alone in its batch, a request may travel in the form it came in.
            wire=head.wire if len(requests) == 1 else None,
        )
        self.counters.batch_sizes[info.size] += 1
        start = self._clock.now()
        merged = merge_inputs([r.inputs for r in requests])
        try:
            if batch_span is None:
                outputs = await self._run_batch(self._spec, merged, info)
            else:
                if len(live) > 1:  # copies for the others' traces (``mirror``)
                    info.phases = []
                # ``trace.use_span(batch_span)`` without its generator's calls.
                token = make_current(batch_span)
                try:
                    outputs = await self._run_batch(self._spec, merged, info)
                except Exception as exc:
                    batch_span.record_exception(exc)
                    batch_span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                    raise
                finally:
                    restore(token)
        finally:
            for r, m in zip(requests, live, strict=True):
                r.served_by = info.served_by[-1] if info.served_by else r.served_by
                r.backend_s += info.backend_s
                if not attempt:  # a re-run half of a split left the queue already
                    r.queued_s = start - m.enqueued_at
            if info.phases:
                others = [m.batch_span for m in live[1:] if m.batch_span is not None]
                tracing.mirror(self._tracer, info.phases, others)
        self._queue.record_service(self._clock.now() - start)
        self._queue.note_completion(self._clock.now())
        if isinstance(outputs, bytes):  # the lone member's encoded response
            return [outputs]
        parts = split_outputs(outputs, rows)
        return [self.select(r, part) for r, part in zip(requests, parts, strict=True)]

    def _start_batch_spans(
        self, live: list[Pending], trigger: BatchTrigger, attempt: int, size: int
    ) -> Span:
        """A batch span per member, the leader's (the first member's) returned;
        the members' queue spans end where their batch spans begin."""
        now_ns = time.time_ns()
        spans = tracing.start_batch_spans(
            self._tracer,
            [m.parent for m in live],
            model=self._spec.name,
            size=size,
            trigger=trigger,
            attempt=attempt,
            start_ns=now_ns,
            waits=[m.queue_since_ns for m in live],  # 0 for a re-run half of a split
        )
        for m, span in zip(live, spans, strict=True):
            m.hold_batch_span(span, now_ns)
            m.queue_since_ns = 0  # its queue span is made
        return spans[0]

    def union_of_outputs(self, requests: Sequence[InferRequest]) -> tuple[str, ...]:
        if any(not r.requested_outputs for r in requests):
            return ()
        wanted = {name for r in requests for name in r.requested_outputs}
        return tuple(o.name for o in self._spec.outputs if o.name in wanted)

    def select(self, request: InferRequest, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if not request.requested_outputs:
            return outputs
        missing = [n for n in request.requested_outputs if n not in outputs]
        if missing:
            raise BackendError(
                f"model '{self._spec.name}' returned no output {', '.join(map(repr, missing))}",
                backend_id="",
            )
        return {name: outputs[name] for name in request.requested_outputs}

    def _time_left(self, live: list[Pending]) -> bool:
        deadlines = [m.request.deadline for m in live if m.request.deadline is not None]
        return not deadlines or self._clock.now() < min(deadlines)


def may_be_one_members_fault(error: GatewayError) -> bool:
    # A deadline, a cancellation, a backend that is down or one that sheds load
    # (RESOURCE_EXHAUSTED: its queue is full) fails every member alike; splitting
    # would only multiply the load (8 shed requests would become 15 calls).
    # Anything else may be one request's data (or a batch too large for the
    # device, or whose response is over the message limit), so split.
    if error.code == "RESOURCE_EXHAUSTED":
        return False
    return not isinstance(error, DeadlineExceeded | Cancelled | Unavailable)


def fail(pending: Pending, error: GatewayError) -> None:
    if pending.batch_span is not None and pending.batch_span.is_recording():
        pending.batch_span.set_status(Status(StatusCode.ERROR, error.message))
    if not pending.future.done():
        pending.future.set_exception(error)
