"""scheduler.batching.Batcher on a real event loop, with a fake run_batch."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable

import numpy as np
import pytest

from scheduler.batching import Batcher, BatchInfo, BatchingPolicy, QueuePolicy
from scheduler.errors import BackendError, DeadlineExceeded, ResourceExhausted, Unavailable
from scheduler.request import InferRequest
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

pytestmark = pytest.mark.timeout(10)

SPEC = ModelSpec(
    "twice",
    (TensorSpec("X", DataType.FP32, (-1, 3)),),
    (TensorSpec("Y", DataType.FP32, (-1, 3)), TensorSpec("SUM", DataType.FP32, (-1,))),
    max_batch_size=8,
)
POISON = -1.0


class FakeRun:
    """run_batch: Y = 2X, SUM = row sums, after ``delay_s``; fails on a poisoned row."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        #: When set, every call waits for it (after ``delay_s``): a test orders events by it.
        self.gate: asyncio.Event | None = None
        self.batches: list[BatchInfo] = []
        self.seen: list[float] = []
        self.wrong_rows = False
        self.running = self.most_running = 0

    async def __call__(
        self, spec: ModelSpec, inputs: dict[str, Tensor], info: BatchInfo
    ) -> dict[str, Tensor]:
        x = inputs["X"]
        assert x.shape[0] == info.size
        self.batches.append(info)
        self.seen.extend(x[:, 0].tolist())
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.delay_s)
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.running -= 1
        if (x == POISON).any():
            raise BackendError("model crashed on a poisoned row", backend_id="fake")
        outputs = {"Y": x * 2, "SUM": x.sum(axis=1)}
        if self.wrong_rows:
            outputs["SUM"] = outputs["SUM"][:-1]
        return {n: a for n, a in outputs.items() if not info.outputs or n in info.outputs}


def request(value: float, rows: int = 1, **kw: object) -> InferRequest:
    x = np.full((rows, 3), value, dtype=np.float32)
    x[:, 1] = np.arange(rows)
    return InferRequest("twice", {"X": x}, id=f"r{value}", **kw)  # type: ignore[arg-type]


def batcher(run: FakeRun, capacity: list[int] | None = None, **policy: object) -> Batcher:
    base = BatchingPolicy(max_batch_size=8, max_queue_delay_us=1_000_000)
    cap = capacity if capacity is not None else [1]
    return Batcher(
        SPEC,
        dataclasses.replace(base, **policy),  # type: ignore[arg-type]
        run,
        capacity=lambda: cap[0],
    )


async def test_many_callers_become_few_batches_with_exact_outputs() -> None:
    run = FakeRun(delay_s=0.01)
    b = batcher(run, max_queue_delay_us=2_000)
    now = time.monotonic()
    reqs = [
        request(
            float(i),
            rows=1 + i % 3,
            requested_outputs=("Y",) if i % 4 == 0 else (),
            deadline=now + 5 + i,
        )
        for i in range(40)
    ]
    try:
        results = await asyncio.gather(*(b.submit(r) for r in reqs))
    finally:
        await b.aclose()
    for r, out in zip(reqs, results, strict=True):
        x = r.inputs["X"]
        assert set(out) == ({"Y"} if r.requested_outputs else {"Y", "SUM"})
        np.testing.assert_array_equal(out["Y"], x * 2)
        if "SUM" in out:
            np.testing.assert_array_equal(out["SUM"], x.sum(axis=1))
    total_rows = sum(r.inputs["X"].shape[0] for r in reqs)
    assert sum(i.size for i in run.batches) == total_rows
    assert all(i.size <= 8 for i in run.batches)
    assert len(run.batches) <= 2 * -(-total_rows // 8)  # few batches, not one per caller
    for info in run.batches:  # the earliest member deadline travels with the batch
        members = [r for r in reqs if r.id in info.request_ids]
        assert info.deadline == min(r.deadline for r in members if r.deadline is not None)
    assert sum(b.counters.batch_sizes.values()) == len(run.batches)
    # capacity 1 plus one batch queued ahead: the rest waited in the batcher's queue
    assert run.most_running <= 2


async def test_work_conserving_a_lone_request_is_not_held_for_the_delay() -> None:
    run = FakeRun()
    b = batcher(run, max_queue_delay_us=2_000_000)
    start = time.monotonic()
    try:
        out = await b.submit(request(3.0))
    finally:
        await b.aclose()
    assert time.monotonic() - start < 0.5
    assert [i.trigger for i in run.batches] == ["idle"]
    np.testing.assert_array_equal(out["Y"], np.array([[6, 0, 6]], np.float32))


async def test_without_capacity_a_partial_batch_waits_for_it() -> None:
    run = FakeRun()
    capacity = [0]
    b = batcher(run, capacity=capacity, max_queue_delay_us=1_000)
    start = time.monotonic()

    async def free_a_backend_later() -> None:
        await asyncio.sleep(0.05)
        capacity[0] = 1
        b.notify_capacity()

    try:
        await asyncio.gather(b.submit(request(1.0)), b.submit(request(2.0)), free_a_backend_later())
    finally:
        await b.aclose()
    # The delay passed long before, but a partial batch is not pushed into a
    # backend that has no room: it waits here, where later requests can join.
    assert time.monotonic() - start >= 0.045
    assert [i.size for i in run.batches] == [2]


async def test_a_poisoned_request_fails_alone() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[0])
    values = [1.0, 2.0, 3.0, POISON, 5.0, 6.0, 7.0, 8.0]
    try:
        results = await asyncio.gather(
            *(b.submit(request(v)) for v in values), return_exceptions=True
        )
    finally:
        await b.aclose()
    for v, result in zip(values, results, strict=True):
        if v == POISON:
            assert isinstance(result, BackendError)
        else:
            assert isinstance(result, dict)
            assert result["Y"][0, 0] == 2 * v
    assert run.batches[0].size == 8 and run.batches[0].trigger == "full"
    assert run.batches[-1].size == 1 and run.batches[-1].trigger == "split"
    assert b.counters.isolation_splits == 3  # 8 -> 4 -> 2 -> 1


