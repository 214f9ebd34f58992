"""The Triton backend: one Triton Inference Server over gRPC. Model discovery,
inference, health, and the one place where Triton's errors become ours.

The control plane (repository index, metadata, config, statistics, readiness)
goes through tritonclient's asyncio client. Inference goes over a gRPC channel
of our own that carries bytes: a request the caller encoded is forwarded as it
came (``infer_wire``), and a batch is encoded here with tritonclient's message
classes for the small fields and ``kserve_wire`` for the tensors, so no tensor
is copied more than once on its way to the server or back.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Coroutine, Mapping
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as tc_aio
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from scheduler import kserve_wire as wire
from scheduler.backends.base import Device, DeviceKind
from scheduler.backends.triton_setup import TritonTls, spec_from_triton
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import (
    BackendError,
    BackendUnavailable,
    Cancelled,
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
    MessageTooLarge,
)
from scheduler.placement import Tier
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor

log = logging.getLogger(__name__)

_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
_STREAM_METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"
#: Parameters that are not forwarded with a batch: ``priority`` and ``timeout``
#: are set from the batch's own; the rest are reserved by Triton or HTTP-only.
_RESERVED_PARAMS = {"priority", "timeout", "headers", "binary_data_output"}


class TritonBackend:
    """A Triton server as a backend.

    ``start``/``discover`` read the server's repository index and, for every
    READY model, its metadata and config, so models are declared once, in
    Triton. ``infer`` forwards whole batches; the remaining deadline bounds the
    gRPC call and is also sent as Triton's ``timeout`` parameter (µs) so the
    server drops work nobody waits for.
    """

    def __init__(
        self,
        url: str,
        *,
        backend_id: str | None = None,
        clock: Clock | None = None,
        control_timeout_s: float = 5.0,
        max_message_bytes: int = 64 * 1024 * 1024,
        tls: TritonTls | None = None,
    ) -> None:
        self._url = url
        self._id = backend_id or f"triton@{url}"
        self._clock = clock or MonotonicClock()
        self._control_timeout_s = control_timeout_s
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # gRPC's default reconnect backoff grows to minutes; the circuit
            # breaker already paces probes, so let the channel retry promptly
            # and a restarted server be seen within about a second.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if tls is None:
            self._client = tc_aio.InferenceServerClient(url, channel_args=options)
            self._channel = grpc.aio.insecure_channel(url, options=options)
        else:
            self._client = tc_aio.InferenceServerClient(
                url,
                channel_args=options,
                ssl=True,
                root_certificates=str(tls.ca_file),
                private_key=str(tls.key_file) if tls.key_file else None,
                certificate_chain=str(tls.cert_file) if tls.cert_file else None,
            )
            self._channel = grpc.aio.secure_channel(url, tls.credentials(), options=options)
        # No serializers: requests and responses travel as bytes.
        self._infer_rpc: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            _INFER_METHOD
        )
        self._stream_rpc: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = (
            self._channel.stream_stream(_STREAM_METHOD)
        )
        self._models: dict[str, ModelSpec] = {}
        self._hints: list[tuple[str, int, float]] = []

    @property
    def id(self) -> str:
        return self._id

    @property
    def url(self) -> str:
        return self._url

    @property
    def forwards_wire(self) -> bool:
        return True

    @property
    def endpoint(self) -> str:
        return self._url

    @property
    def tier(self) -> Tier:
        return Tier.ACCELERATOR

    @property
    def workers(self) -> int:
        """One call at a time per model instance: the instances come from its config."""
        return 1

    @property
    def device(self) -> Device:
        # Which device a Triton instance runs on comes from telemetry; the
        # backend itself only knows its endpoint.
        return Device(DeviceKind.UNKNOWN, host=self._url)

    def models(self) -> Mapping[str, ModelSpec]:
        return self._models  # replaced, never changed in place, by discover()

    async def start(self) -> None:
        await self.discover()

    async def discover(self) -> dict[str, ModelSpec]:
        """Re-read the models this server has READY. Raises BackendUnavailable."""
        timeout = self._control_timeout_s
        try:
            index = await self._client.get_model_repository_index(
                as_json=True, client_timeout=timeout
            )
            versions: dict[str, list[str]] = {}
            for entry in index.get("models", []):
                if entry.get("state") == "READY":
                    versions.setdefault(entry["name"], []).append(entry.get("version", ""))
            found: dict[str, ModelSpec] = {}
            for name, model_versions in sorted(versions.items()):
                meta = await self._client.get_model_metadata(
                    name, as_json=True, client_timeout=timeout
                )
                config = await self._client.get_model_config(
                    name, as_json=True, client_timeout=timeout
                )
                found[name] = spec_from_triton(meta, config.get("config", {}), model_versions)
            hints = await self._statistics_hints(timeout)
        except InferenceServerException as exc:
            raise self._translate(exc, "discovering models") from exc
        # Said when it changes, not on every periodic re-discovery.
        if found.keys() != self._models.keys():
            log.info("backend %s serves %d model(s): %s", self._id, len(found), ", ".join(found))
        self._models = found
        self._hints = hints
        return found

    async def _statistics_hints(self, timeout: float) -> list[tuple[str, int, float]]:
        """Mean compute time per batch size from Triton's own statistics: a
        prior for the service-time estimator before the gateway has measured."""
        stats = await self._client.get_inference_statistics(as_json=True, client_timeout=timeout)
        hints = []
        for model in stats.get("model_stats", []):
            for batch in model.get("batch_stats", []):
                infer = batch.get("compute_infer", {})
                count = int(infer.get("count", 0))
                if count:
                    seconds = int(infer.get("ns", 0)) / count / 1e9
                    hints.append((model["name"], int(batch["batch_size"]), seconds))
        return hints

    def service_time_hints(self) -> list[tuple[str, int, float]]:
        """(model, batch size, seconds) seen by Triton before we started."""
        return list(self._hints)

    async def health(self) -> bool:
        try:
            return bool(await self._client.is_server_ready(client_timeout=self._control_timeout_s))
        except InferenceServerException:
            return False

    def _budget(self, model: ModelSpec, deadline: float | None) -> float | None:
        if deadline is None:
            return None
        timeout_s = deadline - self._clock.now()
        if timeout_s <= 0:
            raise DeadlineExceeded(f"deadline passed before model '{model.name}' was sent")
        return timeout_s

    async def _call(
        self,
        model: ModelSpec,
        payload: bytes,
        timeout_s: float | None,
        trace_context: Mapping[str, str] | None,
    ) -> bytes:
        # gRPC's own Metadata: a tuple would be checked against the Sequence
        # ABC and converted, some ten Python calls, on every traced call.
        metadata = grpc.aio.Metadata(*trace_context.items()) if trace_context else None
        try:
            response: bytes = await self._infer_rpc(payload, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise self._translate_status(
                exc.code().name, exc.details() or "", f"running model '{model.name}'"
            ) from exc
        return response

    def infer_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> Coroutine[Any, Any, bytes]:
        """Forward an encoded request as it came. With a deadline, the time
        left is appended as Triton's ``timeout`` parameter (the last entry of a
        map key wins, and it is never later than the caller's own ``timeout``,
        which the deadline already includes). Returns the call's own
        coroutine, with no coroutine of this method around it (one frame less
        on each of its resumes); a deadline already past raises here."""
        timeout_s = self._budget(model, deadline)
        if timeout_s is not None:
            request = request + wire.int_parameter("timeout", max(1, int(timeout_s * 1e6)))
        return self._call(model, request, timeout_s, trace_context)

    async def stream_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        """One request of a decoupled model on a ModelStreamInfer stream of its
        own: written, half-closed, then every response relayed as it comes.
        Triton ends the stream once the request's final response is sent, so
        the end of the stream is the end of the request, whether or not the
        caller asked for an empty final response. Leaving early (the caller
        went away) cancels the stream, and Triton cancels the request."""
        timeout_s = self._budget(model, deadline)
        if timeout_s is not None:
            request = request + wire.int_parameter("timeout", max(1, int(timeout_s * 1e6)))
        metadata = grpc.aio.Metadata(*trace_context.items()) if trace_context else None
        call = self._stream_rpc(timeout=timeout_s, metadata=metadata)
        try:
            await call.write(request)
            await call.done_writing()
            while True:
                message = await call.read()
                if not isinstance(message, bytes):  # grpc.aio.EOF
                    return
                yield message
        except grpc.aio.AioRpcError as exc:
            raise self._translate_status(
                exc.code().name, exc.details() or "", f"streaming model '{model.name}'"
            ) from exc
        finally:
            call.cancel()  # a no-op once the stream has ended

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
        timeout_s = self._budget(model, deadline)
        request = service_pb2.ModelInferRequest(model_name=model.name, model_version=version)
        params = dict(parameters or {})
        server_timeout_us = params.get("timeout")
        for key, value in params.items():
            if key not in _RESERVED_PARAMS and not key.startswith("triton_"):
                wire.set_parameter(request.parameters[key], value)
        if timeout_s is not None:
            budget_us = max(1, int(timeout_s * 1e6))
            if isinstance(server_timeout_us, int) and 0 < server_timeout_us < budget_us:
                budget_us = server_timeout_us
            request.parameters["timeout"].int64_param = budget_us
        elif isinstance(server_timeout_us, int) and server_timeout_us > 0:
            request.parameters["timeout"].int64_param = server_timeout_us
        priority = params.get("priority")
        if isinstance(priority, int) and not isinstance(priority, bool) and priority > 0:
            request.parameters["priority"].uint64_param = priority
        contents: list[Any] = []
        for name, array in inputs.items():
            spec = model.input(name)
            datatype = spec.datatype if spec else DataType.of_array(array)
            request.inputs.add(name=name, datatype=datatype.value, shape=array.shape)
            if datatype is DataType.BYTES:
                contents.append(wire.encode_bytes(array))
            else:
                contents.append(wire.as_buffer(array.astype(datatype.numpy_dtype, copy=False)))
        for name in outputs:
            request.outputs.add(name=name)
        payload = wire.join_raw(request.SerializeToString(), wire.RAW_INPUT_FIELD, contents)
        return self._decode(model, await self._call(model, payload, timeout_s, trace_context))

    def _decode(self, model: ModelSpec, data: bytes) -> dict[str, Tensor]:
        """The response's outputs as numpy views of the received bytes."""
        try:
            header_bytes, raw = wire.split_raw(data, wire.RAW_OUTPUT_FIELD)
            header = service_pb2.ModelInferResponse.FromString(header_bytes)
        except Exception as exc:  # WireError, or protobuf's DecodeError
            raise BackendError(
                f"a Triton server sent an unreadable response for '{model.name}': {exc}",
                backend_id=self._id,
            ) from exc
        if len(raw) != len(header.outputs):
            raise BackendError(
                f"a Triton server returned {len(header.outputs)} outputs of "
                f"'{model.name}' with {len(raw)} raw contents",
                backend_id=self._id,
            )
        produced: dict[str, Tensor] = {}
        for output, buffer in zip(header.outputs, raw, strict=True):
            shape = tuple(output.shape)
            try:
                datatype = DataType(output.datatype)
                if datatype is DataType.BYTES:
                    array = wire.decode_bytes(buffer, int(np.prod(shape)), output.name)
                else:
                    array = np.frombuffer(buffer, dtype=datatype.numpy_dtype)
                produced[output.name] = array.reshape(shape)
            except (ValueError, GatewayError) as exc:
                raise BackendError(
                    f"a Triton server returned output '{output.name}' of "
                    f"'{model.name}' that does not match its shape {list(shape)} and "
                    f"datatype {output.datatype}: {exc}",
                    backend_id=self._id,
                ) from exc
        return produced

    async def aclose(self) -> None:
        await self._client.close()
        await self._channel.close()

    def _translate(self, exc: InferenceServerException, doing: str) -> GatewayError:
        """tritonclient's errors carry the gRPC code as a string."""
        status = str(exc.status() or "").removeprefix("StatusCode.")
        return self._translate_status(status, str(exc.message()), doing)

    def _translate_status(self, status: str, detail: str, doing: str) -> GatewayError:
        """A gRPC status from Triton (by its code's name) as an error of ours."""
        # Callers see that a Triton failed and why, not where it runs: the
        # address goes to the log only.
        log.debug("Triton at %s failed %s: %s", self._url, doing, detail)
        message = f"a Triton server failed {doing}: {detail}"
        if status == grpc.StatusCode.UNAVAILABLE.name:
            return BackendUnavailable(message, backend_id=self._id)
        if status == grpc.StatusCode.DEADLINE_EXCEEDED.name:
            return DeadlineExceeded(message)
        if status == grpc.StatusCode.CANCELLED.name:
            return Cancelled(message)
        if status == grpc.StatusCode.INVALID_ARGUMENT.name:
            return InvalidArgument(message)
        if status == "RESOURCE_EXHAUSTED" and "message larger than max" in detail:
            # gRPC's own limit on this channel ("Sent/Received message larger
            # than max (size vs. limit)"), not a full queue: say which setting.
            return MessageTooLarge(
                f"{doing} needs a message over the gateway's limit for backend calls "
                f"(max_message_bytes): {detail}; send fewer rows per request"
            )
        # The model may have been unloaded here but live elsewhere, and a full
        # queue here says nothing about other servers: both are worth a retry.
        retryable = status in {"NOT_FOUND", "RESOURCE_EXHAUSTED"}
        return BackendError(
            message, backend_id=self._id, code=status or "INTERNAL", retryable=retryable
        )
