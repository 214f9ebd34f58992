"""A stall shared by every call in flight on a backend is learnt once per
instance, not once per call (``scheduler.load``), live and in the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from scheduler.clock import ManualClock
from scheduler.load import Departures, service_sample
from scheduler.request import Parameters
from scheduler.sim.devices import DeviceSpec, Failure
from scheduler.sim.engine import Simulation
from scheduler.sim.scenarios import FAST, build
from scheduler.spec import ModelSpec, Tensor
from tests.unit.test_scheduler import DOUBLE, FakeBackend, _request, running

SERVICE_S = 0.010


class FifoBackend(FakeBackend):
    """One instance: calls run one at a time in arrival order, ``call_s`` of
    virtual time each; while ``gate`` is closed the server is stalled."""

    def __init__(self, backend_id: str, clock: ManualClock) -> None:
        super().__init__(backend_id, DOUBLE, clock=clock)
        self.call_s = SERVICE_S
        self._instance = asyncio.Lock()  # FIFO: waiters take it in arrival order

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
        async with self._instance:
            if self.gate is not None:
                await self.gate.wait()
            self.clock.advance(self.call_s)
        return {"Y": inputs["X"] * 2}


async def test_a_stall_under_sixteen_calls_is_learnt_once_and_nothing_is_refused_after() -> None:
    clock = ManualClock()
    backend = FifoBackend("b1", clock)
    async with running(backend, clock=clock) as scheduler:
        for _ in range(5):  # measured alone: 10 ms
            await scheduler.infer(_request())
        backend.gate = asyncio.Event()
        calls = [asyncio.create_task(scheduler.infer(_request())) for _ in range(16)]
        while backend.calls < 5 + 16:  # all sixteen in flight on the stalled server
            await asyncio.sleep(0)
        clock.advance(2.0)  # it pauses for two seconds, then serves them in turn
        backend.gate.set()
        await asyncio.gather(*calls)
        backend.gate = None
        # One sample of 2 s (the call that held the server through the pause)
        # and fifteen of 10 ms: 10 ms + 0.2 * 2 s * 0.8 ** 15 = 16 ms, where
        # sixteen samples of the whole pause made it ~2 s.
        learnt = scheduler.estimator.predict("b1", "double", 1)
        assert learnt is not None and learnt < 3 * SERVICE_S
        # The server is well again: a request with 200 ms to go is served,
        # not refused as predicted past its deadline.
        request = _request(deadline=clock.now() + 0.2)
        await scheduler.infer(request)
        assert request.served_by == "b1"


def test_one_instance_under_steady_load_learns_the_service_time_not_the_arrival_gap() -> None:
    departures = Departures()
    # Arrivals every 4 ms, 10 ms of service: a queue that grows; calls leave every 10 ms.
    starts = [0.004 * i for i in range(20)]
    samples = []
    for i, start in enumerate(starts):
        left = SERVICE_S * (i + 1)
        held = departures.held_s("b", "m", 1, start, left)
        samples.append(service_sample(left - start, 0.0, 0, held))
    assert samples == pytest.approx([SERVICE_S] * 20)
    # Idle between calls (arrivals every 30 ms): the latency is the service.
    departures = Departures()
    for i in range(5):
        start = 0.030 * i
        held = departures.held_s("b", "m", 1, start, start + SERVICE_S)
        assert held == pytest.approx(SERVICE_S)


def test_parallel_instances_each_learn_their_whole_call() -> None:
    departures = Departures()
    # Four instances, four calls sent together, leaving together after 10 ms,
    # then four more that waited for them.
    for _ in range(4):
        assert departures.held_s("b", "m", 4, 0.0, SERVICE_S) == pytest.approx(SERVICE_S)
    for _ in range(4):
        held = departures.held_s("b", "m", 4, 0.0, 2 * SERVICE_S)
        assert held == pytest.approx(SERVICE_S)
    # Another model's departures on the same backend do not count.
    assert departures.held_s("b", "other", 4, 0.0, 0.5) == pytest.approx(0.5)


def test_a_backend_that_became_slower_is_learnt_as_slower_at_once() -> None:
    departures = Departures()
    now = 0.0
    for _ in range(3):  # 10 ms each, back to back
        now += SERVICE_S
        departures.held_s("b", "m", 1, 0.0, now)
    # Now 50 ms a call, with a queue (predicted wait at 10 ms a call ahead).
    for ahead in range(1, 4):
        now += 0.050
        held = departures.held_s("b", "m", 1, 0.0, now)
        sample = service_sample(now, ahead * SERVICE_S, ahead, held)
        assert sample == pytest.approx(0.050)


def test_the_simulator_learns_a_stall_once_per_instance_too() -> None:
    """A fast GPU (one instance per model) stalls: the calls that start in a
    20 ms window at 0.5 s take 60 times longer (~0.4 s), and those queued
    behind them wait it out. Each model learns the stall from one call (the
    one that held the instance), and the GPU takes most of the work again."""
    scenario = build(gpus=2, duration_s=2.0, stale_sweep=False)
    stall = Failure("slow", 0.5, 0.52, factor=60.0)
    stalled = DeviceSpec("gpu0000", FAST, failures=(stall,))
    scenario = type(scenario)(**{**scenario.__dict__, "devices": [stalled, *scenario.devices[1:]]})
    sim = Simulation(scenario, "predicted_finish_time")
    estimator = sim.replicas[0].estimator
    learnt = estimator.observe
    long_samples: dict[str, int] = {}

    def observe(backend_id: str, model: str, rows: int, seconds: float) -> None:
        if backend_id == "gpu0000" and seconds > 0.05:
            long_samples[model] = long_samples.get(model, 0) + 1
        learnt(backend_id, model, rows, seconds)

    estimator.observe = observe  # type: ignore[method-assign]
    requests = sim.run()
    assert long_samples and all(n == 1 for n in long_samples.values())  # 13 before
    after = [r for r in requests if 1.0 <= r.arrived_at < 1.5]
    assert sum(r.backend == "gpu0000" for r in after) / len(after) > 0.8  # 63% before
