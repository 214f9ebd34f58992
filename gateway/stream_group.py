"""The lean path of ``ModelStreamInfer``: messages that arrive together run together.

grpc hands a stream's reader one message per turn of the event loop (each
read waits for its own completion event from grpc's poller), so a stream alone
never has two messages waiting at once; but many streams busy at once each
deliver one in the same turn (under the suite's load of 16 streams, about ten
a turn were counted). What they ask of one model then goes to the scheduler as
one group (``scheduler.arrived_together``), and one placement and backend call
serve them all where the model's batcher would have run each alone at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.context import Context as OtelContext

from gateway import codec
from gateway.front_door import SHUTTING_DOWN, FrontDoor
from gateway.metrics import GatewayMetrics
from gateway.request_log import RequestLog
from gateway.status import internal_error, short
from gateway.stream_rpc import Decoded, header_of
from gateway.telemetry import Tracing, caller_trace_id
from scheduler.arrived_together import infer_group
from scheduler.clock import Clock
from scheduler.dispatcher import Scheduler
from scheduler.errors import GatewayError, Unavailable
from scheduler.request import InferRequest, InferResult
from scheduler.spec import ModelSpec

Context = grpc.aio.ServicerContext[Any, Any]
#: Takes a request's final ``ModelStreamInferResponse``.
Answer = Callable[[bytes], None]
#: Decodes a message (``InferenceServicer._decode``: data, context, received_ns
#: and what its stream's messages share); raises GatewayError.
Decode = Callable[[bytes, Context, int, "StreamCall"], Decoded]


@dataclass(slots=True)  # not frozen: one is made per unary call, and frozen init is slow
class StreamCall:
    """What every message of one stream (or a unary call) shares, read from its
    call once: each read of the call's deadline or metadata is a call into
    grpc, which would otherwise cost every message as much as its decoding."""

    context: Context
    #: The stream's deadline (monotonic), the bound of each of its messages.
    deadline: float | None
    #: The caller's ``traceparent`` context (tracing is off on this path).
    trace_context: OtelContext | None
    #: The caller's trace id, for the request log ("" when it sent none).
    trace_id: str


@dataclass(slots=True)
class _Member:
    """A message waiting for (or in) its group, and what its ending needs."""

    data: bytes
    request: InferRequest
    call: StreamCall
    answer: Answer
    start: float


class StreamGroups:
    """Gathers the messages of every stream of the gateway by model, and runs
    each model's gathered messages as one group once the event loop's current
    turn is over.

    ``admit`` is called by a stream's reader for each message, in the reader's
    own task, with no task made per message: it decodes the message and joins
    it to its model's group; the first message of a turn schedules the flush
    (``call_soon``), so messages read in one turn share a group, and a message
    never waits for a timer. A flush starts one task per model group. Each
    member's response (or its own error response: one bad result does not
    fail the others) goes back through its ``answer``, with the metrics and
    request log of a unary call.

    A message that cannot be decoded, or that the front door refuses, is left
    to the stream's usual path (``admit`` returns False), which answers its
    error; a request of a sequence or decoupled model goes there decoded
    (``admit`` returns it), since its order and its responses belong to its
    stream. Callers use this path only with tracing off and without tenants:
    spans and quotas are per request, on the usual path.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        clock: Clock,
        door: FrontDoor,
        headers: codec.ResponseHeaders,
        decode: Decode,
        metrics: GatewayMetrics | None,
        request_log: RequestLog,
    ) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._door = door
        self._headers = headers
        self._decode = decode
        self._metrics = metrics
        self._request_log = request_log
        #: Members gathered in this turn, by model (the spec as they resolved it).
        self._gathered: dict[int, tuple[ModelSpec, list[_Member]]] = {}
        self._flush_due = False
        self._tasks: set[asyncio.Task[None]] = set()

    def open(self, context: Context, tracing: Tracing) -> StreamCall:
        """What the messages of the call of ``context`` (a stream, or a unary
        call with tracing off) will share."""
        remaining = context.time_remaining()
        metadata = context.invocation_metadata()
        trace_id = ""
        for _, value in caller_trace_id(metadata):
            trace_id = value
        return StreamCall(
            context,
            None if remaining is None else self._clock.now() + remaining,
            tracing.request_context(metadata),
            trace_id,
        )

    def admit(self, call: StreamCall, data: bytes, answer: Answer) -> bool | Decoded:
        """True: the message joined a group and ``answer`` will get its response.
        False, or its decoding: the caller runs it the usual way."""
        size = len(data)
        door = self._door
        try:
            door.enter(size)
        except GatewayError:
            return False
        start = self._clock.now()
        try:
            request, spec = self._decode(data, call.context, 0, call)
        except GatewayError:
            door.leave(size)
            return False
        if spec.stateful:
            door.leave(size)
            return request, spec
        gathered = self._gathered.get(id(spec))
        if gathered is None:
            gathered = self._gathered[id(spec)] = (spec, [])
        gathered[1].append(_Member(data, request, call, answer, start))
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        self._flush_due = False
        groups, self._gathered = self._gathered, {}
        for spec, members in groups.values():
            task = asyncio.get_running_loop().create_task(self._run(spec, members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, spec: ModelSpec, members: list[_Member]) -> None:
        requests = [member.request for member in members]
        results: list[InferResult | Exception]
        try:
            results = await infer_group(self._scheduler, requests, spec, self._clock)
        except asyncio.CancelledError:  # the loop is going away: every member still ends
            now = self._clock.now()
            for member in members:
                self._end(spec, member, Unavailable(SHUTTING_DOWN), now)
            raise
        except Exception as exc:  # a bug: logged once, every member answered
            results = [internal_error(exc)] * len(members)
        now = self._clock.now()  # one reading: the group's members end together
        done: dict[str, list[float]] = {}  # the OK members' durations, by backend
        for member, result in zip(members, results, strict=True):
            if self._end(spec, member, result, now):
                done.setdefault(member.request.served_by, []).append(now - member.start)
        if self._metrics is not None:
            for backend, durations in done.items():
                self._metrics.requests_done(spec.name, backend, durations)

    def _end(
        self, spec: ModelSpec, member: _Member, result: InferResult | Exception, now: float
    ) -> bool:
        """Answer one member and account for it as the unary path does; True
        when it ended OK: the caller counts those in the metrics, a group's at once."""
        request = member.request
        code, message = "OK", ""
        try:
            if isinstance(result, InferResult):
                answer = codec.encode_response(result, spec, self._headers, stream=True)
            else:
                raise result
        except GatewayError as exc:
            code, message = exc.code, exc.message
            answer = codec.stream_error(header_of(member.data), short(message))
        except Exception as exc:  # a bug, or encoding failed: the member still gets an answer
            error = internal_error(exc)
            code, message = error.code, error.message
            answer = codec.stream_error(header_of(member.data), message)
        self._door.leave(len(member.data))
        if code == "OK" and request.deadline is not None and now > request.deadline:
            code = "DEADLINE_EXCEEDED"  # late: the caller has given up on it
        backend = request.served_by
        if code != "OK" and self._metrics is not None:
            self._metrics.request_done(spec.name, code, backend, now - member.start)
        if code != "OK" or self._request_log.ok_sample:
            self._request_log.request_done(  # tracing is off here: the caller's trace id
                spec.name, code, backend, now - member.start, member.call.trace_id, message
            )
        member.answer(answer)
        return code == "OK"
