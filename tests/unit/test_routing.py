"""scheduler.routing: every policy on hand-built candidates, and the per-model
setting through the real Scheduler with fake backends."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.placement import Candidates, Tier, Verdict, place
from scheduler.routing import (
    DEFAULT_ROUTER,
    ROUTERS,
    LeastOutstanding,
    PowerOfTwo,
    PredictedFinishTime,
    RoundRobin,
    RouterTable,
    make_router,
)
from tests.unit.test_scheduler import DOUBLE, FakeBackend, _request

A, C = int(Tier.ACCELERATOR), int(Tier.CPU)


def candidates(
    tiers: list[int],
    queued_s: list[float],
    service_s: list[float],
    outstanding: list[int] | None = None,
    available: list[bool] | None = None,
) -> Candidates:
    n = len(tiers)
    return Candidates(
        tuple(f"b{i}" for i in range(n)),
        np.array(tiers, np.int8),
        np.array(available if available is not None else [True] * n),
        np.ones(n, np.bool_),
        np.ones(n, np.bool_),
        np.array(queued_s, np.float64),
        np.array(service_s, np.float64),
        np.zeros(n),
        None,
        None if outstanding is None else np.array(outstanding, np.int64),
    )


def test_every_name_makes_a_router_of_that_name() -> None:
    for name in ROUTERS:
        assert make_router(name).name == name
    with pytest.raises(ValueError, match="unknown routing policy 'fastest'"):
        make_router("fastest")


def test_default_router_decides_as_place_does() -> None:
    c = candidates([A, A, C], [0.010, 0.0, 0.0], [0.005, 0.020, 0.001])
    router = make_router(DEFAULT_ROUTER)
    for deadline in (None, 0.012, 0.004):
        ours = router(c, now=0.0, deadline=deadline, unknown_service_s=0.001)
        theirs = place(c, now=0.0, deadline=deadline, unknown_service_s=0.001)
        assert repr(ours) == repr(theirs)  # repr: NaN fields compare unequal


def test_pft_spills_to_cpu_only_when_no_accelerator_is_in_time() -> None:
    c = candidates([A, C], [0.050, 0.0], [0.010, 0.005])
    spill = PredictedFinishTime()(c, now=0.0, deadline=0.020, unknown_service_s=0.0)
    assert (spill.verdict, spill.backend_id) == (Verdict.SPILLED, "b1")
    no_spill = PredictedFinishTime(spill=False)(c, now=0.0, deadline=0.020, unknown_service_s=0.0)
    assert (no_spill.verdict, no_spill.backend_id) == (Verdict.TOO_LATE, None)
    blind = PredictedFinishTime(deadline_aware=False)(
        c, now=0.0, deadline=0.020, unknown_service_s=0.0
    )
    assert (blind.verdict, blind.backend_id) == (Verdict.PLACED, "b0")


def test_round_robin_takes_usable_accelerators_in_turn() -> None:
    c = candidates([A, A, C, A], [0.0] * 4, [0.001] * 4, available=[True, False, True, True])
    router = RoundRobin()
    chosen = [router(c, now=0.0, deadline=None, unknown_service_s=0.0).backend_id for _ in range(4)]
    assert sorted(chosen[:2]) == ["b0", "b3"] and chosen[:2] == chosen[2:]


def test_baselines_fall_back_to_cpu_only_without_a_usable_accelerator() -> None:
    c = candidates([A, C], [0.0, 0.0], [0.001, 0.1], [0, 0], available=[False, True])
    d = LeastOutstanding()(c, now=0.0, deadline=None, unknown_service_s=0.0)
    assert (d.verdict, d.backend_id) == (Verdict.PLACED, "b1")
    nothing = candidates([A], [0.0], [0.001], [0], available=[False])
    refused = RoundRobin()(nothing, now=0.0, deadline=None, unknown_service_s=0.0)
    assert refused.verdict is Verdict.NO_CAPACITY


def test_least_outstanding_counts_calls_not_seconds() -> None:
    c = candidates([A, A, A], [0.5, 0.0, 0.0], [0.1, 0.001, 0.001], outstanding=[1, 4, 2])
    d = LeastOutstanding()(c, now=0.0, deadline=None, unknown_service_s=0.0)
    assert d.backend_id == "b0" and "1 in flight" in d.reason
    assert d.predicted_s == pytest.approx(0.6)


def test_power_of_two_never_picks_the_busiest_of_its_pair() -> None:
    c = candidates([A, A], [0.0, 0.0], [0.001, 0.001], outstanding=[9, 0])
    router = PowerOfTwo(seed=1)
    assert {
        router(c, now=0.0, deadline=None, unknown_service_s=0.0).backend_id for _ in range(20)
    } == {"b1"}
    many = candidates([A] * 8, [0.0] * 8, [0.001] * 8, outstanding=list(range(8)))
    picks = [
        router(many, now=0.0, deadline=None, unknown_service_s=0.0).backend_id for _ in range(200)
    ]
    assert "b7" not in picks and len(set(picks)) > 3  # spread, never the worst


def test_router_table_shares_one_router_per_policy() -> None:
    table = RouterTable(DEFAULT_ROUTER, {"a": "round_robin", "b": "round_robin"})
    assert table.of("a") is table.of("b")
    assert table.of("c").name == DEFAULT_ROUTER


async def test_routing_by_model_reaches_the_runner() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    config = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        batching_layer="none",
        routing_by_model={"double": "round_robin"},
    )
    scheduler = Scheduler([b1, b2], clock=ManualClock(), config=config)
    await scheduler.start()
    try:
        for _ in range(4):
            await scheduler.infer(_request())
        # The default policy would keep choosing b1 (equal predictions, ties to the first).
        assert (b1.calls, b2.calls) == (2, 2)
        assert all(d.reason.startswith("round_robin") for d in scheduler.decisions)
    finally:
        await scheduler.aclose()
