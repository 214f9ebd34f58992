"""The Python floors: what one ``grpc.aio`` process costs per request at the least.

    python -m loadtests.suite.floors canned --port-file FILE
    python -m loadtests.suite.floors proxy --target 127.0.0.1:8001 --port-file FILE

- ``canned`` (floor A) answers ``ModelInfer`` with the same pre-serialised
  ``ModelInferResponse`` every time: bytes in, canned bytes out, no protobuf parsing.
  It is the least CPU a Python gRPC server can spend on a unary rpc, and what a
  batching gateway should approach, since its backend call is shared by a batch.
  The same server answers ``ModelStreamInfer`` (the stream floor): each message
  read gets the same pre-serialised ``ModelStreamInferResponse`` written back, in
  order, by an async generator, so a stream's cost per message is grpc's own.
- ``proxy`` (floor B) forwards each ``ModelInfer``'s bytes to a Triton over one
  ``grpc.aio`` channel and returns Triton's bytes: the least CPU a Python process
  can spend on the passthrough hop the gateway makes.  The caller's deadline goes
  along; a failed call answers with Triton's status code and message.

Both use a generic handler with identity (de)serialisers, so grpc hands the raw
message bytes in and out.  Each listens on 127.0.0.1, on a free port that it writes
to ``--port-file`` once serving, and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc

SERVICE = "inference.GRPCInferenceService"
METHOD = f"/{SERVICE}/ModelInfer"

Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]
StreamHandler = Callable[
    [AsyncIterator[bytes], grpc.aio.ServicerContext[bytes, bytes]], AsyncIterator[bytes]
]


def canned_handler() -> Handler:
    """Floor A: the same reply bytes for every request."""
    from loadtests.suite.payloads import canned_response

    reply = canned_response()

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return reply

    return model_infer


def canned_stream_handler() -> StreamHandler:
    """The stream floor: the same reply bytes for every message, in order."""
    from loadtests.suite.payloads import canned_stream_response

    reply = canned_stream_response()

    async def model_stream_infer(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        async for _ in requests:
            yield reply

    return model_stream_infer


def proxy_handler(channel: grpc.aio.Channel) -> Handler:
    """Floor B: forward the bytes to Triton and return its bytes."""
    # No serialisers: the call takes and returns bytes as they are on the wire.
    forward: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)

    async def model_infer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            reply: bytes = await forward(request, timeout=context.time_remaining())
        except grpc.aio.AioRpcError as error:
            await context.abort(error.code(), error.details() or "")
        return reply

    return model_infer


async def serve(handler: Handler, port_file: Path, stream: StreamHandler | None = None) -> None:
    """Serve ``handler`` as ModelInfer (and ``stream`` as ModelStreamInfer) until
    SIGTERM or SIGINT."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        "ModelInfer": grpc.unary_unary_rpc_method_handler(handler)
    }
    if stream is not None:
        handlers["ModelStreamInfer"] = grpc.stream_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(f"{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


async def _main(args: argparse.Namespace) -> None:
    if args.kind == "canned":
        await serve(canned_handler(), args.port_file, canned_stream_handler())
        return
    async with grpc.aio.insecure_channel(args.target) as channel:
        await serve(proxy_handler(channel), args.port_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["canned", "proxy"])
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--target", help="Triton's gRPC address (proxy only)")
    args = parser.parse_args()
    if args.kind == "proxy" and not args.target:
        parser.error("proxy needs --target HOST:PORT")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
