"""The async batcher of one model: queue requests, cut batches, run them, split the results."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Tracer

from scheduler import tracing
from scheduler.batching.admission import AdmissionPolicy, admit_by_deadline
from scheduler.batching.execution import BatchExecutor, Pending, fail
from scheduler.batching.info import SCHEDULING_PARAMETERS, BatcherCounters, BatchInfo, RunBatch
from scheduler.batching.merge import params_key, rows_of, split_outputs
from scheduler.batching.policy import BatchingPolicy
from scheduler.batching.queue import Batch, BatchQueue, QueueItem
from scheduler.batching.together import SubmitsTogether
from scheduler.batching.waker import Waker
from scheduler.clock import Clock, MonotonicClock
from scheduler.current_span import current_context
from scheduler.errors import (
    BackendError,
    DeadlineExceeded,
    GatewayError,
    ResourceExhausted,
    Unavailable,
)
from scheduler.request import InferRequest, Outputs
from scheduler.spec import ModelSpec

log = logging.getLogger(__name__)

# Floor of a timed wait, so a wake-up that is due but not actionable cannot spin.
_MIN_SLEEP_S = 0.0002


class Batcher(SubmitsTogether):
    """Batches one model's requests from many callers into few backend calls.

    ``submit`` pushes the request, with the future its result goes to, into a ``BatchQueue`` and
    waits for the future; a caller that goes away takes its item out of the queue before
    dispatch. One background task per batcher loops: expire timed-out items, pop due batches,
    then sleep until a push it may act on (``_worth_a_look``), a finished batch,
    ``notify_capacity`` or the queue's ``next_wakeup``. Deadlines need no timer per request: the
    loop expires queued requests at theirs, and a running batch's backend call is bounded by its
    earliest member's.

    ``capacity()`` is how many batches the backends can run at once now. While fewer are in
    flight, the queue is told a backend is idle and sends what it holds at once
    (work-conserving). Beyond that, up to ``queue_ahead`` more batches may be sent when a
    trigger (full, preferred, delay, deadline) fires, so a backend that finishes finds the next
    batch already there; past that, requests wait here, where priority, deadlines and shedding
    still act on them, instead of in a backend's FIFO.

    Each batch runs in its own task through a ``BatchExecutor`` (merge,
    ``run_batch``, split, failure isolation: see ``execution``).
    ``submit_group`` takes requests that arrived together (``together``).

    Waits run on the event loop's timer, so ``clock`` must advance in real time (the
    simulator drives ``BatchQueue`` itself on virtual time)."""

    def __init__(
        self,
        spec: ModelSpec,
        policy: BatchingPolicy,
        run_batch: RunBatch,
        *,
        clock: Clock | None = None,
        capacity: Callable[[], int] | None = None,
        queue_ahead: int = 1,
        tracer: Tracer | None = None,
        admission: AdmissionPolicy | None = None,
    ) -> None:
        if not policy.enabled:
            raise ValueError(f"batching is off for model '{spec.name}'; do not make a Batcher")
        if not 1 <= policy.max_batch_size <= spec.max_batch_size:
            raise ValueError(
                f"max_batch_size {policy.max_batch_size} of the batching policy of model "
                f"'{spec.name}' must be within 1..{spec.max_batch_size} (the model's)"
            )
        self._spec = spec
        self._policy = policy
        self._run_batch = run_batch
        self._clock = clock or MonotonicClock()
        self._capacity = capacity or (lambda: 1)
        self._queue_ahead = queue_ahead
        #: Share of the time to its deadline the queue ahead may take (``admission``).
        self._admission = admission or AdmissionPolicy()
        self._queue: BatchQueue[Pending] = BatchQueue(policy)
        #: Inputs whose non-batch dimensions the model leaves open.
        self._open_dims = tuple(t.name for t in spec.inputs if -1 in t.shape[1:])
        self._wakeup = Waker()
        #: When the loop looks at the queue next by itself (None: only when woken),
        #: and the capacity it saw last: a push wakes it only when it may act.
        self._wake_at: float | None = None
        self._seen_capacity = 1
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Callers running their own batch of one (see ``_run_alone``).
        self._inline: set[asyncio.Task[Any]] = set()
        self._in_flight = 0
        self._closed = False
        self._tracer = tracer or tracing.default_tracer()
        self._traced = tracing.recording(self._tracer)  # asked once: an ABC check
        self._delays = bool(policy.max_queue_delay_us)  # do requests wait for company?
        self.counters = BatcherCounters()
        self._executor = BatchExecutor(
            spec,
            policy,
            run_batch,
            self._queue,
            clock=self._clock,
            tracer=self._tracer,
            counters=self.counters,
        )

    @property
    def spec(self) -> ModelSpec:
        """The model this batcher serves, as it was when the batcher was made."""
        return self._spec

    # -- observation -------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._in_flight

    def queue_depth(self) -> dict[int, int]:
        """Queued requests by priority level."""
        return self._queue.depth()

    def notify_capacity(self) -> None:
        """Capacity may have grown (a backend came back): look at the queue again."""
        self._wakeup.set()

    # -- submitting --------------------------------------------------------
    async def submit(self, request: InferRequest, now: float | None = None) -> Outputs:
        """The request's outputs, once its batch ran; raises what ended it otherwise.

        The caller has validated the inputs against the model; ``now``, when
        given, is the batcher's clock as the caller just read it. Raises
        ResourceExhausted when the request's level is full, DeadlineExceeded
        when it times out in the queue or its deadline passes.
        """
        name = self._spec.name
        if self._closed:
            raise Unavailable(f"model '{name}' is shutting down")
        if now is None:
            now = self._clock.now()
        if request.deadline is not None and now >= request.deadline:
            raise DeadlineExceeded(f"deadline exceeded before model '{name}' was queued")
        rows = rows_of(request.inputs)
        traced = self._traced
        may_skip = not self._delays and self._may_skip_queue()
        if may_skip and not traced:
            return await self._run_lean(request, rows, now)
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        pending = Pending(request, rows, future, now)
        if traced:
            # The caller's server span (current here) parents all its spans.
            pending.parent = request.trace_context or current_context()
            pending.queue_since_ns = request.received_ns or time.time_ns()
        else:  # no spans: the caller's own context is what reaches the backend
            context = request.trace_context
            if context is None:
                context = otel_context.get_current()
            if context:  # an empty context (the common case) holds no span
                pending.span_context = trace.get_current_span(context).get_span_context()
        if may_skip:
            return await self._run_alone(pending)
        key, deadline = self._key(request), request.deadline
        item = QueueItem(pending, rows, key, request.priority, deadline, False, request.tenant)
        item.share = request.share
        late = True  # until admitted
        try:
            admit_by_deadline(self._queue, request, rows, now, self._capacity, self._admission)
            late = False
            self._queue.push(item, now)
        except ResourceExhausted as exc:
            if late:
                self.counters.rejected_late += 1
            else:
                self.counters.rejected_queue_full += 1
            pending.end_queue_span(self._tracer, error=exc.message)
            raise ResourceExhausted(
                f"model '{name}': {exc.message}", retry_after_ms=exc.retry_after_ms
            ) from None
        self.counters.submitted += 1
        self._ensure_running()
        if self._worth_a_look(item):
            self._wakeup.set()
        # No timer per request: the loop expires queued requests at their
        # deadlines, a batch's backend call is bounded by its earliest member's,
        # and gRPC ends the rpc at the caller's deadline.
        try:
            return await future
        except asyncio.CancelledError:
            item.cancelled = True
            if self._queue.remove(item):
                self.counters.cancelled_in_queue += 1
                self._wakeup.set()  # a smaller queue may change what is due
            raise
        finally:
            # Still open: the request never reached a batch (expired, cancelled, closed).
            pending.end_queue_span(self._tracer, error="left the queue without a batch")
            pending.end_batch_span()  # its outputs (or its error) are in hand

    def _worth_a_look(self, item: QueueItem[Pending]) -> bool:
        """Whether the loop should look at the queue now that ``item`` joined it.

        While every backend slot is busy only a batch that cannot grow (full
        or at a preferred size) may leave, and timeouts must be kept: any
        other push changes nothing the loop would act on before its next
        wake-up, and skipping the look saves a step per request under load.
        """
        if self._in_flight < self._seen_capacity or self._policy.preferred_batch_sizes:
            return True
        if self._queue.group_rows(item.key) >= self._policy.max_batch_size:
            return True
        wake_at = self._wake_at
        soonest = min(
            item.deadline if item.deadline is not None else math.inf,
            item.timeout_at if item.timeout_at is not None else math.inf,
        )
        return soonest < (math.inf if wake_at is None else wake_at)

    def _may_skip_queue(self) -> bool:
        """Nothing queued to merge with, no delay to wait, and a backend has room:
        the request is its own batch, and going through the queue and the loop
        would only add two task switches to its latency."""
        return not self._delays and len(self._queue) == 0 and self._in_flight < self._capacity()

    async def _run_lean(self, request: InferRequest, rows: int, now: float) -> Outputs:
        """A batch of one with tracing off, in the caller's own task: no queue
        item, no future, nothing to merge or split (see ``_may_skip_queue``)."""
        counters = self.counters
        counters.submitted += 1
        counters.ran_alone += 1
        counters.batch_sizes[rows] += 1
        parameters = request.parameters
        if parameters and not SCHEDULING_PARAMETERS.isdisjoint(parameters):
            parameters = {k: v for k, v in parameters.items() if k not in SCHEDULING_PARAMETERS}
        info = BatchInfo(
            self._spec.name,  # model_name
            request.model_version,  # model_version
            rows,  # size
            (request.id,),  # request_ids
            request.deadline,  # deadline
            "alone",  # trigger
            # outputs: none named means all (no call for the common case)
            self._executor.union_of_outputs((request,)) if request.requested_outputs else (),
            self._policy.level_of(request.priority),  # priority
            parameters,  # parameters
            (),  # trace_contexts
            (now,),  # enqueued_at
            wire=request.wire,
            caller_context=request.trace_context,
        )
        self._in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self._inline.add(task)  # so aclose() can stop it like a launched batch
        start = self._clock.now()
        try:
            outputs = await self._run_batch(self._spec, request.inputs, info)
        except asyncio.CancelledError:
            if not self._closed or task is None:
                raise  # the caller went away
            task.uncancel()  # stopped by aclose(): the caller gets a status instead
            raise Unavailable(f"model '{self._spec.name}' shut down during the batch") from None
        except GatewayError:
            counters.failed_batches += 1
            raise
        except Exception as exc:  # a bug in run_batch: a status for the caller, logged
            counters.failed_batches += 1
            log.exception("batch of model %s failed unexpectedly", self._spec.name)
            raise BackendError(f"batch failed: {exc!r}", backend_id="") from exc
        finally:
            if info.served_by:
                request.served_by = info.served_by[-1]
            request.backend_s = info.backend_s
            if task is not None:
                self._inline.discard(task)
            self._in_flight -= 1
            self._wakeup.set()  # capacity freed, as when a launched batch ends
        done = self._clock.now()
        self._queue.record_service(done - start)
        self._queue.note_completion(done)
        if isinstance(outputs, bytes):  # the backend's encoded response, as it came
            return outputs
        (part,) = split_outputs(outputs, (rows,))  # checks the batch contract
        return self._executor.select(request, part)

    async def _run_alone(self, pending: Pending) -> Outputs:
        """Run a batch of one in the caller's own task (see ``_may_skip_queue``);
        the backend call is bounded by the request's deadline."""
        self.counters.submitted += 1
        self.counters.ran_alone += 1
        self._in_flight += 1
        task = asyncio.current_task()
        if task is not None:
            self._inline.add(task)  # so aclose() can stop it like a launched batch
        try:
            await self._executor.execute([pending], "alone", 0)
        except asyncio.CancelledError:
            if not self._closed or task is None:
                raise  # the caller went away
            task.uncancel()  # stopped by aclose(): the caller gets a status instead
            raise Unavailable(f"model '{self._spec.name}' shut down during the batch") from None
        finally:
            if task is not None:
                self._inline.discard(task)
            self._in_flight -= 1
            self._wakeup.set()  # capacity freed, as when a launched batch ends
            pending.end_queue_span(self._tracer, error="left without a batch")
            pending.end_batch_span()
        return pending.future.result()

    def _key(self, request: InferRequest) -> Hashable:
        # Merge only what one backend call can carry: same version, same
        # tensor layouts, same inference parameters. Requests were validated
        # against the model, so names and datatypes agree already: only the
        # non-batch dimensions the model leaves open (-1) can differ.
        inputs = request.inputs
        open_dims = self._open_dims
        return (
            request.model_version,
            tuple([inputs[name].shape[1:] for name in open_dims]) if open_dims else (),
            params_key(request.parameters, SCHEDULING_PARAMETERS) if request.parameters else (),
        )

    # -- the loop ----------------------------------------------------------
    def _ensure_running(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._loop(), name=f"batcher-{self._spec.name}")

    async def _loop(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                wake_at = self._step(self._clock.now())
            except Exception as exc:  # a bug here must not strand the queued callers
                log.exception("batcher of model %s failed; failing its queue", self._spec.name)
                for item in self._queue.drain():
                    fail(
                        item.payload,
                        GatewayError(f"batcher of model '{self._spec.name}' failed: {exc!r}"),
                    )
                wake_at = None
            self._wake_at = wake_at
            if wake_at is None:
                await self._wakeup.wait()
            else:
                await self._wakeup.wait(max(wake_at - self._clock.now(), _MIN_SLEEP_S))

    def _step(self, now: float) -> float | None:
        """Expire, dispatch what is due; when to look again (None: on the next event).

        The decisions are the queue's (``BatchQueue.step``, pure); this acts on them.
        """
        self._seen_capacity = capacity = self._capacity()
        step = self._queue.step(
            now, in_flight=self._in_flight, capacity=capacity, ahead=self._queue_ahead
        )
        for item, error in step.expired:
            self.counters.expired_in_queue += 1
            fail(item.payload, DeadlineExceeded(f"model '{self._spec.name}': {error}"))
        for batch in step.batches:
            self._launch(batch)
        return step.wake_at

    def _launch(self, batch: Batch[Pending]) -> None:
        self.counters.batches_by_trigger[batch.trigger] += 1
        self._in_flight += 1
        members = [item.payload for item in batch.items]
        task = asyncio.create_task(self._executor.execute(members, batch.trigger, 0))
        self._tasks.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._in_flight -= 1
        self._wakeup.set()  # capacity freed

    # -- closing -----------------------------------------------------------
    async def aclose(self) -> None:
        """Stop the loop and every batch; fail what is still queued with UNAVAILABLE."""
        self._closed = True
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in [*tasks, *self._inline]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for item in self._queue.drain():
            fail(item.payload, Unavailable(f"model '{self._spec.name}' is shutting down"))
