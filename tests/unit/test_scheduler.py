"""scheduler.dispatcher, registry and placement, driven through fake backends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping

import numpy as np
import pytest

from scheduler.backends.base import Backend, Device, DeviceKind
from scheduler.clock import ManualClock
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
from scheduler.placement import Candidate, choose
from scheduler.registry import ModelRegistry
from scheduler.request import InferRequest, Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

VEC = TensorSpec("X", DataType.FP32, (-1, 2))
DOUBLE = ModelSpec("double", (VEC,), (dataclasses.replace(VEC, name="Y"),), max_batch_size=8)
TRIPLE = dataclasses.replace(DOUBLE, name="triple")


class FakeBackend:
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
    scheduler = Scheduler(backends, clock=clock or ManualClock(), health_interval_s=3600)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()


def test_fake_backend_implements_the_protocol() -> None:
    assert isinstance(FakeBackend("b"), Backend)


# -- placement -------------------------------------------------------------
def test_placement_least_outstanding_then_order() -> None:
    decision = choose(
        [Candidate("a", True, 3, 0), Candidate("b", True, 1, 2), Candidate("c", True, 1, 1)], 5.0
    )
    assert decision is not None
    assert (decision.backend_id, decision.runner_up, decision.decided_at) == ("c", "b", 5.0)
    assert decision.reason == "least outstanding: c has 1, runner-up b has 1"


def test_placement_skips_unhealthy_and_may_find_none() -> None:
    only = choose([Candidate("a", False, 0, 0), Candidate("b", True, 9, 1)], 0.0)
    assert only is not None and (only.backend_id, only.runner_up) == ("b", None)
    assert choose([Candidate("a", False, 0, 0)], 0.0) is None
    assert choose([], 0.0) is None


# -- registry --------------------------------------------------------------
def test_registry_merges_versions_and_routes_by_version() -> None:
    b1 = FakeBackend("b1", dataclasses.replace(DOUBLE, versions=("10", "2")))
    b2 = FakeBackend("b2", dataclasses.replace(DOUBLE, versions=("1", "2")), TRIPLE)
    registry = ModelRegistry()
    registry.rebuild([b1, b2])
    assert [s.name for s in registry.specs()] == ["double", "triple"]
    spec, backends = registry.resolve("double")
    assert spec.versions == ("1", "2", "10")
    assert [b.id for b in backends] == ["b1", "b2"]
    assert [b.id for b in registry.resolve("double", "10")[1]] == ["b1"]
    assert [b.id for b in registry.resolve("double", "1")[1]] == ["b2"]


def test_registry_refuses_a_different_signature() -> None:
    wider = dataclasses.replace(DOUBLE, inputs=(dataclasses.replace(VEC, shape=(-1, 3)),))
    unbatched = dataclasses.replace(DOUBLE, max_batch_size=0)
    registry = ModelRegistry()
    registry.rebuild(
        [FakeBackend("b1", DOUBLE), FakeBackend("b2", wider), FakeBackend("b3", unbatched)]
    )
    spec, backends = registry.resolve("double")
    assert spec == DOUBLE
    assert [b.id for b in backends] == ["b1"]


def test_registry_not_found_messages() -> None:
    registry = ModelRegistry()
    with pytest.raises(ModelNotFound, match="unknown model 'double'; models served: none"):
        registry.resolve("double")
    registry.rebuild([FakeBackend("b1", DOUBLE, TRIPLE)])
    with pytest.raises(
        ModelNotFound, match="unknown model 'dobule'; models served: double, triple"
    ):
        registry.resolve("dobule")
    with pytest.raises(ModelNotFound) as info:
        registry.resolve("double", "3")
    assert info.value.message == "model 'double' has no version '3'; versions: 1"
    assert info.value.code == "NOT_FOUND"


# -- Scheduler.infer -------------------------------------------------------
async def test_infer_routes_and_balances_outstanding_calls() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    async with running(b1, b2) as scheduler:
        b1.gate = asyncio.Event()
        first = asyncio.create_task(scheduler.infer(_request(id="r1")))
        await asyncio.sleep(0)  # r1 is now outstanding on b1
        second = await scheduler.infer(_request(id="r2"))
        assert second.backend_id == "b2"  # b1 is busy
        b1.gate.set()
        result = await first
        assert (result.backend_id, result.id, result.model_name, result.model_version) == (
            "b1",
            "r1",
            "double",
            "1",
        )
        np.testing.assert_array_equal(result.outputs["Y"], [[0.0, 2.0]])
        assert (await scheduler.infer(_request())).backend_id == "b1"  # nothing outstanding
        assert [d.backend_id for d in scheduler.decisions] == ["b1", "b2", "b1"]
        assert "runner-up b2" in scheduler.decisions[-1].reason


async def test_retry_on_backend_unavailable_marks_it_down() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b1.errors = [_down(b1)]
    async with running(b1, b2) as scheduler:
        result = await scheduler.infer(_request())
        assert result.backend_id == "b2"
        assert (b1.calls, b2.calls) == (1, 1)
        assert not scheduler.is_healthy("b1") and scheduler.is_healthy("b2")
        assert (await scheduler.infer(_request())).backend_id == "b2"
        assert b1.calls == 1  # not sent to again while down


async def test_retryable_backend_error_retries_without_marking_down() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b1.errors = [BackendError("model unloaded", backend_id="b1", retryable=True)]
    async with running(b1, b2) as scheduler:
        assert (await scheduler.infer(_request())).backend_id == "b2"
        assert scheduler.is_healthy("b1")


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
        with pytest.raises(BackendUnavailable, match="b2: connection refused"):
            await scheduler.infer(_request())
        assert not scheduler.model_ready("double")
        started = time.monotonic()
        with pytest.raises(Unavailable) as info:
            await scheduler.infer(_request())
        assert time.monotonic() - started < 0.5
        assert info.value.code == "UNAVAILABLE"
        assert "no healthy backend can serve model 'double'" in info.value.message
        assert "b1, b2" in info.value.message
        assert (b1.calls, b2.calls) == (1, 1)


async def test_deadline_already_past() -> None:
    clock = ManualClock(100.0)
    b1 = FakeBackend("b1", DOUBLE)
    async with running(b1, clock=clock) as scheduler:
        with pytest.raises(DeadlineExceeded, match="before model 'double' could run"):
            await scheduler.infer(_request(deadline=99.0))
        assert b1.calls == 0


async def test_deadline_passes_during_a_failed_attempt() -> None:
    clock = ManualClock()
    b1, b2 = FakeBackend("b1", DOUBLE, clock=clock), FakeBackend("b2", DOUBLE)
    b1.call_s, b1.errors = 2.0, [_down(b1)]
    async with running(b1, b2, clock=clock) as scheduler:
        with pytest.raises(DeadlineExceeded, match=r"\(tried b1\)"):
            await scheduler.infer(_request(deadline=1.0))
        assert b2.calls == 0


async def test_validation_happens_before_any_backend_call() -> None:
    b1 = FakeBackend("b1", DOUBLE)
    async with running(b1) as scheduler:
        with pytest.raises(ModelNotFound):
            await scheduler.infer(InferRequest(model_name="nope", inputs={}))
        with pytest.raises(InvalidArgument, match="no output named 'Z'"):
            await scheduler.infer(_request(requested_outputs=("Z",)))
        with pytest.raises(InvalidArgument, match="batch size 9"):
            await scheduler.infer(_request(rows=9))
        assert b1.calls == 0


async def test_check_health_readmits_and_rediscovers() -> None:
    b1, b2 = FakeBackend("b1", DOUBLE), FakeBackend("b2", DOUBLE)
    b2.up = False  # down at start: its models are unknown
    async with running(b1, b2) as scheduler:
        assert not scheduler.is_healthy("b2")
        b1.errors = [_down(b1)]
        with pytest.raises(BackendUnavailable):
            await scheduler.infer(_request())  # b1 is the only backend for 'double' yet
        assert not scheduler.is_healthy("b1")
        b2.up = True
        b2.specs["triple"] = TRIPLE
        await scheduler.check_health()
        assert scheduler.is_healthy("b1") and scheduler.is_healthy("b2")
        assert (b1.starts, b2.starts) == (2, 2)
        assert [s.name for s in scheduler.models()] == ["double", "triple"]
        assert scheduler.model_ready("triple")
        b1.up = False
        await scheduler.check_health()
        assert not scheduler.is_healthy("b1")
        assert (await scheduler.infer(_request())).backend_id == "b2"


async def test_stats_record_successes_and_failures() -> None:
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
        assert stats.queue.ns == 0
        assert stats.last_inference_ms > 0
