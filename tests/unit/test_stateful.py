"""Sequence affinity through the scheduler, with fake backends that implement
the real protocol (decoupled streams: ``tests.unit.test_decoupled``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Mapping, Sequence

import numpy as np
import pytest

from scheduler.backends.base import Backend, DecodedTensorsOnly, Device, DeviceKind
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.errors import BackendUnavailable, SequenceLost
from scheduler.health import BreakerConfig
from scheduler.placement import Tier, place
from scheduler.request import InferRequest, Parameters
from scheduler.sequences import SequenceTable, rendezvous, sequence_of
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec
from scheduler.streams import OpenStreams, stream_load_s

VEC = TensorSpec("X", DataType.INT32, (-1, 1))
SUM = ModelSpec(
    "sum",
    (VEC,),
    (dataclasses.replace(VEC, name="Y"),),
    max_batch_size=8,
    config={"sequence_batching": {"max_sequence_idle_microseconds": "2000000"}},
)
REPEAT = ModelSpec(
    "repeat",
    (TensorSpec("IN", DataType.INT32, (-1,)),),
    (TensorSpec("OUT", DataType.INT32, (1,)),),
    config={"model_transaction_policy": {"decoupled": True}},
)
#: Both at once, as streaming speech recognition is.
ASR = dataclasses.replace(
    REPEAT,
    name="asr",
    config={"model_transaction_policy": {"decoupled": True}, "sequence_batching": {}},
)


class StatefulBackend(DecodedTensorsOnly):
    """Keeps running sums per sequence id, as a sequence model does inside one
    server, and streams ``count`` responses for a decoupled request."""

    forwards_wire = True

    def __init__(self, backend_id: str) -> None:
        self._id = backend_id
        self.sums: dict[object, int] = {}
        self.down = False
        self.count = 3
        self.gate: asyncio.Event | None = None
        self.streams_closed = 0

    @property
    def id(self) -> str:
        return self._id

    @property
    def device(self) -> Device:
        return Device(DeviceKind.GPU, host=self._id)

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
        return {"sum": SUM, "repeat": REPEAT, "asr": ASR}

    async def start(self) -> None:
        return None

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
        if self.down:
            raise BackendUnavailable(f"{self._id}: connection refused", backend_id=self._id)
        params = parameters or {}
        sid = params["sequence_id"]
        if not params.get("sequence_start") and sid not in self.sums:
            raise AssertionError(f"{self._id} never saw the start of sequence {sid!r}")
        base = 0 if params.get("sequence_start") else self.sums[sid]
        self.sums[sid] = base + int(inputs["X"].sum())
        return {"Y": np.array([[self.sums[sid]]], np.int32)}

    async def stream_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        if self.down:
            raise BackendUnavailable(f"{self._id}: connection refused", backend_id=self._id)
        try:
            for index in range(self.count):
                if self.gate is not None:
                    await self.gate.wait()
                yield f"{self._id}:{index}".encode()
        finally:
            self.streams_closed += 1

    async def health(self) -> bool:
        return not self.down

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def running(*backends: Backend, clock: ManualClock) -> AsyncIterator[Scheduler]:
    config = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        breaker=BreakerConfig(failure_threshold=1, base_backoff_s=10.0),
    )
    scheduler = Scheduler(backends, clock=clock, config=config)
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.aclose()


def _step(sid: int | str, value: int, start: bool = False, end: bool = False) -> InferRequest:
    parameters: dict[str, bool | int | float | str] = {"sequence_id": sid}
    if start:
        parameters["sequence_start"] = True
    if end:
        parameters["sequence_end"] = True
    x = np.array([[value]], np.int32)
    return InferRequest(model_name="sum", inputs={"X": x}, parameters=parameters)


async def _sum(scheduler: Scheduler, request: InferRequest) -> tuple[int, str]:
    result = await scheduler.infer(request)
    return int(result.outputs["Y"][0][0]), result.backend_id


# -- pure parts ----------------------------------------------------------------------------------


def test_spec_flags_come_from_the_model_config() -> None:
    assert SUM.sequence and SUM.stateful and not SUM.decoupled
    assert SUM.max_sequence_idle_s == 2.0
    assert REPEAT.decoupled and REPEAT.stateful and not REPEAT.sequence
    plain = ModelSpec("plain", (VEC,), (VEC,))
    assert not plain.stateful and plain.max_sequence_idle_s == 1.0


def test_sequence_of_reads_triton_parameters() -> None:
    assert sequence_of({}) is None
    assert sequence_of({"sequence_id": 0}) is None  # Triton's "no sequence"
    assert sequence_of({"sequence_id": ""}) is None
    assert sequence_of({"sequence_id": 7, "sequence_start": True}) == (7, True, False)
    assert sequence_of({"sequence_id": "a", "sequence_end": True}) == ("a", False, True)


def test_rendezvous_is_stable_and_moves_few_sequences() -> None:
    backends = ["b1", "b2", "b3"]
    before = {sid: rendezvous("m", sid, backends) for sid in range(300)}
    assert before == {sid: rendezvous("m", sid, list(reversed(backends))) for sid in range(300)}
    assert set(before.values()) == set(backends)
    after = {sid: rendezvous("m", sid, [*backends, "b4"]) for sid in range(300)}
    moved = [sid for sid in before if before[sid] != after[sid]]
    assert all(after[sid] == "b4" for sid in moved)  # only to the new backend
    assert rendezvous("m", 5, backends) is not None and rendezvous("m", 5, []) is None


def test_table_keeps_a_sequence_where_it_started_until_it_ends_or_idles_out() -> None:
    table = SequenceTable()
    serving = ["b1", "b2"]

    def route(sid: int, start: bool, now: float, takes_new: set[str] | None = None) -> str:
        return table.route(
            "m",
            sid,
            start,
            serving=serving,
            takes_new=set(serving) if takes_new is None else takes_new,
            alive=set(serving),
            idle_s=1.0,
            now=now,
        )

    first = route(1, True, 0.0)
    other = "b2" if first == "b1" else "b1"
    # Drained (no new work) after the start: the sequence stays.
    assert route(1, False, 0.5, takes_new={other}) == first
    assert table.live_on(first, 0.5) == 1
    assert table.live_on(first, 1.6) == 0  # idled out
    table.finished("m", 1)
    assert len(table) == 0 and table.live_on(first, 0.5) == 0
    # A new start avoids a backend that takes no new work.
    assert route(2, True, 2.0, takes_new={other}) == other


def test_streams_weigh_by_count_and_age() -> None:
    assert stream_load_s([], 10.0) == 0.0
    assert stream_load_s([10.0], 10.0) == 1.0
    assert stream_load_s([0.0], 30.0) == 2.0  # a 30 s old stream weighs double
    assert stream_load_s([0.0], 1e6) == stream_load_s([0.0], 120.0)  # capped
    streams = OpenStreams()
    token = streams.open("b1", 0.0)
    streams.open("b2", 9.0)
    assert streams.count("b1") == 1 and streams.load_s("b1", 10.0) > streams.load_s("b2", 10.0)
    streams.close("b1", token)
    assert streams.count("b1") == 0


def test_placement_of_a_stream_avoids_the_backend_with_older_streams() -> None:
    from scheduler.placement import Candidates

    ones = np.ones(2, np.bool_)
    candidates = Candidates(
        ("b1", "b2"),
        np.full(2, int(Tier.ACCELERATOR), np.int8),
        ones,
        ones,
        ones,
        np.zeros(2),
        np.full(2, 0.01),
        np.zeros(2),
    )
    streams = OpenStreams()
    streams.open("b1", 0.0)  # old
    streams.open("b2", 59.0)  # young
    decision = place(streams.weigh(candidates, 60.0, [1, 1]), now=60.0, deadline=None)
    assert decision.backend_id == "b2"


# -- sequences through the scheduler -----------------------------------------------------------


async def test_sequence_steps_stay_on_one_backend_and_are_never_batched() -> None:
    clock = ManualClock()
    async with running(StatefulBackend("b1"), StatefulBackend("b2"), clock=clock) as scheduler:
        for sid in (1, 2, 3, 4, "x", "y"):
            total, first = await _sum(scheduler, _step(sid, 1, start=True))
            for step in range(2, 6):
                total, backend = await _sum(scheduler, _step(sid, step, end=step == 5))
                assert backend == first
            assert total == 15
        assert scheduler.batcher("sum") is None
        assert len(scheduler.stateful.sequences) == 0  # all ended


async def test_a_replica_without_the_record_finds_the_same_backend() -> None:
    clock = ManualClock()
    b1, b2 = StatefulBackend("b1"), StatefulBackend("b2")
    async with (
        running(b1, b2, clock=clock) as one,
        running(b1, b2, clock=clock) as other,
    ):
        for sid in range(20):
            _, started = await _sum(one, _step(sid, 1, start=True))
            total, continued = await _sum(other, _step(sid, 2))
            assert (total, continued) == (3, started)


async def test_draining_lets_live_sequences_finish_there() -> None:
    clock = ManualClock()
    async with running(StatefulBackend("b1"), StatefulBackend("b2"), clock=clock) as scheduler:
        _, home = await _sum(scheduler, _step(9, 1, start=True))
        scheduler.set_drained(home, True)
        assert scheduler.live_sequences(home) == 1
        total, backend = await _sum(scheduler, _step(9, 2))
        assert (total, backend) == (3, home)
        _, elsewhere = await _sum(scheduler, _step(10, 1, start=True))
        assert elsewhere != home  # new sequences avoid the drained backend
        await _sum(scheduler, _step(9, 3, end=True))
        assert scheduler.live_sequences(home) == 0  # drained and empty
        _, _ = await _sum(scheduler, _step(11, 1, start=True))
        clock.advance(2.5)  # longer than the model's max_sequence_idle_microseconds
        assert scheduler.live_sequences(elsewhere) == 0


async def test_a_dead_backend_loses_its_sequences_and_never_restarts_them_elsewhere() -> None:
    clock = ManualClock()
    backends = {b.id: b for b in (StatefulBackend("b1"), StatefulBackend("b2"))}
    async with running(*backends.values(), clock=clock) as scheduler:
        _, home = await _sum(scheduler, _step(5, 1, start=True))
        backends[home].down = True
        with pytest.raises(
            SequenceLost, match="state of sequence 5 of model 'sum' is lost"
        ) as lost:
            await scheduler.infer(_step(5, 2))
        assert lost.value.code == "ABORTED"
        assert home not in lost.value.message  # no backend address in a caller's status
        with pytest.raises(SequenceLost):  # the next step too
            await scheduler.infer(_step(5, 3))
        total, backend = await _sum(scheduler, _step(5, 7, start=True))
        assert (total, backend != home) == (7, True)