async def test_a_batch_over_the_message_limit_runs_as_sub_batches_that_fit() -> None:
    run = FakeRun()
    # A 100-byte limit leaves 50 bytes of tensors per batch: four rows of
    # three FP32 values (48 bytes). A full batch of 8 one-row requests runs as
    # two sub-batches of 4; in a full batch of 3 one-row requests and a 5-row
    # one (60 bytes, over the budget on its own), the large one runs alone.
    b = batcher(run, capacity=[0], max_message_bytes=100)
    values = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    try:
        small = await asyncio.gather(*(b.submit(request(v)) for v in values))
        mixed = await asyncio.gather(
            *(b.submit(request(v)) for v in values[:3]), b.submit(request(9.0, rows=5))
        )
    finally:
        await b.aclose()
    for v, result in zip([*values, *values[:3], 9.0], [*small, *mixed], strict=True):
        assert result["Y"][:, 0].tolist() == [2 * v] * len(result["Y"])
    assert len(mixed[-1]["Y"]) == 5
    assert [i.size for i in run.batches] == [4, 4, 3, 5]
    assert run.seen[:8] == values  # every member once, in queue order
    assert b.counters.byte_splits == 2 and b.counters.isolation_splits == 0


async def test_wrong_output_rows_fail_every_member_and_nothing_hangs() -> None:
    run = FakeRun()
    run.wrong_rows = True
    b = batcher(run, capacity=[0], preferred_batch_sizes=(2,))
    try:
        results = await asyncio.gather(
            b.submit(request(1.0)), b.submit(request(2.0)), return_exceptions=True
        )
    finally:
        await b.aclose()
    assert all(isinstance(r, BackendError) and "first dimension" in str(r) for r in results)


async def test_a_cancelled_caller_leaves_the_queue_before_dispatch() -> None:
    run = FakeRun()
    capacity = [0]
    b = batcher(run, capacity=capacity)
    try:
        gone = asyncio.create_task(b.submit(request(13.0)))
        await asyncio.sleep(0.02)
        assert b.queue_depth() == {1: 1}
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queue_depth() == {1: 0} and b.counters.cancelled_in_queue == 1
        stays = asyncio.create_task(b.submit(request(4.0)))
        await asyncio.sleep(0.01)
        capacity[0] = 1
        b.notify_capacity()
        await stays
    finally:
        await b.aclose()
    assert run.seen == [4.0]


async def test_a_deadline_that_passes_in_the_queue_ends_the_request() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[0])
    start = time.monotonic()
    try:
        with pytest.raises(DeadlineExceeded, match="batch queue"):
            await b.submit(request(1.0, deadline=start + 0.05))
    finally:
        await b.aclose()
    assert 0.04 <= time.monotonic() - start < 1.0
    assert run.batches == [] and b.counters.expired_in_queue == 1


async def test_queue_policy_timeout_rejects() -> None:
    run = FakeRun()
    reject = QueuePolicy(default_timeout_us=30_000, allow_timeout_override=False)
    b = batcher(run, capacity=[0], default_queue_policy=reject)
    try:
        with pytest.raises(DeadlineExceeded, match="queue policy"):
            await b.submit(request(1.0, deadline=time.monotonic() + 5))
    finally:
        await b.aclose()
    assert run.batches == []


