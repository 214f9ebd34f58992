"""Requests that arrived together, run together: ``Batcher.submit_group``.

A front end that reads many streams hands over, in one call, the messages for
one model that arrived in the same turn of the event loop (``gateway.stream_group``).
When a lone request would skip the queue anyway (nothing queued, no delay, a
backend free, tracing off), the group skips it too, as ready-made batches, in
the caller's task: one placement and one backend call serve several requests,
where one request at a time would pay for each.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Hashable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Tracer

from scheduler.batching.execution import BatchExecutor, Pending
from scheduler.batching.info import BatcherCounters, BatchTrigger
from scheduler.batching.merge import rows_of
from scheduler.batching.policy import BatchingPolicy
from scheduler.batching.waker import Waker
from scheduler.clock import Clock
from scheduler.errors import DeadlineExceeded, GatewayError, Unavailable
from scheduler.request import InferRequest, Outputs
from scheduler.spec import ModelSpec

#: Each request's outputs, or the error that ended it, in the order given.
Outcomes = list[Outputs | Exception]


class SubmitsTogether:
    """The ``submit_group`` half of ``Batcher`` (a mixin: it runs on the
    batcher's own state, declared here, and its ``submit``).

    The group is cut into batches the way the queue would cut them: requests
    of one merge key (``_key``: version, open dimensions, parameters), in
    order, up to ``max_batch_size`` rows a batch. The batches run one after
    another in the caller's task (a backend was free for one; a task per batch
    would cost more than the batch when the model runs inline), each through
    the batcher's ``BatchExecutor`` (merge, backend call, split, failure
    isolation) and counted in flight like a launched batch, so that the queue
    and ``aclose`` see it. A request already past its deadline, or whose inputs
    disagree on their rows, fails alone. Otherwise (traced, queue not empty,
    a delay, every backend busy, one request) each request is ``submit``-ted.
    """

    _spec: ModelSpec
    _policy: BatchingPolicy
    _clock: Clock
    _tracer: Tracer
    _traced: bool
    _executor: BatchExecutor
    _wakeup: Waker
    _inline: set[asyncio.Task[Any]]
    _in_flight: int
    _closed: bool
    counters: BatcherCounters

    async def submit(self, request: InferRequest) -> Outputs:
        raise NotImplementedError

    def _may_skip_queue(self) -> bool:
        raise NotImplementedError

    def _key(self, request: InferRequest) -> Hashable:
        raise NotImplementedError

    async def submit_group(self, requests: Sequence[InferRequest]) -> Outcomes:
        """Each request's outputs, or the error that ended it, in order."""
        if len(requests) == 1:
            return [await _outcome(self.submit(requests[0]))]
        if self._closed or self._traced or not self._may_skip_queue():
            return list(await asyncio.gather(*(_outcome(self.submit(r)) for r in requests)))
        members, batches = self._cut(requests)
        counters = self.counters
        counters.submitted += len(requests)
        task = asyncio.current_task()
        if task is not None:
            self._inline.add(task)  # so aclose() can stop it like a launched batch
        try:
            for batch in batches:
                trigger: BatchTrigger = "stream" if len(batch) > 1 else "alone"
                if len(batch) > 1:
                    counters.batches_by_trigger[trigger] += 1
                else:
                    counters.ran_alone += 1
                self._in_flight += 1
                try:
                    await self._executor.execute(batch, trigger, 0)
                finally:
                    self._in_flight -= 1
        except asyncio.CancelledError:
            if not self._closed or task is None:
                raise  # the caller went away
            task.uncancel()  # stopped by aclose(): the executor failed the members UNAVAILABLE
            for member in members:  # and those of batches it never started
                if not member.future.done():
                    member.future.set_exception(
                        Unavailable(f"model '{self._spec.name}' is shutting down")
                    )
        finally:
            if task is not None:
                self._inline.discard(task)
            self._wakeup.set()  # capacity freed, as when a launched batch ends
        return [_settled(member.future) for member in members]

    def _cut(self, requests: Sequence[InferRequest]) -> tuple[list[Pending], list[list[Pending]]]:
        """A member per request (in order), and the batches the runnable ones form."""
        now = self._clock.now()
        loop = asyncio.get_running_loop()
        limit = self._policy.max_batch_size
        members: list[Pending] = []
        runs: dict[Hashable, list[list[Pending]]] = {}
        filled: dict[Hashable, int] = {}  # rows in each key's last batch
        for request in requests:
            member = Pending(request, 0, loop.create_future(), now)
            members.append(member)
            try:
                if request.deadline is not None and now >= request.deadline:
                    raise DeadlineExceeded(
                        f"deadline exceeded before model '{self._spec.name}' was run"
                    )
                member.rows = rows_of(request.inputs)
            except GatewayError as exc:
                member.future.set_exception(exc)
                continue
            if request.trace_context is not None:  # the caller's, passed on to the backend
                span = trace.get_current_span(request.trace_context)
                member.span_context = span.get_span_context()
            key = self._key(request)
            batches = runs.setdefault(key, [[]])
            rows = filled.get(key, 0)
            if rows + member.rows > limit:
                batches.append([])
                rows = 0
            batches[-1].append(member)
            filled[key] = rows + member.rows
        return members, [batch for batches in runs.values() for batch in batches if batch]


async def _outcome(call: Awaitable[Outputs]) -> Outputs | Exception:
    """What ``call`` returns, or the exception it raises (cancellation propagates)."""
    try:
        return await call
    except Exception as exc:
        return exc


def _settled(future: asyncio.Future[Outputs]) -> Outputs | Exception:
    if not future.done():  # ``execute`` settles every live member: a guard, not a path
        return Unavailable("the request's batch ended without an answer")
    error = future.exception()
    if error is None:
        return future.result()
    return error if isinstance(error, Exception) else Unavailable(str(error))
