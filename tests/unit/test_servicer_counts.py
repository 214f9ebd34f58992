"""The servicer's counts agree with what the caller saw: late answers, known models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.metrics import GatewayMetrics
from gateway.servicer import InferenceServicer
from gateway.telemetry import MODEL_INFER, Tracing
from scheduler.clock import ManualClock
from tests.unit.test_scheduler import DOUBLE, FakeBackend, running


class Context:
    """What the servicer reads of a grpc.aio servicer context (a test stand-in)."""

    def __init__(self, time_remaining_s: float | None) -> None:
        self._left = time_remaining_s
        self.trailers: tuple[tuple[str, str], ...] = ()

    def time_remaining(self) -> float | None:
        return self._left

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    def set_trailing_metadata(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self.trailers = metadata

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"{code}: {details}")


def _request(rows: int) -> bytes:
    x = np.ones((rows, 2), np.float32)
    tensor = pb.ModelInferRequest.InferInputTensor(name="X", datatype="FP32", shape=[rows, 2])
    message = pb.ModelInferRequest(
        model_name="double", inputs=[tensor], raw_input_contents=[x.tobytes()]
    )
    return message.SerializeToString()


def _servicer(scheduler: Any, clock: ManualClock) -> tuple[InferenceServicer, GatewayMetrics]:
    metrics = GatewayMetrics(CollectorRegistry())
    servicer = InferenceServicer(
        scheduler, clock=clock, server_name="t", server_version="0", metrics=metrics
    )
    return servicer, metrics


async def test_an_answer_after_the_deadline_counts_as_deadline_exceeded() -> None:
    clock = ManualClock()
    backend = FakeBackend("b1", DOUBLE, clock=clock)
    backend.call_s = 0.050  # finishes after the caller's 10 ms
    async with running(backend, clock=clock) as scheduler:
        servicer, metrics = _servicer(scheduler, clock)
        await servicer.ModelInfer(_request(1), Context(0.010))  # type: ignore[arg-type]
        await servicer.ModelInfer(_request(1), Context(None))  # type: ignore[arg-type]
    assert metrics.requests.values == {
        ("double", "DEADLINE_EXCEEDED", "b1"): 1.0,
        ("double", "OK", "b1"): 1.0,
    }


async def test_a_bad_request_of_a_served_model_is_labelled_with_it() -> None:
    clock = ManualClock()
    async with running(FakeBackend("b1", DOUBLE, clock=clock), clock=clock) as scheduler:
        servicer, metrics = _servicer(scheduler, clock)
        with pytest.raises(RuntimeError, match="INVALID_ARGUMENT"):
            await servicer.ModelInfer(_request(9), Context(None))  # type: ignore[arg-type]
    assert metrics.requests.values == {("double", "INVALID_ARGUMENT", "none"): 1.0}


class _Counted(Context):
    """A context that counts reads of its metadata (grpc builds it anew at each)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.reads = 0

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        self.reads += 1
        return (("user-agent", "grpc-go/1.0"),)

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50123"

    def code(self) -> None:
        return None


async def test_a_traced_model_infer_reads_its_calls_metadata_once() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    clock = ManualClock()
    async with running(FakeBackend("b1", DOUBLE, clock=clock), clock=clock) as scheduler:
        tracing = Tracing(provider)
        servicer = InferenceServicer(
            scheduler, clock=clock, server_name="t", server_version="0", tracing=tracing
        )
        call = _Counted()
        await tracing.traced(MODEL_INFER, servicer.ModelInfer)(_request(1), call)
    (server,) = [s for s in exporter.get_finished_spans() if s.name == MODEL_INFER]
    assert dict(server.attributes or {})["rpc.user_agent"] == "grpc-go/1.0"
    assert call.trailers == (("x-trace-id", format(server.context.trace_id, "032x")),)
    assert call.reads == 1  # by the SERVER span; the trailer and the request's context need none
