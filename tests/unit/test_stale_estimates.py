"""Estimates that no call refreshes drift toward the best one, so a backend
that once looked slow is tried, and measured, again."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.clock import ManualClock
from scheduler.estimator import ServiceTimeEstimator
from tests.unit.test_scheduler import DOUBLE, FakeBackend, _request, running


def test_a_stale_estimate_moves_halfway_to_the_best_and_a_call_replaces_it() -> None:
    estimator = ServiceTimeEstimator()
    estimator.observe("fast", "m", 1, 0.04)
    estimator.observe("slow", "m", 1, 0.60)
    assert estimator.relax_stale() == []  # both measured since the last sweep
    assert estimator.relax_stale() == [("slow", "m")]  # the best one stays
    assert estimator.predict("slow", "m", 1) == pytest.approx(0.32)
    assert estimator.predict("fast", "m", 1) == pytest.approx(0.04)
    for _ in range(20):
        estimator.relax_stale()
    slow_s = estimator.predict("slow", "m", 1)
    assert slow_s is not None and slow_s > 0.04  # never below the best
    assert estimator.knows("slow", "m")
    # A relaxed estimate is a seed: the next measurement replaces it outright.
    estimator.observe("slow", "m", 1, 0.03)
    assert estimator.predict("slow", "m", 1) == pytest.approx(0.03)


def test_a_fresh_estimate_is_left_alone_and_other_models_do_not_count() -> None:
    estimator = ServiceTimeEstimator()
    estimator.observe("a", "m", 1, 0.5)
    estimator.observe("b", "other", 1, 0.01)  # another model's best is not this one's
    estimator.relax_stale()
    assert estimator.relax_stale() == []  # each pair is the best of its model
    estimator.seed("c", "m", 1, 0.9)  # only a seed: not measured, not moved
    estimator.relax_stale()
    assert estimator.predict("c", "m", 1) == pytest.approx(0.9)


async def test_a_backend_that_recovered_is_chosen_again_once_its_estimate_relaxes() -> None:
    clock = ManualClock()
    fast, slow = FakeBackend("b1", DOUBLE, clock=clock), FakeBackend("b2", DOUBLE, clock=clock)
    fast.call_s, slow.call_s = 0.04, 0.60
    async with running(fast, slow, clock=clock) as scheduler:
        for _ in range(4):  # each is tried (unknown), then the fast one takes all
            await scheduler.infer(_request())
        assert slow.calls == 1 and fast.calls == 3
        slow.call_s = 0.03  # it recovered; nothing will tell the gateway so

        async def with_the_fast_one_busy() -> str:
            """Where a request goes while another is in flight on the fast server."""
            fast.gate, calls = asyncio.Event(), fast.calls
            held = asyncio.create_task(scheduler.infer(_request()))
            while fast.calls == calls:
                await asyncio.sleep(0)
            second = asyncio.create_task(scheduler.infer(request := _request()))
            await asyncio.sleep(0)  # placed (and, on b2, already answered)
            fast.gate.set()
            fast.gate = None
            await asyncio.gather(held, second)
            return request.served_by

        # Without a sweep, even a busy fast server beats an estimate of 0.6 s.
        assert await with_the_fast_one_busy() == "b1"
        for _ in range(6):
            scheduler.estimator.relax_stale()
        assert await with_the_fast_one_busy() == "b2"  # tried again: it looks close enough now
        assert scheduler.estimator.predict("b2", "double", 1) == pytest.approx(0.03)
        await scheduler.infer(last := _request())
        assert last.served_by == "b2"  # and, measured faster now, it is the first choice
