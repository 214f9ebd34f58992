"""ModelStreamInfer's lean path: messages read together on several streams run
together, and every message still gets its own answer on its own stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.metrics import GatewayMetrics
from gateway.servicer import InferenceServicer
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from tests.unit.test_scheduler import DOUBLE, FakeBackend
from tests.unit.test_servicer_counts import Context

pytestmark = pytest.mark.timeout(10)


def _message(value: float, request_id: str, model: str = "double", rows: int = 1) -> bytes:
    x = np.full((rows, 2), value, np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP32", shape=[rows, 2])
    return pb.ModelInferRequest(
        model_name=model, id=request_id, inputs=[tensor], raw_input_contents=[x.tobytes()]
    ).SerializeToString()


async def _messages(items: list[bytes]) -> AsyncIterator[bytes]:
    for item in items:  # no pause between them: as messages already arrived
        yield item


async def _stream(
    servicer: InferenceServicer, items: list[bytes]
) -> list[pb.ModelStreamInferResponse]:
    call = servicer.ModelStreamInfer(_messages(items), Context(None))  # type: ignore[arg-type]
    return [pb.ModelStreamInferResponse.FromString(raw) async for raw in call]


async def test_streams_share_batches_and_each_message_gets_its_own_answer() -> None:
    clock = ManualClock()
    backend = FakeBackend("b1", DOUBLE, clock=clock)
    scheduler = Scheduler([backend], clock=clock, config=SchedulerConfig(health_interval_s=3600))
    await scheduler.start()
    metrics = GatewayMetrics(CollectorRegistry())
    servicer = InferenceServicer(
        scheduler, clock=clock, server_name="t", server_version="0", metrics=metrics
    )
    streams = [[_message(10 * s + i, f"s{s}-{i}") for i in range(10)] for s in range(3)]
    streams[1][4] = b"\xff\xff\xff"  # not a ModelInferRequest
    streams[2][6] = _message(1.0, "s2-6", model="no_such_model")
    streams[2][7] = _message(1.0, "s2-7", rows=9)  # over the model's max_batch_size
    try:
        answers = await asyncio.gather(*(_stream(servicer, items) for items in streams))
    finally:
        await scheduler.aclose()
    for number, responses in enumerate(answers):
        assert len(responses) == 10  # one answer per message; the stream went on
        good = {r.infer_response.id: r for r in responses if not r.error_message}
        for i in range(10):
            if (number, i) in ((1, 4), (2, 6), (2, 7)):
                continue
            response = good[f"s{number}-{i}"]
            y = np.frombuffer(response.infer_response.raw_output_contents[0], np.float32)
            assert y.tolist() == [2.0 * (10 * number + i)] * 2
    errors = [r for responses in answers for r in responses if r.error_message]
    assert len(errors) == 3
    assert {r.infer_response.id for r in errors} == {"", "s2-6", "s2-7"}
    # 27 good messages, read in one turn: a few backend calls, not one each.
    assert backend.calls < 27 / 2
    batcher = scheduler.batcher("double")
    assert batcher is not None and batcher.counters.batches_by_trigger["stream"] >= 1
    assert metrics.requests.values[("double", "OK", "b1")] == 27.0
    assert servicer.door.in_flight == 0 and servicer.door.bytes_in_flight == 0


class _CountingContext(Context):
    """A call whose deadline and metadata reads are counted (each is a call into grpc)."""

    def __init__(self, time_remaining_s: float | None) -> None:
        super().__init__(time_remaining_s)
        self.reads = 0

    def time_remaining(self) -> float | None:
        self.reads += 1
        return super().time_remaining()

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.reads += 1
        return (("traceparent", f"00-{'ab' * 16}-{'cd' * 8}-01"),)


async def test_a_stream_reads_its_deadline_and_metadata_once_and_each_message_keeps_them() -> None:
    clock = ManualClock()
    scheduler = Scheduler(
        [FakeBackend("b1", DOUBLE, clock=clock)],
        clock=clock,
        config=SchedulerConfig(health_interval_s=3600),
    )
    await scheduler.start()
    servicer = InferenceServicer(scheduler, clock=clock, server_name="t", server_version="0")
    items = [_message(i, f"m{i}") for i in range(20)]
    live, expired = _CountingContext(5.0), _CountingContext(-1.0)
    try:
        answers = [
            [pb.ModelStreamInferResponse.FromString(raw) async for raw in call]
            for call in (
                servicer.ModelStreamInfer(_messages(items), live),  # type: ignore[arg-type]
                servicer.ModelStreamInfer(_messages(items), expired),  # type: ignore[arg-type]
            )
        ]
    finally:
        await scheduler.aclose()
    assert [r.infer_response.id for r in answers[0]] == [f"m{i}" for i in range(20)]
    assert not any(r.error_message for r in answers[0])
    # The stream's deadline bounds every one of its messages: here, already past.
    assert all("deadline" in r.error_message for r in answers[1]) and len(answers[1]) == 20
    assert live.reads <= 3 and expired.reads <= 3  # per stream, not per message
