"""scheduler.dispatcher, registry and placement, driven through fake backends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest

from scheduler.backends.base import Backend, DecodedTensorsOnly, Device, DeviceKind
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.errors import (
    BackendError,
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    ModelNotFound,
    Unavailable,
)
from scheduler.health import BreakerConfig
from scheduler.placement import Tier
from scheduler.request import InferRequest, Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

VEC = TensorSpec("X", DataType.FP32, (-1, 2))
DOUBLE = ModelSpec("double", (VEC,), (dataclasses.replace(VEC, name="Y"),), max_batch_size=8)
TRIPLE = dataclasses.replace(DOUBLE, name="triple")


class FakeBackend(DecodedTensorsOnly):
    """Implements the Backend protocol; the test scripts its failures and timing."""

    def __init__(self, backend_id: str, *specs: ModelSpec, clock: ManualClock | None = None):
        self._id = backend_id
        self.specs = {s.name: s for s in specs}
        self.clock = clock
        self.up = True  # what health() and start() report
        self.errors: list[GatewayError] = []  # raised by the next infer calls, in order
        self.call_s = 0.0  # virtual time each call takes
        self.gate: asyncio.Event | None = None
        self.calls = 0
        self.starts = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def device(self) -> Device:
        return Device(DeviceKind.UNKNOWN, host=self._id)

    @property
    def tier(self) -> Tier:
        return Tier.ACCELERATOR

    @property
    def endpoint(self) -> str:
        return ""

    @property
    def workers(self) -> int:
        return 1

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return dict(self.specs)

    async def start(self) -> None:
        self.starts += 1
        if not self.up:
            raise BackendUnavailable(f"{self._id} is down", backend_id=self._id)

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
        self.calls += 1
        if self.clock is not None:
            self.clock.advance(self.call_s)
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return {"Y": inputs["X"] * 2}

    async def health(self) -> bool:
        return self.up

    async def aclose(self) -> None:
        return None


def _request(rows: int = 1, **kwargs: object) -> InferRequest:
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    return InferRequest(model_name="double", inputs={"X": x}, **kwargs)  # type: ignore[arg-type]


def _down(backend: FakeBackend) -> BackendUnavailable:
    return BackendUnavailable(f"{backend.id}: connection refused", backend_id=backend.id)


@contextlib.asynccontextmanager
async def running(*backends: Backend, clock: ManualClock | None = None) -> AsyncIterator[Scheduler]:
    config = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        batching_layer="none",  # these tests look at one call at a time
        breaker=BreakerConfig(failure_threshold=2, base_backoff_s=10.0),
    )
    scheduler = Scheduler(backends, clock=clock or ManualClock(), config=config)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()


def test_fake_backend_implements_the_protocol() -> None:
    assert isinstance(FakeBackend("b"), Backend)


# -- Scheduler.infer -------------------------------------------------------
def _chosen(scheduler: Scheduler) -> list[str | None]:
    return [d.backend_id for d in scheduler.decisions]


async def test_in_flight_work_steers_the_next_call_elsewhere() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    async with running(b1, b2) as scheduler:
        b1.gate = asyncio.Event()
        first = asyncio.create_task(scheduler.infer(_request(id="r1")))
        await asyncio.sleep(0)  # r1 is now in flight on b1
        second = await scheduler.infer(_request(id="r2"))
        assert second.id == "r2" and b2.calls == 1  # b1 is busy
        b1.gate.set()
        result = await first
        assert (result.id, result.model_name, result.model_version) == ("r1", "double", "1")
        np.testing.assert_array_equal(result.outputs["Y"], [[0.0, 2.0]])
        assert _chosen(scheduler) == ["b1", "b2"]
        assert "runner-up" in scheduler.decisions[-1].reason


async def test_a_decision_says_why_the_others_were_skipped() -> None:
    b1, b2, b3 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE), FakeBackend("b3", DOUBLE)
    b2.errors = [_down(b2)]
    async with running(b1, b2, b3) as scheduler:
        scheduler.set_drained("b1", True)
        await scheduler.infer(_request())  # b2 first (b1 drained), fails, b3 takes it
        retried = scheduler.decisions[-1]
        assert retried.backend_id == "b3"
        assert "b1 skipped: drained" in retried.reason and "b2 already tried" in retried.reason
        await scheduler.infer(_request())
        later = scheduler.decisions[-1].reason
        assert "b1 skipped: drained" in later and "b2 skipped: breaker open" in later


async def test_learned_service_time_prefers_the_faster_backend() -> None:
    clock = ManualClock()
    slow, fast = FakeBackend("slow", DOUBLE, clock=clock), FakeBackend("fast", DOUBLE, clock=clock)
    slow.call_s, fast.call_s = 0.050, 0.005
    async with running(slow, fast, clock=clock) as scheduler:
        for _ in range(6):
            await scheduler.infer(_request())
        # Both got tried once (unknown looks cheap), then the fast one wins.
        assert (slow.calls, fast.calls) == (1, 5)
        assert scheduler.estimator.predict("fast", "double", 1) == pytest.approx(0.005)


async def test_retry_on_backend_unavailable_ejects_it() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b1.errors = [_down(b1)]
    async with running(b1, b2) as scheduler:
        await scheduler.infer(_request())
        assert (b1.calls, b2.calls) == (1, 1)
        assert not scheduler.is_healthy("b1") and scheduler.is_healthy("b2")
        await scheduler.infer(_request())
        assert b1.calls == 1  # not sent to again while ejected


async def test_retryable_backend_error_retries_and_counts_against_it() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b1.errors = [BackendError("model unloaded", backend_id="b1", retryable=True)]
    async with running(b1, b2) as scheduler:
        await scheduler.infer(_request())
        assert (b1.calls, b2.calls) == (1, 1)
        assert scheduler.is_healthy("b1")  # one failure is under the threshold of 2


async def test_non_retryable_error_is_raised_as_is() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    error = BackendError("bad tensor", backend_id="b1", code="INVALID_ARGUMENT")
    b1.errors = [error]
    async with running(b1, b2) as scheduler:
        with pytest.raises(BackendError) as info:
            await scheduler.infer(_request())
        assert info.value is error
        assert b2.calls == 0 and scheduler.is_healthy("b1")


async def test_all_backends_down_is_unavailable_quickly() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b1.errors, b2.errors = [_down(b1)], [_down(b2)]
    async with running(b1, b2) as scheduler:
        with pytest.raises(BackendUnavailable, match="connection refused"):
            await scheduler.infer(_request())
        assert not scheduler.model_ready("double")
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await scheduler.infer(_request())
        assert time.monotonic() - started < 0.5
        assert info.value.code == "UNAVAILABLE"
        assert info.value.message.startswith("'double' version 1 is not at ready state: ")
        assert "no backend can take it now (unavailable: b1, b2)" in info.value.message
        assert (b1.calls, b2.calls) == (1, 1)


async def test_deadline_already_past_fails_fast() -> None:
    clock = ManualClock(100.0)
    b1 = FakeBackend("b1", DOUBLE)
    async with running(b1, clock=clock) as scheduler:
        with pytest.raises(DeadlineExceeded, match="no backend can finish in time"):
            await scheduler.infer(_request(deadline=99.0))
        assert b1.calls == 0


async def test_no_retry_once_the_deadline_cannot_be_met() -> None:
    clock = ManualClock()
    b1, b2 = FakeBackend("b1", DOUBLE, clock=clock), FakeBackend("b2", DOUBLE)
    b1.call_s, b1.errors = 2.0, [_down(b1)]
    async with running(b1, b2, clock=clock) as scheduler:
        with pytest.raises(BackendUnavailable):
            await scheduler.infer(_request(deadline=1.0))
        assert b2.calls == 0


async def test_validation_happens_before_any_backend_call() -> None:
    b1 = FakeBackend("b1", DOUBLE)
    async with running(b1) as scheduler:
        with pytest.raises(ModelNotFound):
            await scheduler.infer(InferRequest(model_name="nope", inputs={}))
        with pytest.raises(InvalidArgument, match="no output named 'Z'"):
            await scheduler.infer(_request(requested_outputs=("Z",)))
        with pytest.raises(InvalidArgument, match=r"batch-size must be <= 8 .*is 9"):
            await scheduler.infer(_request(rows=9))
        assert b1.calls == 0


async def test_probe_readmits_after_backoff_and_rediscovers() -> None:
    clock = ManualClock()
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b2.up = False  # down at start
    async with running(b1, b2, clock=clock) as scheduler:
        assert not scheduler.is_healthy("b2")
        b1.errors = [_down(b1)]
        with pytest.raises(BackendUnavailable):
            await scheduler.infer(_request())
        assert not scheduler.is_healthy("b1")
        b2.up = True
        b2.specs["triple"] = TRIPLE
        await scheduler.fleet.probe()  # backoff not served yet: nobody is probed
        assert not scheduler.is_healthy("b1") and not scheduler.is_healthy("b2")
        clock.advance(10.0)
        await scheduler.fleet.probe()
        assert scheduler.is_healthy("b1") and scheduler.is_healthy("b2")
        assert [s.name for s in scheduler.models()] == ["double", "triple"]
        assert scheduler.model_ready("triple")
        b1.up = False
        await scheduler.fleet.probe()
        assert not scheduler.is_healthy("b1")
        await scheduler.infer(_request())
        assert b2.calls == 1


async def test_unknown_model_while_a_backend_never_answered_is_unavailable() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2")  # like Triton: no models until asked
    b2.up = False
    async with running(b1, b2) as scheduler:
        with pytest.raises(Unavailable, match="b2 are unreachable"):
            await scheduler.infer(InferRequest(model_name="triple", inputs={}))


async def test_stats_record_successes_failures_and_batches() -> None:
    clock = ManualClock()
    b1 = FakeBackend("b1", DOUBLE, clock=clock)
    b1.call_s = 0.25
    async with running(b1, clock=clock) as scheduler:
        await scheduler.infer(_request(rows=3))
        await scheduler.infer(_request(rows=2))
        b1.errors = [BackendError("kernel crashed", backend_id="b1")]
        with pytest.raises(BackendError):
            await scheduler.infer(_request(rows=4))
        stats = scheduler.stats("double")
        assert (stats.success.count, stats.fail.count) == (2, 1)
        assert (stats.inference_count, stats.execution_count) == (5, 2)
        assert stats.compute_infer.count == 2 and stats.compute_infer.ns == 500_000_000
        assert stats.success.ns == 500_000_000 and stats.fail.ns == 250_000_000
        assert stats.queue.count == 2 and stats.queue.ns == 0
        assert dict(stats.batch_sizes) == {3: 1, 2: 1}
        assert stats.last_inference_ms > 0


async def test_batching_through_the_scheduler_merges_concurrent_callers() -> None:
    b1 = FakeBackend("b1", DOUBLE)
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler([b1], config=config)
    await scheduler.start()
    try:
        b1.gate = asyncio.Event()
        first = asyncio.create_task(scheduler.infer(_request(id="first")))
        await asyncio.sleep(0.01)  # "first" is in the backend, which is held shut
        rest = [asyncio.create_task(scheduler.infer(_request(rows=1, id=str(i)))) for i in range(6)]
        await asyncio.sleep(0.01)
        b1.gate.set()
        results = await asyncio.gather(first, *rest)
        assert [r.id for r in results] == ["first", *map(str, range(6))]
        assert all(r.outputs["Y"].shape == (1, 2) for r in results)
        assert b1.calls < 7  # callers were merged into fewer backend calls
        batcher = scheduler.batcher("double")
        assert batcher is not None and sum(batcher.counters.batch_sizes.values()) == b1.calls
    finally:
        await scheduler.aclose()


async def test_a_model_rediscovered_with_another_signature_gets_a_new_batcher() -> None:
    b1 = FakeBackend("b1", DOUBLE)
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler([b1], config=config)
    await scheduler.start()
    try:
        await scheduler.infer(_request())
        first = scheduler.batcher("double")
        assert first is not None and first.spec.max_batch_size == 8
        b1.specs["double"] = dataclasses.replace(DOUBLE, max_batch_size=4)  # reloaded
        await scheduler.fleet.rediscover()
        await scheduler.infer(_request())
        second = scheduler.batcher("double")
        assert second is not None and second is not first and second.spec.max_batch_size == 4
    finally:
        await scheduler.aclose()
