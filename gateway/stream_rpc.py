"""``ModelStreamInfer``: many requests on one stream, answered as they finish."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc

from gateway import codec
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.front_door import SHUTTING_DOWN, FrontDoor
from gateway.stateful import StreamSink
from gateway.status import abort, internal_error, short
from scheduler.errors import GatewayError, Unavailable
from scheduler.request import InferRequest
from scheduler.spec import ModelSpec

Context = grpc.aio.ServicerContext[Any, Any]
#: A decoded request and its model, so that the usual path need not decode again.
Decoded = tuple[InferRequest, ModelSpec]
#: Runs one request of the stream (decoded already, or not): its encoded response,
#: or empty when it pushed its responses to the ``StreamSink`` itself (a decoupled
#: model's).
Infer = Callable[[bytes, Context, StreamSink, Decoded | None], Coroutine[Any, Any, bytes]]
#: Offers a message to the lean path (``gateway.stream_group``): True when taken
#: (its final response then goes to the callback given), else the usual path runs
#: it (with its decoding, when the offer got that far).
Admit = Callable[[bytes, Callable[[bytes], None]], bool | Decoded]


async def relay_stream(
    request_iterator: AsyncIterator[bytes],
    context: Context,
    *,
    infer: Infer,
    limit: int,
    door: FrontDoor,
    open_stream: Callable[[Context], Admit | None],
) -> AsyncIterator[bytes]:
    """Requests on one stream run concurrently (up to ``limit``) and their
    responses come back as they finish, matched by ``id`` as in Triton. A
    failed request answers with ``error_message``; the stream goes on. A
    request the lean path does not take runs as a task whose done-callback
    queues its response: one task, no queue or semaphore hops. A decoupled
    model's request pushes each of its responses itself, and a sequence's
    steps run one after another (``gateway.stateful``). At shutdown the
    stream ends UNAVAILABLE (retryable), not CANCELLED.

    ``open_stream`` starts the stream (its trailer) and may give an ``admit``:
    then the reader first offers each message to the lean path,
    which runs it with messages of other streams and calls back with its
    response: no task per message; such a message counts towards ``limit``
    until it is answered. A stream the caller cancels leaves its lean
    messages to finish (their answers are dropped), as a batch outlives a
    caller who left it.
    """
    admit = open_stream(context)
    loop = asyncio.get_running_loop()
    responses: collections.deque[bytes] = collections.deque()
    wake = asyncio.Event()  # a response is ready, or reading ended
    room = asyncio.Event()  # fewer than the bound are running
    room.set()
    tasks: set[asyncio.Task[bytes]] = set()
    lean = 0  # messages the lean path holds

    def answered(message: bytes) -> None:
        nonlocal lean
        lean -= 1
        if message:
            responses.append(message)
        room.set()
        wake.set()

    def push(message: bytes) -> None:
        responses.append(message)
        wake.set()

    stream = StreamSink(push)

    def finished(request: bytes, task: asyncio.Task[bytes]) -> None:
        tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            if result := task.result():  # empty: a decoupled request pushed its own
                responses.append(codec.stream_response(result))
        elif isinstance(error, GatewayError):
            responses.append(codec.stream_error(header_of(request), short(error.message)))
        else:
            message = internal_error(error).message
            responses.append(codec.stream_error(header_of(request), message))
        room.set()
        wake.set()

    async def read_all() -> None:
        nonlocal lean
        try:
            async for request in request_iterator:
                while len(tasks) + lean >= limit:
                    room.clear()
                    await room.wait()
                decoded = None
                if admit is not None:
                    offer = admit(request, answered)
                    if offer is True:
                        lean += 1
                        continue
                    if offer is not False:
                        decoded = offer
                task = loop.create_task(infer(request, context, stream, decoded))
                tasks.add(task)
                task.add_done_callback(functools.partial(finished, request))
        finally:
            wake.set()

    reader = loop.create_task(read_all())
    door.streams.add(wake)
    try:
        while True:
            while responses:
                yield responses.popleft()
            if reader.done() and not tasks and not lean:
                break
            if door.closing and not tasks and not lean:
                # Shutting down: end the stream retryably, not CANCELLED
                # by the server's stop.
                await abort(context, Unavailable(SHUTTING_DOWN))
            wake.clear()
            if not responses:
                await wake.wait()
        await reader  # raises what ended the reading, if it failed
    finally:
        door.streams.discard(wake)
        for task in [reader, *tasks]:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader


def header_of(data: bytes) -> pb.ModelInferRequest | None:
    """The small fields of a failed stream request, to label its error response."""
    try:
        return codec.decode_request(data)[0]
    except GatewayError:
        return None
