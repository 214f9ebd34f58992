"""A batch is capped by its responses too: members whose model fixes its
outputs' shapes count the larger of their message and their response, so a
batch of small requests with large answers still fits the message limit."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.servicer import InferenceServicer
from scheduler.clock import MonotonicClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec
from tests.unit.test_scheduler import FakeBackend
from tests.unit.test_servicer_counts import Context

WIDTH = 1024  # FP32 outputs a row: 4 KiB back for 8 bytes sent
WIDEN = ModelSpec(
    "widen",
    (TensorSpec("X", DataType.FP32, (-1, 2)),),
    (TensorSpec("Y", DataType.FP32, (-1, WIDTH)),),
    max_batch_size=64,
    config={"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 2000}},
)
LIMIT = 256 * 1024  # max_message_bytes: a batch may hold 192 KiB of tensors (48 rows here)


class Widening(FakeBackend):
    """Answers each row with ``WIDTH`` floats, and notes every batch's rows."""

    def __init__(self) -> None:
        super().__init__("b1", WIDEN)
        self.batches: list[int] = []

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
        rows = len(inputs["X"])
        self.batches.append(rows)
        if self.gate is not None:
            await self.gate.wait()
        return {"Y": np.zeros((rows, WIDTH), np.float32)}


def _request() -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP32", shape=[1, 2])
    message = pb.ModelInferRequest(
        model_name="widen", inputs=[tensor], raw_input_contents=[bytes(8)]
    )
    return message.SerializeToString()


def test_a_model_with_fixed_outputs_knows_its_response_bytes_a_row() -> None:
    assert WIDEN.output_row_bytes() == 4 * WIDTH
    two = ModelSpec(
        "two",
        WIDEN.inputs,
        (*WIDEN.outputs, TensorSpec("Z", DataType.INT64, (-1, 3))),
        max_batch_size=8,
    )
    assert two.output_row_bytes() == 4 * WIDTH + 8 * 3
    assert two.output_row_bytes(["Z"]) == 24  # only the outputs asked for
    text = ModelSpec("t", WIDEN.inputs, (TensorSpec("S", DataType.BYTES, (-1, 1)),), 8)
    ragged = ModelSpec("r", WIDEN.inputs, (TensorSpec("Y", DataType.FP32, (-1, -1)),), 8)
    unbatched = ModelSpec("u", WIDEN.inputs, WIDEN.outputs)
    assert text.output_row_bytes() is None  # BYTES: no size until it is made
    assert ragged.output_row_bytes() is None
    assert unbatched.output_row_bytes() is None


async def test_small_requests_with_large_answers_are_batched_within_the_limit() -> None:
    backend = Widening()
    backend.gate = asyncio.Event()  # hold the first batch so that the rest queue up
    config = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        batching_layer="gateway",
        max_message_bytes=LIMIT,
    )
    scheduler = Scheduler([backend], clock=MonotonicClock(), config=config)
    await scheduler.start()
    try:
        servicer = InferenceServicer(
            scheduler, clock=MonotonicClock(), server_name="t", server_version="0"
        )
        calls = [
            asyncio.create_task(servicer.ModelInfer(_request(), Context(None)))  # type: ignore[arg-type]
            for _ in range(97)
        ]
        while sum(backend.batches) < 1:
            await asyncio.sleep(0.001)
        await asyncio.sleep(0.05)  # the rest arrive while the first batch runs
        backend.gate.set()
        replies = await asyncio.gather(*calls)
    finally:
        await scheduler.aclose()
    assert len(replies) == 97 and all(len(r) > 4 * WIDTH for r in replies)
    assert sum(backend.batches) == 97
    # 96 queued rows of 4 KiB answers: two batches of 48 (192 KiB each), where
    # counting the 8-byte messages alone made batches of 64 (256 KiB back).
    assert max(backend.batches) == 48, backend.batches
