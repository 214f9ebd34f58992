"""The Triton backend: one Triton Inference Server, reached with tritonclient's
asyncio gRPC client. Model discovery, inference, health, and the one place
where tritonclient's errors become ours.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grpc
import tritonclient.grpc as tc
import tritonclient.grpc.aio as tc_aio
from tritonclient.utils import InferenceServerException

from scheduler.backends.base import Device, DeviceKind
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import (
    BackendError,
    BackendUnavailable,
    Cancelled,
    DeadlineExceeded,
    GatewayError,
    InvalidArgument,
)
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

log = logging.getLogger(__name__)

#: Request parameters tritonclient refuses in ``parameters=``; the ones that
#: mean something are passed through its keyword arguments instead.
_SEQUENCE_PARAMS = ("sequence_id", "sequence_start", "sequence_end")
_RESERVED_PARAMS = {*_SEQUENCE_PARAMS, "priority", "timeout", "headers", "binary_data_output"}


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
        self._client = tc_aio.InferenceServerClient(url, channel_args=options)
        self._models: dict[str, ModelSpec] = {}
        self._hints: list[tuple[str, int, float]] = []

    @property
    def id(self) -> str:
        return self._id

    @property
    def url(self) -> str:
        return self._url

    @property
    def device(self) -> Device:
        # Which device a Triton instance runs on comes from telemetry; the
        # backend itself only knows its endpoint.
        return Device(DeviceKind.UNKNOWN, host=self._url)

    def models(self) -> Mapping[str, ModelSpec]:
        return dict(self._models)

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
        self._models = found
        self._hints = hints
        log.info("backend %s serves %d model(s): %s", self._id, len(found), ", ".join(found))
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
        timeout_s: float | None = None
        if deadline is not None:
            timeout_s = deadline - self._clock.now()
            if timeout_s <= 0:
                raise DeadlineExceeded(f"deadline passed before model '{model.name}' was sent")
        params = dict(parameters or {})
        sequence = {k: params.pop(k) for k in _SEQUENCE_PARAMS if k in params}
        priority = int(params.pop("priority", 0))
        server_timeout_us = params.pop("timeout", None)
        for key in [k for k in params if k in _RESERVED_PARAMS or k.startswith("triton_")]:
            params.pop(key)
        if timeout_s is not None:
            budget_us = int(timeout_s * 1e6)
            server_timeout_us = min(int(server_timeout_us or budget_us), budget_us)
        try:
            request_inputs = []
            for name, array in inputs.items():
                spec = model.input(name)
                datatype = spec.datatype.value if spec else DataType.of_array(array).value
                tensor = tc.InferInput(name, list(array.shape), datatype)
                tensor.set_data_from_numpy(array)
                request_inputs.append(tensor)
            requested = [tc.InferRequestedOutput(name) for name in outputs] or None
            result = await self._client.infer(
                model.name,
                request_inputs,
                model_version=version,
                outputs=requested,
                priority=priority,
                timeout=None if server_timeout_us is None else int(server_timeout_us),
                client_timeout=timeout_s,
                headers=dict(trace_context) if trace_context else None,
                parameters=params or None,
                **sequence,
            )
        except InferenceServerException as exc:
            raise self._translate(exc, f"running model '{model.name}'") from exc
        response = result.get_response()
        produced: dict[str, Tensor] = {}
        for output in response.outputs:
            array = result.as_numpy(output.name)
            if array is None:
                raise BackendError(
                    f"Triton returned no data for output '{output.name}' of '{model.name}'",
                    backend_id=self._id,
                )
            produced[output.name] = array
        return produced

    async def aclose(self) -> None:
        await self._client.close()

    def _translate(self, exc: InferenceServerException, doing: str) -> GatewayError:
        """tritonclient's errors carry the gRPC code as a string: map it to ours."""
        status = str(exc.status() or "").removeprefix("StatusCode.")
        message = f"Triton at {self._url} failed {doing}: {exc.message()}"
        if status == grpc.StatusCode.UNAVAILABLE.name:
            return BackendUnavailable(message, backend_id=self._id)
        if status == grpc.StatusCode.DEADLINE_EXCEEDED.name:
            return DeadlineExceeded(message)
        if status == grpc.StatusCode.CANCELLED.name:
            return Cancelled(message)
        if status == grpc.StatusCode.INVALID_ARGUMENT.name:
            return InvalidArgument(message)
        # The model may have been unloaded here but live elsewhere, and a full
        # queue here says nothing about other servers: both are worth a retry.
        retryable = status in {"NOT_FOUND", "RESOURCE_EXHAUSTED"}
        return BackendError(
            message, backend_id=self._id, code=status or "INTERNAL", retryable=retryable
        )


def spec_from_triton(
    metadata: Mapping[str, Any], config: Mapping[str, Any], versions: list[str]
) -> ModelSpec:
    """A ModelSpec from Triton's model metadata and config (both as JSON).

    Metadata gives the shapes as callers see them (batch dimension included);
    the config gives ``max_batch_size`` and is kept whole for ModelConfig.
    """

    def tensors(items: list[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                name=t["name"],
                datatype=DataType.parse(t["datatype"]),
                shape=tuple(int(d) for d in t.get("shape", [])),
            )
            for t in items
        )

    ordered = sorted((v for v in versions if v), key=lambda v: (len(v), v))
    return ModelSpec(
        name=metadata["name"],
        versions=tuple(ordered) or tuple(metadata.get("versions", ())),
        platform=metadata.get("platform", ""),
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tensors(metadata.get("inputs", [])),
        outputs=tensors(metadata.get("outputs", [])),
        config=dict(config),
    )