async def test_a_full_queue_sheds_with_a_retry_hint() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[0], default_queue_policy=QueuePolicy(max_queue_size=2))
    waiting = [asyncio.create_task(b.submit(request(float(i)))) for i in range(2)]
    await asyncio.sleep(0.01)
    try:
        with pytest.raises(ResourceExhausted) as caught:
            await b.submit(request(9.0))
        assert caught.value.retry_after_ms is not None and caught.value.retry_after_ms > 0
        assert "twice" in caught.value.message
    finally:
        await b.aclose()
    for task in waiting:  # closing answers the queued callers; nobody hangs
        with pytest.raises(Unavailable):
            await task


async def test_aclose_leaves_no_task() -> None:
    run = FakeRun(delay_s=5.0)
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    before = asyncio.all_tasks()
    caller = asyncio.create_task(b.submit(request(1.0)))
    await asyncio.sleep(0.02)
    assert b.in_flight == 1
    await b.aclose()
    with pytest.raises(Unavailable):
        await caller
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before <= {asyncio.current_task()}
    with pytest.raises(Unavailable):
        await b.submit(request(2.0))


class CountingClock:
    """The monotonic clock, counting how often the batcher reads it."""

    def __init__(self) -> None:
        self.reads = 0

    def now(self) -> float:
        self.reads += 1
        return time.monotonic()


async def test_at_the_in_flight_limit_the_loop_sleeps_instead_of_spinning() -> None:
    run = FakeRun(delay_s=0.2)
    clock = CountingClock()
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_us=0)
    b = Batcher(SPEC, policy, run, clock=clock, capacity=lambda: 1, queue_ahead=0)
    try:
        first = asyncio.create_task(b.submit(request(1.0)))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(b.submit(request(2.0)))  # due at once, but no room
        await asyncio.sleep(0.1)
        assert b.in_flight == 1 and b.queue_depth() == {1: 1}
        assert clock.reads < 50
        await asyncio.gather(first, second)
    finally:
        await b.aclose()
    assert [i.size for i in run.batches] == [1, 1]


async def test_under_load_a_higher_priority_request_overtakes_the_queue() -> None:
    run = FakeRun()
    run.gate = asyncio.Event()  # 1.0 runs until every other request has queued
    policy = BatchingPolicy(max_batch_size=1, priority_levels=2, default_priority_level=2)
    b = Batcher(SPEC, policy, run, capacity=lambda: 1, queue_ahead=0)

    async def until(condition: Callable[[], bool]) -> None:
        for _ in range(1000):  # event-loop turns, not time: a slow machine waits longer
            if condition():
                return
            await asyncio.sleep(0.001)
        raise AssertionError("the batcher did not get there")

    try:
        tasks = [asyncio.create_task(b.submit(request(1.0)))]
        await until(lambda: run.running == 1)
        tasks += [asyncio.create_task(b.submit(request(v))) for v in (2.0, 3.0)]
        await until(lambda: b.queue_depth().get(2, 0) == 2)
        tasks.append(asyncio.create_task(b.submit(request(9.0, priority=1))))
        await until(lambda: b.queue_depth().get(1, 0) == 1)
        run.gate.set()
        await asyncio.gather(*tasks)
    finally:
        await b.aclose()
    assert run.seen == [1.0, 9.0, 2.0, 3.0]
    assert [i.priority for i in run.batches] == [2, 1, 2, 2]


async def test_a_lone_request_with_a_free_backend_runs_in_the_callers_task() -> None:
    run = FakeRun(delay_s=0.01)
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    try:
        result = await b.submit(request(3.0))
        np.testing.assert_array_equal(result["Y"][0], [6.0, 0.0, 6.0])
        assert b.counters.ran_alone == 1 and b.in_flight == 0
        assert not b.counters.batches_by_trigger  # a request alone is not a batch
        # A caller that goes away mid-call leaves nothing behind.
        caller = asyncio.create_task(b.submit(request(4.0)))
        await asyncio.sleep(0.002)
        assert b.in_flight == 1
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        assert b.in_flight == 0
        # While that backend is busy, the next caller queues and still gets served.
        first = asyncio.create_task(b.submit(request(5.0)))
        await asyncio.sleep(0)
        second = await b.submit(request(6.0))
        assert (await first)["Y"][0, 0] == 10.0 and second["Y"][0, 0] == 12.0
    finally:
        await b.aclose()
