"""Issue 9, items 5 and 6: overload is not amplified, and is shed early.

A batch a backend sheds (RESOURCE_EXHAUSTED) is not split and re-run; a
request the queue ahead would make late is refused at once with a retry
hint, instead of waiting to fail with DEADLINE_EXCEEDED."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from scheduler.batching import AdmissionPolicy, Batcher, BatchInfo, BatchingPolicy
from scheduler.batching.admission import admit_by_deadline
from scheduler.batching.queue import BatchQueue, QueueItem
from scheduler.errors import BackendError, ResourceExhausted
from scheduler.spec import ModelSpec, Tensor
from tests.unit.test_batcher import SPEC, FakeRun, batcher, request

pytestmark = pytest.mark.timeout(20)


class SheddingRun(FakeRun):
    """A backend whose queue is full: every call is refused."""

    async def __call__(
        self, spec: ModelSpec, inputs: dict[str, Tensor], info: BatchInfo
    ) -> dict[str, Tensor]:
        self.batches.append(info)
        raise BackendError(
            "queue full", backend_id="fake", code="RESOURCE_EXHAUSTED", retryable=True
        )


async def test_a_shed_batch_is_not_split_and_placed_again() -> None:
    run = SheddingRun()
    b = batcher(run, capacity=[0])
    try:
        tasks = [asyncio.create_task(b.submit(request(float(v)))) for v in range(8)]
        await asyncio.sleep(0.01)  # all eight queued: the batch is full
        results = await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await b.aclose()
    assert all(getattr(r, "code", "") == "RESOURCE_EXHAUSTED" for r in results), results
    assert len(run.batches) == 1  # before: 8 -> 4 -> 2 -> 1, 15 calls
    assert b.counters.isolation_splits == 0


async def test_a_request_the_queue_would_make_late_is_refused_at_once() -> None:
    run = FakeRun(delay_s=0.05)
    b = batcher(run, capacity=[1], max_batch_size=1, max_queue_delay_us=0)
    try:
        # Teach the queue what a batch costs, then fill it: 1 running, 10 queued.
        await b.submit(request(0.0))
        backlog = [asyncio.create_task(b.submit(request(float(v)))) for v in range(1, 12)]
        await asyncio.sleep(0.01)
        started = time.monotonic()
        with pytest.raises(ResourceExhausted) as caught:
            await b.submit(request(99.0, deadline=time.monotonic() + 0.2))
        assert time.monotonic() - started < 0.05  # refused, not held until it expired
        assert caught.value.retry_after_ms is not None and caught.value.retry_after_ms >= 200
        assert "deadline" in caught.value.message
        assert b.counters.rejected_late == 1
        # A deadline the queue can meet is admitted and served.
        result = await b.submit(request(7.0, deadline=time.monotonic() + 5))
        assert result["Y"][0, 0] == 14.0
        await asyncio.gather(*backlog)
    finally:
        await b.aclose()


async def test_without_a_measured_batch_nothing_is_refused_early() -> None:
    run = FakeRun(delay_s=0.02)
    b = batcher(run, capacity=[0], max_batch_size=1)
    try:
        waiting = asyncio.create_task(b.submit(request(1.0)))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(b.submit(request(2.0, deadline=time.monotonic() + 0.01)))
        # Served or expired in the queue; with nothing measured there is no
        # prediction to refuse it on.
        outcome = (await asyncio.gather(late, return_exceptions=True))[0]
        assert not isinstance(outcome, ResourceExhausted), outcome
        assert b.counters.rejected_late == 0
        waiting.cancel()
    finally:
        await b.aclose()


async def test_a_default_slo_sheds_requests_without_a_deadline() -> None:
    run = FakeRun(delay_s=0.05)
    b = Batcher(
        SPEC,
        BatchingPolicy(max_batch_size=1, max_queue_delay_us=0),
        run,
        capacity=lambda: 1,
        admission=AdmissionPolicy(fraction=1.0, default_slo_s=0.2),
    )
    try:
        await b.submit(request(0.0))  # one measured batch
        later = time.monotonic() + 10
        backlog = [
            asyncio.create_task(b.submit(request(float(v), deadline=later))) for v in range(1, 12)
        ]
        await asyncio.sleep(0.01)
        with pytest.raises(ResourceExhausted):
            await b.submit(request(99.0))  # no deadline, but 0.5 s of work ahead > 0.2 s
        await asyncio.gather(*backlog, return_exceptions=True)
    finally:
        await b.aclose()


def test_admission_reads_capacity_only_when_the_answer_depends_on_it() -> None:

    queue: BatchQueue[None] = BatchQueue(BatchingPolicy(max_batch_size=4))
    for _ in range(8):  # two batches ahead
        queue.push(QueueItem(None, rows=1, key="k"), now=0.0)
    queue.record_service(0.1)  # 0.1 s a batch: three batches with ours

    def unread() -> int:
        raise AssertionError("capacity read although one batch at a time is in time")

    calls: list[int] = []

    def parallel(n: int) -> Callable[[], int]:
        def read() -> int:
            calls.append(n)
            return n

        return read

    ours = request(1.0)
    ours.deadline = 1.0  # 0.3 s of batches one at a time: in time
    admit_by_deadline(queue, ours, 1, 0.0, unread, AdmissionPolicy())
    ours.deadline = 0.25  # in time only if they run in parallel
    admit_by_deadline(queue, ours, 1, 0.0, parallel(3), AdmissionPolicy())
    with pytest.raises(ResourceExhausted):
        admit_by_deadline(queue, ours, 1, 0.0, parallel(1), AdmissionPolicy())
    assert calls == [3, 1]
