"""Decoupled streams through the scheduler and the servicer's stream side: a
request's responses relayed in order, closing, and a decoupled sequence model,
with the fake backends of ``tests.unit.test_stateful``."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from gateway import codec
from gateway.metrics import GatewayMetrics
from gateway.stateful import StatefulRequests, StreamSink
from scheduler.clock import ManualClock
from scheduler.errors import SequenceLost, Unimplemented
from scheduler.request import InferRequest
from tests.unit.test_stateful import StatefulBackend, _step, _sum, running


def _repeat_request(trace_context: object = None) -> InferRequest:
    return InferRequest(
        model_name="repeat",
        inputs={"IN": np.arange(3, dtype=np.int32)},
        wire=b"request",
        trace_context=trace_context,  # type: ignore[arg-type]
    )


async def test_stream_relays_responses_in_order_with_metrics_and_span_events() -> None:
    clock = ManualClock()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    metrics = GatewayMetrics(CollectorRegistry())
    async with running(StatefulBackend("b1"), clock=clock) as scheduler:
        requests = StatefulRequests(scheduler, clock, codec.ResponseHeaders(), metrics)
        pushed: list[bytes] = []
        with provider.get_tracer("test").start_as_current_span("request") as span:
            context = trace.set_span_in_context(span)
            spec = scheduler.model("repeat")
            assert (
                await requests.infer(_repeat_request(context), spec, StreamSink(pushed.append))
                == b""
            )
            with pytest.raises(Unimplemented, match=r"^ModelInfer RPC doesn't support models"):
                await requests.infer(_repeat_request(), spec, None)
        assert pushed == [b"b1:0", b"b1:1", b"b1:2"]
        assert scheduler.stateful.streams.count("b1") == 0
    [finished] = [s for s in exporter.get_finished_spans() if s.name == "request"]
    names = [event.name for event in finished.events]
    assert names == ["first response", "response", "response", "stream end"]
    assert sum(metrics.first_response.values[("repeat",)][:-1]) == 1
    assert sum(metrics.response_gap.values[("repeat",)][:-1]) == 2


async def test_closing_the_callers_stream_closes_the_backends() -> None:
    clock = ManualClock()
    backend = StatefulBackend("b1")
    backend.count = 100
    async with running(backend, clock=clock) as scheduler:
        requests = StatefulRequests(scheduler, clock, codec.ResponseHeaders(), None)
        pushed: list[bytes] = []
        backend.gate = asyncio.Event()
        backend.gate.set()
        spec = scheduler.model("repeat")

        def push(message: bytes) -> None:
            pushed.append(message)
            if len(pushed) == 2 and backend.gate is not None:
                backend.gate.clear()  # the backend goes quiet: the stream stays open

        task = asyncio.create_task(requests.infer(_repeat_request(), spec, StreamSink(push)))
        while len(pushed) < 2:
            await asyncio.sleep(0)
        assert scheduler.stateful.streams.count("b1") == 1
        task.cancel()  # what the servicer does when the caller goes away
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert backend.streams_closed == 1
        assert scheduler.stateful.streams.count("b1") == 0


async def test_a_decoupled_sequence_model_streams_from_the_sequences_backend() -> None:
    clock = ManualClock()
    backends = {b.id: b for b in (StatefulBackend("b1"), StatefulBackend("b2"))}
    async with running(*backends.values(), clock=clock) as scheduler:
        spec = scheduler.model("asr")
        assert scheduler.batcher("asr") is None

        async def chunk(sid: int, start: bool = False, end: bool = False) -> set[bytes]:
            parameters: dict[str, bool | int | float | str] = {"sequence_id": sid}
            parameters.update({"sequence_start": start, "sequence_end": end})
            request = InferRequest(
                model_name="asr", inputs={}, parameters=parameters, wire=b"chunk"
            )
            return {m.split(b":")[0] async for m in scheduler.stateful.stream(request, spec)}

        homes = {}
        for sid in range(1, 11):
            [homes[sid]] = await chunk(sid, start=True)
            assert await chunk(sid) == {homes[sid]}
        assert set(homes.values()) == {b"b1", b"b2"}
        backends["b1"].down = True
        lost = next(sid for sid, home in homes.items() if home == b"b1")
        with pytest.raises(SequenceLost, match=f"state of sequence {lost} "):
            await chunk(lost)
        kept = next(sid for sid, home in homes.items() if home == b"b2")
        assert await chunk(kept, end=True) == {b"b2"}
        assert scheduler.live_sequences("b2") == list(homes.values()).count(b"b2") - 1


async def test_a_start_on_a_dead_backend_goes_to_the_next_one() -> None:
    clock = ManualClock()
    backends = {b.id: b for b in (StatefulBackend("b1"), StatefulBackend("b2"))}
    async with running(*backends.values(), clock=clock) as scheduler:
        # Not yet known to be down (its breaker is closed) when the starts come.
        backends["b1"].down = True
        for sid in range(1, 9):
            total, backend = await _sum(scheduler, _step(sid, sid, start=True))
            assert (total, backend) == (sid, "b2")
            assert await _sum(scheduler, _step(sid, 1)) == (sid + 1, "b2")
