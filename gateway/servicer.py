"""The KServe v2 / Triton ``GRPCInferenceService``: thin translation only.

Each rpc converts the protobuf request, asks the scheduler, converts back.
Errors of the family become statuses in ``gateway.status``; anything else is
an internal error with a reference to the logs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gateway import codec, metadata
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.layouts import Layouts
from gateway.metrics import GatewayMetrics
from gateway.stateful import StatefulRequests, StreamSink
from gateway.status import abort, internal_error
from gateway.telemetry import Tracing, trace_id_metadata
from scheduler import kserve_wire as wire
from scheduler.clock import Clock
from scheduler.dispatcher import Scheduler
from scheduler.errors import GatewayError, InvalidArgument, Unimplemented
from scheduler.request import InferRequest
from scheduler.spec import ModelSpec

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

_NO_REPOSITORY_CONTROL = (
    "the gateway does not load or unload models: it serves what its backends serve; "
    "load the model on the Triton server and the gateway discovers it"
)


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    """Implements the inference rpcs over a ``Scheduler``."""

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        clock: Clock,
        server_name: str,
        server_version: str,
        stream_max_in_flight: int = 64,
        metrics: GatewayMetrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._server_name = server_name
        self._server_version = server_version
        self._stream_max_in_flight = stream_max_in_flight
        self._metrics = metrics
        self._tracing = tracing or Tracing()
        self._headers = codec.ResponseHeaders()
        self._layouts = Layouts()
        self._stateful = StatefulRequests(scheduler, clock, self._headers, metrics)
        self.ready = False

    # -- health and metadata ---------------------------------------------
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: Context
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: Context
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.ready)

    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: Context
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=self._server_name,
            version=self._server_version,
            extensions=["model_configuration", "statistics", "parameters"],
        )

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Context
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(
            ready=self.ready and self._scheduler.model_ready(request.name, request.version)
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: Context
    ) -> pb.ModelMetadataResponse:
        try:
            spec = self._scheduler.model(request.name, request.version)
        except GatewayError as exc:
            await abort(context, exc)
        return metadata.model_metadata(spec)

    async def ModelConfig(
        self, request: pb.ModelConfigRequest, context: Context
    ) -> pb.ModelConfigResponse:
        try:
            spec = self._scheduler.model(request.name, request.version)
        except GatewayError as exc:
            await abort(context, exc)
        return pb.ModelConfigResponse(config=metadata.model_config(spec))

    async def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: Context
    ) -> pb.ModelStatisticsResponse:
        try:
            specs = (
                [self._scheduler.model(request.name, request.version)]
                if request.name
                else self._scheduler.models()
            )
        except GatewayError as exc:
            await abort(context, exc)
        return pb.ModelStatisticsResponse(
            model_stats=[
                metadata.model_statistics(spec, self._scheduler.stats(spec.name), request.version)
                for spec in specs
            ]
        )

    async def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: Context
    ) -> pb.RepositoryIndexResponse:
        response = pb.RepositoryIndexResponse()
        for spec in self._scheduler.models():
            ready = self._scheduler.model_ready(spec.name)
            if request.ready and not ready:
                continue
            for version in spec.versions:
                response.models.add(
                    name=spec.name,
                    version=version,
                    state="READY" if ready else "UNAVAILABLE",
                    reason="" if ready else "no healthy backend serves it now",
                )
        return response

    # -- inference -------------------------------------------------------
    # Both inference rpcs take and return bytes (``add_to_server`` registers
    # them without protobuf (de)serialisers): the codec reads the message
    # without copying its tensors, and a request the gateway does not batch
    # reaches a Triton backend as the very bytes the caller sent.
    async def ModelInfer(self, request: bytes, context: Context) -> bytes:
        # The trace id goes back in trailing metadata, errors included, so a
        # client's log line leads to the trace.
        # (Only our own spans have an id to report: with tracing off there is none.)
        trailer = trace_id_metadata() if self._tracing.enabled else ()
        if trailer:
            context.set_trailing_metadata(trailer)
        try:
            return await self._infer(request, context)
        except GatewayError as exc:
            await abort(context, exc, trailer)
        except Exception as exc:
            await abort(context, internal_error(exc), trailer)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Requests on one stream run concurrently (up to ``stream_max_in_flight``)
        and their responses come back as they finish, matched by ``id`` as in
        Triton. A failed request answers with ``error_message``; the stream
        goes on. Each request runs as a task whose done-callback queues its
        response, so a message costs one task and no queue or semaphore hops.
        A decoupled model's request pushes each of its responses itself, and
        a sequence's steps run one after another (``gateway.stateful``).
        """
        if self._tracing.enabled and (trailer := trace_id_metadata()):
            context.set_trailing_metadata(trailer)
        loop = asyncio.get_running_loop()
        responses: collections.deque[bytes] = collections.deque()
        wake = asyncio.Event()  # a response is ready, or reading ended
        room = asyncio.Event()  # fewer than the bound are running
        room.set()
        tasks: set[asyncio.Task[bytes]] = set()
        limit = self._stream_max_in_flight

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
                responses.append(codec.stream_error(_header_of(request), error.message))
            else:
                message = internal_error(error).message
                responses.append(codec.stream_error(_header_of(request), message))
            room.set()
            wake.set()

        async def read_all() -> None:
            try:
                async for request in request_iterator:
                    while len(tasks) >= limit:
                        room.clear()
                        await room.wait()
                    task = loop.create_task(self._infer(request, context, stream))
                    tasks.add(task)
                    task.add_done_callback(functools.partial(finished, request))
            finally:
                wake.set()

        reader = loop.create_task(read_all())
        try:
            while True:
                while responses:
                    yield responses.popleft()
                if reader.done() and not tasks:
                    break
                wake.clear()
                if not responses:
                    await wake.wait()
            await reader  # raises what ended the reading, if it failed
        finally:
            for task in [reader, *tasks]:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await reader

    async def _infer(
        self, data: bytes, context: Context, stream: StreamSink | None = None
    ) -> bytes:
        """One request's encoded response; on a stream (``stream``), empty
        when the request pushed its responses itself (a decoupled model's)."""
        start = self._clock.now()
        # "unknown" until the model resolves: a client's typo must not become
        # a metric label of its own.
        model, code, backend = "unknown", "OK", ""
        try:
            infer_request, spec = self._decode(data, context)
            model = spec.name
            try:
                if spec.stateful:  # the one test the common path pays
                    return await self._stateful.infer(infer_request, spec, stream)
                result = await self._scheduler.infer(infer_request, spec)
            finally:
                backend = infer_request.served_by
            return codec.encode_response(result, spec, self._headers)
        except GatewayError as exc:
            code = exc.code
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            if self._metrics is not None:
                self._metrics.request_done(model, code, backend, self._clock.now() - start)

    def _decode(self, data: bytes, context: Context) -> tuple[InferRequest, ModelSpec]:
        try:
            key, identifier, raw = wire.split_request(data)
            request_id = identifier.decode()
        except (wire.WireError, UnicodeDecodeError) as exc:
            raise InvalidArgument(
                f"the request is not a valid inference.ModelInferRequest message: {exc}"
            ) from None
        scheduler = self._scheduler
        layout = self._layouts.get(key, scheduler.generation, scheduler.model)
        if not layout.typed:
            inputs = layout.tensors(raw)
        elif raw:
            raise InvalidArgument(
                "an input has both typed contents and raw_input_contents; send one or the other"
            )
        else:  # typed contents: part of the layout's bytes, so decoded per request
            inputs = codec.decode_inputs(pb.ModelInferRequest.FromString(key))
        now = self._clock.now()
        deadline = None
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = now + remaining
        timeout_us = layout.parameters.get("timeout")
        if isinstance(timeout_us, int) and not isinstance(timeout_us, bool) and timeout_us > 0:
            by_parameter = now + timeout_us / 1e6
            deadline = by_parameter if deadline is None else min(deadline, by_parameter)
        spec = layout.spec
        infer_request = InferRequest(
            model_name=spec.name,
            model_version=layout.version,
            inputs=inputs,
            requested_outputs=layout.outputs,
            parameters=layout.parameters,
            id=request_id,
            priority=layout.priority,
            deadline=deadline,
            trace_context=self._tracing.request_context(context.invocation_metadata()),
            wire=data,
            checked=spec,
        )
        return infer_request, spec

    # -- what the gateway does not do ------------------------------------
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(_NO_REPOSITORY_CONTROL))

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(_NO_REPOSITORY_CONTROL))

    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def TraceSetting(self, request: Any, context: Context) -> Any:
        await abort(
            context,
            Unimplemented("trace settings are set with the standard OTEL_* environment variables"),
        )

    async def LogSettings(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented("log settings are set in the gateway's configuration"))


def _header_of(data: bytes) -> pb.ModelInferRequest | None:
    """The small fields of a failed stream request, to label its error response."""
    try:
        return codec.decode_request(data)[0]
    except GatewayError:
        return None


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Register every rpc of ``GRPCInferenceService``; the two inference rpcs
    take and return bytes, the rest use the generated messages."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if method.name == "ModelInfer":
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour)
        elif method.name == "ModelStreamInfer":
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(behaviour)
        else:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
