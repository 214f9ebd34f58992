"""The servicer's side of sequence and decoupled models (``ModelSpec.stateful``).

Kept apart from ``gateway.servicer`` so that the common path pays one test
(``spec.stateful``) and nothing else for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from opentelemetry import trace

from gateway import codec
from gateway.metrics import GatewayMetrics
from scheduler.clock import Clock
from scheduler.dispatcher import Scheduler
from scheduler.errors import Unimplemented
from scheduler.request import InferRequest
from scheduler.sequences import SequenceId, sequence_of
from scheduler.spec import ModelSpec

#: Triton's own words for a unary call to a decoupled model (clients match on them).
DECOUPLED_UNARY = "ModelInfer RPC doesn't support models with decoupled transaction policy"


class StreamSink:
    """One ``ModelStreamInfer`` call as its requests see it: ``push`` queues an
    encoded ``ModelStreamInferResponse`` for the caller, and ``turns`` holds,
    per sequence id, the turn of the sequence's latest request on this stream."""

    __slots__ = ("push", "turns")

    def __init__(self, push: Callable[[bytes], None]) -> None:
        self.push = push
        self.turns: dict[SequenceId, asyncio.Future[None]] = {}


class StatefulRequests:
    """Serves the requests of sequence and decoupled models.

    A decoupled model answers on streams only: a unary call gets Triton's
    error (UNIMPLEMENTED); on a stream, each backend response is pushed to the
    caller as it arrives, and the time to the first response and between
    responses go to the metrics and, as events, to the request's span.

    A stream runs its requests concurrently, but a sequence's steps must reach
    its backend in the order the caller sent them (each step updates the
    state the next one reads): on one stream, each request of a sequence waits
    for the one before it (a chain of futures, one per sequence id), for all
    its responses when the model is also decoupled.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        clock: Clock,
        headers: codec.ResponseHeaders,
        metrics: GatewayMetrics | None,
    ) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._headers = headers
        self._metrics = metrics

    async def infer(
        self, request: InferRequest, spec: ModelSpec, stream: StreamSink | None
    ) -> bytes:
        if spec.decoupled and stream is None:
            raise Unimplemented(
                f"{DECOUPLED_UNARY}; model '{spec.name}' answers on ModelStreamInfer only"
            )
        sequence = sequence_of(request.parameters) if spec.sequence else None
        if stream is None or sequence is None:
            return await self._run(request, spec, stream)
        sequence_id = sequence[0]
        previous = stream.turns.get(sequence_id)
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        stream.turns[sequence_id] = turn
        try:
            if previous is not None:
                # Shielded: this request being cancelled must not cancel the turn
                # of the one before it.
                await asyncio.shield(previous)
            return await self._run(request, spec, stream)
        finally:
            if not turn.done():
                turn.set_result(None)
            if stream.turns.get(sequence_id) is turn:
                del stream.turns[sequence_id]

    async def _run(
        self, request: InferRequest, spec: ModelSpec, stream: StreamSink | None
    ) -> bytes:
        if stream is not None and spec.decoupled:
            await self._relay(request, spec, stream)
            return b""
        result = await self._scheduler.infer(request, spec)
        return codec.encode_response(result, spec, self._headers)

    async def _relay(self, request: InferRequest, spec: ModelSpec, stream: StreamSink) -> None:
        span = trace.get_current_span(request.trace_context)
        recording = span.is_recording()
        metrics = self._metrics
        start = last = self._clock.now()
        count = 0
        async for message in self._scheduler.stateful.stream(request, spec):
            now = self._clock.now()
            if metrics is not None:
                if count == 0:
                    metrics.stream_first_response(spec.name, now - start)
                else:
                    metrics.stream_response_gap(spec.name, now - last)
            if recording:
                span.add_event(
                    "first response" if count == 0 else "response",
                    {
                        "gateway.stream.response": count,
                        "gateway.stream.since_request_ms": (now - start) * 1e3,
                        "gateway.stream.since_previous_ms": (now - last) * 1e3,
                    },
                )
            last = now
            count += 1
            stream.push(message)
        if recording:
            span.add_event("stream end", {"gateway.stream.responses": count})
