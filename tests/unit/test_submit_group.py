"""Batcher.submit_group: requests that arrived together run together, each answered alone."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from scheduler.errors import BackendError, DeadlineExceeded
from tests.unit.test_batcher import POISON, FakeRun, batcher, request

pytestmark = pytest.mark.timeout(10)


async def test_a_group_runs_as_full_batches_in_order_with_exact_outputs() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    try:
        values = [float(v) for v in range(1, 12)]  # 11 rows: a batch of 8, then one of 3
        outcomes = await b.submit_group([request(v) for v in values])
    finally:
        await b.aclose()
    assert [info.size for info in run.batches] == [8, 3]
    assert [info.trigger for info in run.batches] == ["stream", "stream"]
    assert run.seen == values  # the order the requests came in
    for value, outcome in zip(values, outcomes, strict=True):
        assert isinstance(outcome, dict)
        np.testing.assert_array_equal(outcome["Y"], [[2 * value, 0.0, 2 * value]])
    assert b.counters.submitted == 11 and b.counters.batches_by_trigger["stream"] == 2
    assert b.in_flight == 0


async def test_one_bad_request_fails_alone_and_the_others_are_answered() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    late = request(7.0, deadline=time.monotonic() - 1)
    try:
        outcomes = await b.submit_group([request(1.0), request(POISON), late, request(2.0)])
    finally:
        await b.aclose()
    first, poisoned, too_late, last = outcomes
    assert isinstance(first, dict) and first["Y"][0, 0] == 2.0
    assert isinstance(last, dict) and last["Y"][0, 0] == 4.0
    assert isinstance(poisoned, BackendError)  # found by splitting the failed batch
    assert isinstance(too_late, DeadlineExceeded)
    assert 7.0 not in run.seen  # never sent to the backend


async def test_requests_that_may_not_merge_go_in_separate_batches() -> None:
    run = FakeRun()
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    try:
        group = [
            request(1.0, parameters={"mode": "a"}),
            request(2.0, parameters={"mode": "b"}),
            request(3.0, parameters={"mode": "a"}),
        ]
        outcomes = await b.submit_group(group)
    finally:
        await b.aclose()
    assert sorted(info.request_ids for info in run.batches) == [("r1.0", "r3.0"), ("r2.0",)]
    assert [o["Y"][0, 0] for o in outcomes if isinstance(o, dict)] == [2.0, 4.0, 6.0]


async def test_with_every_backend_busy_each_request_is_queued_as_usual() -> None:
    run = FakeRun(delay_s=0.01)
    b = batcher(run, capacity=[1], max_queue_delay_us=0)
    try:
        busy = asyncio.create_task(b.submit(request(9.0)))
        await asyncio.sleep(0.002)  # the only backend slot is taken
        outcomes = await b.submit_group([request(1.0), request(2.0)])
        await busy
    finally:
        await b.aclose()
    assert [o["Y"][0, 0] for o in outcomes if isinstance(o, dict)] == [2.0, 4.0]
    assert "stream" not in b.counters.batches_by_trigger  # they waited in the queue
