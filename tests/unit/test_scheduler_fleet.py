"""The scheduler with simulated GPUs and DNS-discovered backends: telemetry
reaches placement through the live path (monitor -> candidates -> policy)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest

from scheduler.backends.base import Backend
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.discovery import DnsEndpointGroup, address_url, parse_dns_endpoint
from scheduler.dispatcher import Scheduler
from scheduler.errors import DeadlineExceeded
from scheduler.fleet import CallsInFlight
from scheduler.placement import Tier, Verdict
from scheduler.request import InferRequest
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.simulated import SimulatedGpu, SimulatedProvider
from tests.unit.test_scheduler import DOUBLE, FakeBackend

GIB = 1024**3


class UrlBackend(FakeBackend):
    """A fake with a Triton-like endpoint, as DNS discovery creates them."""

    def __init__(self, url: str, *args: object, **kwargs: object) -> None:
        super().__init__(f"triton@{url}", *args, **kwargs)  # type: ignore[arg-type]
        self.url = url

    @property
    def endpoint(self) -> str:
        return self.url


def _request(deadline: float | None = None) -> InferRequest:
    return InferRequest(
        model_name="double", inputs={"X": np.ones((1, 2), np.float32)}, deadline=deadline
    )


@contextlib.asynccontextmanager
async def scheduler_with(
    backends: list[Backend],
    clock: ManualClock,
    *,
    provider: SimulatedProvider | None = None,
    tier_of: Callable[[Backend], Tier] | None = None,
    **config: object,
) -> AsyncIterator[Scheduler]:
    settings = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        batching_layer="none",
        **config,  # type: ignore[arg-type]
    )
    monitor = DeviceMonitor([provider], clock=clock, interval_s=3600) if provider else None
    kwargs = {"tier_of": tier_of} if tier_of else {}
    scheduler = Scheduler(backends, clock=clock, config=settings, monitor=monitor, **kwargs)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()


async def test_memory_full_simulated_gpu_is_avoided_and_used_once_freed() -> None:
    clock = ManualClock()
    fast, roomy = (
        FakeBackend("fast", DOUBLE, clock=clock),
        FakeBackend("roomy", DOUBLE, clock=clock),
    )
    fast.call_s, roomy.call_s = 0.002, 0.010
    provider = SimulatedProvider(
        [
            SimulatedGpu("fast:GPU-0", memory_total_bytes=16 * GIB),
            SimulatedGpu("roomy:GPU-1", memory_total_bytes=80 * GIB),
        ]
    )
    provider.allocate("fast:GPU-0", 15 * GIB)  # another tenant fills the fast GPU
    async with scheduler_with(
        [fast, roomy],
        clock,
        provider=provider,
        model_memory_bytes={"double": 2 * GIB},
        memory_headroom_bytes=GIB // 2,
    ) as scheduler:
        for _ in range(3):
            await scheduler.infer(_request())
        assert (fast.calls, roomy.calls) == (0, 3)
        assert all(d.backend_id == "roomy" for d in scheduler.decisions)
        provider.free("fast:GPU-0", 15 * GIB)  # the tenant leaves
        assert scheduler.monitor is not None
        await scheduler.monitor.poll_once()
        await scheduler.infer(_request())
        assert fast.calls == 1


async def test_stale_telemetry_is_unknown_not_full() -> None:
    clock = ManualClock()
    only = FakeBackend("only", DOUBLE, clock=clock)
    provider = SimulatedProvider(
        [SimulatedGpu("only:GPU-0", memory_total_bytes=16 * GIB, base_memory_used_bytes=16 * GIB)]
    )
    async with scheduler_with(
        [only], clock, provider=provider, model_memory_bytes={"double": GIB}, telemetry_max_age_s=5
    ) as scheduler:
        with pytest.raises(Exception, match="short of memory: only"):
            await scheduler.infer(_request())
        clock.advance(6)  # the full reading is now stale: unknown, so no longer a veto
        await scheduler.infer(_request())
        assert only.calls == 1


async def test_spill_to_cpu_tier_only_when_the_deadline_demands_it() -> None:
    clock = ManualClock()
    gpu, cpu = FakeBackend("gpu", DOUBLE, clock=clock), FakeBackend("cpu", DOUBLE, clock=clock)
    gpu.call_s, cpu.call_s = 0.004, 0.030
    tiers = {"gpu": Tier.ACCELERATOR, "cpu": Tier.CPU}
    async with scheduler_with([gpu, cpu], clock, tier_of=lambda b: tiers[b.id]) as scheduler:
        for backend in (gpu, cpu):  # teach the estimator both speeds
            scheduler.estimator.observe(backend.id, "double", 1, backend.call_s)
        await scheduler.infer(_request(deadline=clock.now() + 1.0))
        assert (gpu.calls, cpu.calls) == (1, 0)
        # Fake a GPU queue of 100 ms: with 50 ms left only the CPU can make it.
        state = scheduler.fleet.get("gpu")
        assert state is not None
        state.load.set("double", state.load.calls("double"), 0.100)
        await scheduler.infer(_request(deadline=clock.now() + 0.050))
        assert (gpu.calls, cpu.calls) == (1, 1)
        assert scheduler.decisions[-1].verdict is Verdict.SPILLED
        with pytest.raises(DeadlineExceeded, match="no backend can finish in time"):
            await scheduler.infer(_request(deadline=clock.now() + 0.010))
        assert (gpu.calls, cpu.calls) == (1, 1)


def test_dns_endpoint_parsing_and_targets() -> None:
    assert parse_dns_endpoint("dns:///triton.ns.svc:8001") == ("triton.ns.svc", 8001)
    assert parse_dns_endpoint("10.0.0.1:8001") is None
    with pytest.raises(ValueError, match="dns:///name:port"):
        parse_dns_endpoint("dns:///no-port")
    assert address_url("10.1.2.3", 8001) == "10.1.2.3:8001"
    assert address_url("fd00::1", 8001) == "[fd00::1]:8001"


async def test_dns_members_become_backends_and_leave() -> None:
    answers = [["127.0.0.2", "127.0.0.3"], [], ["127.0.0.3", "127.0.0.4"]]

    async def resolver(host: str, port: int) -> list[str]:
        assert (host, port) == ("triton-headless", 8001)
        return answers.pop(0)

    group = DnsEndpointGroup("triton-headless", 8001, resolver)
    made: list[UrlBackend] = []

    def factory(target: str) -> Backend:
        made.append(UrlBackend(target, DOUBLE))
        return made[-1]

    scheduler = Scheduler(
        [],
        clock=ManualClock(),
        config=SchedulerConfig(health_interval_s=3600, dns_interval_s=3600, batching_layer="none"),
        dns_groups=[group],
        backend_factory=factory,
    )
    await scheduler.start()
    try:
        ids = lambda: sorted(b.id for b in scheduler.backends)  # noqa: E731
        assert ids() == ["triton@127.0.0.2:8001", "triton@127.0.0.3:8001"]
        assert scheduler.model_ready("double")
        await scheduler.fleet.refresh_dns()  # an empty answer keeps the members
        assert len(ids()) == 2
        await scheduler.fleet.refresh_dns()
        assert ids() == ["triton@127.0.0.3:8001", "triton@127.0.0.4:8001"]
        await scheduler.fleet.probe()  # the new member is discovered by a probe
        assert scheduler.is_healthy("triton@127.0.0.4:8001")
        await asyncio.gather(*(scheduler.infer(_request()) for _ in range(4)))
        assert sum(b.calls for b in made) == 4 and made[0].calls == 0  # .2 is gone
    finally:
        await scheduler.aclose()


async def test_backends_over_their_in_flight_limit_shed_with_a_retry_hint() -> None:
    from scheduler.errors import ResourceExhausted

    clock = ManualClock()
    only = FakeBackend("only", DOUBLE, clock=clock)
    only.gate = asyncio.Event()
    async with scheduler_with([only], clock, max_in_flight_per_backend=1) as scheduler:
        scheduler.estimator.observe("only", "double", 1, 0.040)
        first = asyncio.create_task(scheduler.infer(_request()))
        await asyncio.sleep(0)
        with pytest.raises(ResourceExhausted, match="over load limits: only") as info:
            await scheduler.infer(_request())
        assert info.value.retry_after_ms == 40
        only.gate.set()
        await first


def test_calls_in_flight_count_a_call_in_and_out_with_one_notification_each() -> None:
    load = CallsInFlight()
    told: list[tuple[str, int, float]] = []
    load.watch = lambda model, change, seconds: told.append((model, change, seconds))
    assert load.start("m", 0.25) == (0, 0.0)  # what was in flight before it
    assert load.start("m", 0.5) == (1, 0.25)
    load.end("m", 0.25)
    assert (load.calls("m"), load.seconds("m"), load.total()) == (1, 0.5, 1)
    load.end("m", 0.75)  # more than is left: the seconds stop at 0
    assert (load.calls("m"), load.seconds("m"), load.calls("other")) == (0, 0.0, 0)
    load.set("m", 3, 0.1)
    assert told == [("m", 1, 0.25), ("m", 1, 0.75), ("m", -1, 0.5), ("m", -1, 0.0), ("m", 3, 0.1)]
