"""Outlier detection against calls larger than the ones a backend was measured on."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.errors import DeadlineExceeded
from scheduler.health import outlier_needs_s
from scheduler.request import InferRequest, Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec
from tests.unit.test_scheduler import FakeBackend

VARIABLE = ModelSpec(
    "double",
    (TensorSpec("X", DataType.FP32, (-1, -1)),),
    (TensorSpec("Y", DataType.FP32, (-1, -1)),),
    max_batch_size=8,
)


class SizedBackend(FakeBackend):
    """Takes 5 ms plus 1 µs per input byte of virtual time, and ends a call
    at its deadline, as a Triton does with the timeout it is sent. A call
    takes the first of ``stalls`` longer (shared between backends: whichever
    gets the next call stalls), as on a machine that paused."""

    stalls: list[float]

    async def infer(
        self,
        model: ModelSpec,
        inputs: Mapping[str, Tensor],
        *,
        version: str = "",
        outputs: tuple[str, ...] = (),
        parameters: Parameters | None = None,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> dict[str, Tensor]:
        assert self.clock is not None
        self.calls += 1
        took_s = 0.005 + 1e-6 * sum(a.nbytes for a in inputs.values())
        if self.stalls:
            took_s += self.stalls.pop(0)
        if deadline is not None and self.clock.now() + took_s > deadline:
            self.clock.advance(max(deadline - self.clock.now(), 0.0))
            raise DeadlineExceeded("the call ran out of time")
        self.clock.advance(took_s)
        return {"Y": inputs["X"] * 2}


def _sized(backend_id: str, clock: ManualClock, stalls: list[float]) -> SizedBackend:
    backend = SizedBackend(backend_id, VARIABLE, clock=clock)
    backend.stalls = stalls
    return backend


def _request(values: int) -> InferRequest:
    return InferRequest("double", {"X": np.ones((1, values), np.float32)})


async def test_a_call_slow_only_because_it_is_large_is_not_an_outlier() -> None:
    clock = ManualClock()
    backend = _sized("b1", clock, [])
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler([backend], clock=clock, config=config)
    await scheduler.start()
    try:
        for _ in range(5):  # learnt: 5 ms for a row of 8 bytes
            await scheduler.infer(_request(2))
        # 800 kB in one row takes 0.8 s, past the 0.55 s that 10x the small
        # calls' time plus 0.5 s would allow: it is expected, it is large.
        result = await scheduler.infer(_request(200_000))
        assert result.outputs["Y"].shape == (1, 200_000)
        assert scheduler.is_healthy("b1") and backend.calls == 6
    finally:
        await scheduler.aclose()


def test_the_expected_time_scales_with_bytes_per_row_never_below_the_prediction() -> None:
    assert outlier_needs_s(0.01, 0.02, row_bytes=800, usual=8) == 0.01 * 100 + 0.02
    assert outlier_needs_s(0.01, 0.02, row_bytes=4, usual=8) == 0.01 + 0.02
    assert outlier_needs_s(0.01, 0.0, row_bytes=800, usual=0) == 0.01  # nothing learnt


async def test_the_last_backend_s_slow_call_is_not_cut() -> None:
    """With nowhere else to retry, a call past the outlier bound runs on: cut,
    it would only turn a late answer into an error and, repeated, eject the
    model's only server (as an overloaded machine once did)."""
    clock = ManualClock()
    stalls: list[float] = []
    backend = _sized("b1", clock, stalls)
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler([backend], clock=clock, config=config)
    await scheduler.start()
    try:
        for _ in range(5):  # learnt: 5 ms a call, so the bound is 0.55 s
            await scheduler.infer(_request(2))
        for _ in range(6):  # more stalls in a row than eject a backend
            stalls.append(2.0)
            result = await scheduler.infer(_request(2))
            assert result.outputs["Y"].shape == (1, 2)
        assert scheduler.is_healthy("b1") and backend.calls == 11
    finally:
        await scheduler.aclose()


async def test_a_slow_call_with_a_spare_backend_is_cut_and_retried_there() -> None:
    clock = ManualClock()
    stalls: list[float] = []
    backends = [_sized("b1", clock, stalls), _sized("b2", clock, stalls)]
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler(backends, clock=clock, config=config)
    await scheduler.start()
    try:
        for _ in range(10):  # both learnt
            await scheduler.infer(_request(2))
        assert all(scheduler.runner.estimator.knows(b.id, "double") for b in backends)
        stalls.append(2.0)
        started = clock.now()
        result = await scheduler.infer(_request(2))
        assert result.outputs["Y"].shape == (1, 2)
        # Cut at the bound (0.5 s + 10 x the 5 ms learnt, give or take the
        # wait), then answered by the other backend: well before the 2 s stall.
        assert clock.now() - started < 1.0
        assert sum(b.calls for b in backends) == 12
    finally:
        await scheduler.aclose()
