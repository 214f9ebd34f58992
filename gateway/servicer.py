"""The KServe v2 / Triton ``GRPCInferenceService``: thin translation only.

Each rpc converts the protobuf request, asks the scheduler, converts back.
Errors of the family become statuses in ``gateway.status``; anything else is
an internal error with a reference to the logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from gateway import codec, metadata
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.front_door import SHUTTING_DOWN, FrontDoor
from gateway.layouts import Layouts
from gateway.metrics import GatewayMetrics
from gateway.request_log import RequestLog
from gateway.security import Authenticator, visible
from gateway.stateful import StatefulRequests, StreamSink
from gateway.status import abort, internal_error
from gateway.stream_group import StreamCall, StreamGroups
from gateway.stream_rpc import Admit, Decoded, header_of, relay_stream
from gateway.telemetry import TRACE_ID_KEY, Tracing, caller_trace_id
from gateway.unsupported import UnsupportedRpcs
from scheduler import kserve_wire as wire
from scheduler.clock import Clock
from scheduler.current_span import current_span
from scheduler.dispatcher import Scheduler
from scheduler.errors import GatewayError, InvalidArgument, Unavailable
from scheduler.quota import TenantQuota
from scheduler.request import InferRequest
from scheduler.spec import ModelSpec
from scheduler.tracing import trace_id_of

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


class InferenceServicer(UnsupportedRpcs, pb_grpc.GRPCInferenceServiceServicer):
    """Implements the inference rpcs over a ``Scheduler`` (the rpcs the gateway
    does not serve answer UNIMPLEMENTED with why: ``UnsupportedRpcs``)."""

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
        request_log: RequestLog | None = None,
        limits: codec.TensorLimits = codec.DEFAULT_LIMITS,
        auth: Authenticator | None = None,
        max_bytes_in_flight: int = 1 << 30,
    ) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._server_name = server_name
        self._server_version = server_version
        self._stream_max_in_flight = stream_max_in_flight
        self._metrics = metrics
        self._tracing = tracing or Tracing()
        self._traced = self._tracing.enabled  # fixed for the servicer's life; read per request
        self._request_log = request_log or RequestLog(clock)
        self._headers = codec.ResponseHeaders()
        self._layouts = Layouts(limits=limits)
        self._stateful = StatefulRequests(scheduler, clock, self._headers, metrics)
        #: With tenants configured: who may call, which models, and their quotas.
        self.auth = auth
        self.ready = False
        #: In-flight requests and bytes; ``door.close`` refuses new ones at shutdown.
        self.door = FrontDoor(max_bytes_in_flight)
        self._groups = StreamGroups(
            scheduler,
            clock=clock,
            door=self.door,
            headers=self._headers,
            decode=self._decode,
            metrics=metrics,
            request_log=self._request_log,
        )
        #: ``ModelStreamInfer``'s async generator function, as gRPC is given it.
        self.stream_handler = functools.partial(
            relay_stream,
            infer=self._infer,
            limit=stream_max_in_flight,
            door=self.door,
            open_stream=self._open_stream,
        )

    @property
    def tracing(self) -> Tracing:
        return self._tracing

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
        may_see = visible(self.auth, context)  # all models: those the tenant may use
        try:
            specs = (
                [self._scheduler.model(request.name, request.version)]
                if request.name
                else [spec for spec in self._scheduler.models() if may_see(spec.name)]
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
        may_see = visible(self.auth, context)  # a tenant sees the models it may use
        for spec in self._scheduler.models():
            if not may_see(spec.name):
                continue
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
    # Both inference rpcs take and return bytes (``gateway.registration`` registers
    # them without protobuf (de)serialisers): the codec reads the message
    # without copying its tensors, and a request the gateway does not batch
    # reaches a Triton backend as the very bytes the caller sent.
    async def ModelInfer(self, request: bytes, context: Context) -> bytes:
        # The trace id goes back in trailing metadata, errors included, so a
        # client's log line leads to the trace (with tracing off: the caller's own).
        if self._metrics is not None:
            self._metrics.refusals.handled += 1
        call = None  # tracing off: the call's metadata read once, not per use
        if self._traced:
            trailer = self._tracing.call_trailer(context)
        else:
            call = self._groups.open(context, self._tracing)
            trailer = ((TRACE_ID_KEY, call.trace_id),) if call.trace_id else ()
        if trailer:
            context.set_trailing_metadata(trailer)
        try:
            return await self._infer(request, context, call=call)
        except GatewayError as exc:
            await abort(context, exc, trailer)
        except asyncio.CancelledError:
            if not self.door.closing:
                raise  # the caller went away
            # Stopped by the shutdown, not by the caller: say so, retryably.
            await abort(context, Unavailable(SHUTTING_DOWN), trailer)
        except Exception as exc:
            await abort(context, internal_error(exc), trailer)

    def ModelStreamInfer(
        self, request_iterator: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[bytes]:
        """Requests on one stream run concurrently (up to ``stream_max_in_flight``)
        and their responses come back as they finish, matched by ``id`` as in
        Triton. A failed request answers with ``error_message``; the stream
        goes on. With tracing off and no tenants, requests read in one turn of
        the event loop, on any streams, run together, with no task per message
        (``gateway.stream_group``); otherwise each runs as a task of its own
        (``gateway.stream_rpc``). A decoupled model's request pushes each of its
        responses itself, and a sequence's steps run one after another
        (``gateway.stateful``). gRPC is given ``stream_handler`` itself (see
        ``gateway.registration``): no generator of ours between it and the relay.
        """
        return self.stream_handler(request_iterator, context)

    def _open_stream(self, context: Context) -> Admit | None:
        """A stream's start: its trailer, and its lean path's ``admit`` if it has one."""
        if trailer := self._tracing.call_trailer(context):
            context.set_trailing_metadata(trailer)
        if self.auth is None and not self._traced:  # spans, quotas: per request
            return functools.partial(self._groups.admit, self._groups.open(context, self._tracing))
        return None

    async def _infer(
        self,
        data: bytes,
        context: Context,
        stream: StreamSink | None = None,
        decoded: Decoded | None = None,
        *,
        call: StreamCall | None = None,
    ) -> bytes:
        """One request's encoded response; on a stream (``stream``), empty
        when the request pushed its responses itself (a decoupled model's).
        ``decoded``: the stream's lean path decoded it already; ``call``: its
        call as read once (``StreamGroups.open``), else read as needed."""
        size = len(data)
        door = self.door
        door.enter(size)  # UNAVAILABLE when closing; bounded in bytes
        start = self._clock.now()
        # Traced: the request's first span starts here, so decoding is inside it.
        received_ns = time.time_ns() if self._traced else 0
        # "unknown" until the model resolves: a typo must not become a label of its own.
        model, code, backend, message = "unknown", "OK", "", ""
        queue_s = backend_s = 0.0
        deadline: float | None = None
        quota: TenantQuota | None = None
        try:
            tenant = self.auth.identify_call(context) if self.auth is not None else None
            if tenant is not None:  # before decoding: a refusal must cost little
                tenant.quota.acquire(start)
                quota = tenant.quota
            infer_request, spec = decoded or self._decode(data, context, received_ns, call, start)
            model, deadline = spec.name, infer_request.deadline
            if tenant is not None:
                Authenticator.authorize(tenant, model)
                infer_request.tenant, infer_request.share = tenant.name, tenant.share
            try:
                if spec.stateful:  # the one test the common path pays
                    return await self._stateful.infer(infer_request, spec, stream)
                result = await self._scheduler.infer(infer_request, spec)
            finally:
                backend = infer_request.served_by
                queue_s, backend_s = infer_request.queued_s, infer_request.backend_s
            return codec.encode_response(result, spec, self._headers)
        except GatewayError as exc:
            code, message = exc.code, exc.message
            if model == "unknown":
                model = self._known_model(data)
            raise
        except Exception as exc:
            code, message = "INTERNAL", f"{type(exc).__name__} (logged with its traceback)"
            raise
        finally:
            if quota is not None:
                quota.release()
            door.leave(size)
            now = self._clock.now()
            if code == "OK" and deadline is not None and now > deadline:
                # The caller has given up: gRPC answers DEADLINE_EXCEEDED, so do we.
                code = "DEADLINE_EXCEEDED"
            trace_id = trace_id_of(current_span()) if self._traced else ""
            if self._metrics is not None:
                self._metrics.request_done(model, code, backend, now - start, trace_id)
            if code != "OK" or self._request_log.ok_sample:
                if call is not None:  # tracing off: the caller's, if it sent one
                    trace_id = call.trace_id
                elif not trace_id:
                    for _, value in caller_trace_id(context.invocation_metadata()):
                        trace_id = value
                self._request_log.request_done(
                    model,
                    code,
                    backend,
                    now - start,
                    trace_id,
                    message,
                    queue_s=queue_s,
                    backend_s=backend_s,
                )

    def _known_model(self, data: bytes) -> str:
        """A failed request's model if the gateway serves it, else "unknown" (error path only)."""
        if (header := header_of(data)) is not None:
            with contextlib.suppress(GatewayError):
                return self._scheduler.model(header.model_name, header.model_version).name
        return "unknown"

    def _decode(
        self,
        data: bytes,
        context: Context,
        received_ns: int = 0,
        call: StreamCall | None = None,
        now: float | None = None,
    ) -> tuple[InferRequest, ModelSpec]:
        """The request and its model; ``call``: what its stream's messages
        share; ``now``: the clock as the caller read it on arrival (the
        deadline is reckoned from it: early by the time decoding took)."""
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
            inputs = codec.decode_inputs(
                pb.ModelInferRequest.FromString(key), limits=self._layouts.limits
            )
        if now is None:
            now = self._clock.now()
        if call is not None:
            deadline, trace_context = call.deadline, call.trace_context
        else:
            remaining = context.time_remaining()
            deadline = None if remaining is None else now + remaining
            trace_context = self._tracing.call_context(context)
        if layout.timeout_us:
            by_parameter = now + layout.timeout_us / 1e6
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
            trace_context=trace_context,
            wire=data,
            checked=spec,
            received_ns=received_ns,
            size_bytes=max(len(data), layout.reply_bytes),
        )
        return infer_request, spec
