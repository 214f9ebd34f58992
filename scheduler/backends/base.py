"""The Backend protocol: one place that runs models (a Triton server, a local CPU pool)."""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from scheduler.errors import Unimplemented
from scheduler.placement import Tier
from scheduler.request import Parameters
from scheduler.spec import ModelSpec, Tensor


class DeviceKind(enum.Enum):
    GPU = "gpu"
    CPU = "cpu"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Device:
    """Where a backend's work runs. ``host`` is the endpoint for remote devices."""

    kind: DeviceKind
    host: str = "local"
    index: int = 0
    name: str = ""


@runtime_checkable
class Backend(Protocol):
    """Runs models. Implementations: ``TritonBackend``, ``CpuBackend``, test fakes.

    ``infer`` receives whole (possibly batched) numpy tensors and returns the
    outputs by name. It raises only errors of ``scheduler.errors``: a backend
    translates its third-party errors itself. ``deadline`` is absolute on the
    monotonic clock; a backend must not run past it.

    A backend that speaks KServe v2 itself (``forwards_wire``) also runs a
    single request in its wire form with ``infer_wire``: the caller's encoded
    ``ModelInferRequest`` in, the server's encoded ``ModelInferResponse`` out,
    with no tensor decoded or encoded on the way. Such a backend also streams
    (``stream_wire``) the responses of a decoupled model's request.

    Everything the scheduler reads about a backend is declared here, so a new
    runtime (``OnnxBackend``) fits in without the scheduler naming it: its
    ``tier`` (an accelerator, or the CPU tier that takes spills), its
    ``endpoint`` (what DNS discovery matched it by, shown in traces and the
    admin view; "" for an in-process backend), ``workers`` (calls it runs at
    once when a model's config gives no ``instance_group``) and
    ``service_time_hints`` (priors for the service-time estimator).
    """

    @property
    def id(self) -> str: ...

    @property
    def device(self) -> Device: ...

    @property
    def tier(self) -> Tier:
        """Accelerators are preferred; the CPU tier takes work as a spill."""
        ...

    @property
    def endpoint(self) -> str:
        """``host:port`` of a remote server; "" for an in-process backend."""
        ...

    @property
    def workers(self) -> int:
        """Calls of one model it runs at once, unless the model's config says."""
        ...

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        """(model, batch size, seconds) known before the gateway measured any."""
        ...

    def models(self) -> Mapping[str, ModelSpec]:
        """The models this backend serves now, by name."""
        ...

    async def start(self) -> None:
        """Connect and discover models. Raises BackendUnavailable if unreachable."""
        ...

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
    ) -> dict[str, Tensor]: ...

    @property
    def forwards_wire(self) -> bool:
        """Whether ``infer_wire`` may be called."""
        ...

    async def infer_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> bytes:
        """Run one encoded ``ModelInferRequest``; the encoded ``ModelInferResponse``."""
        ...

    def stream_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        """Run one encoded ``ModelInferRequest`` of a decoupled model; its
        responses, encoded ``ModelStreamInferResponse`` messages, as they come. The
        iterator ends after the request's last response; closing it early
        cancels the request on the backend."""
        ...

    async def health(self) -> bool:
        """Whether the backend is live and ready now."""
        ...

    async def aclose(self) -> None: ...


class DecodedTensorsOnly:
    """Mixin for backends that run decoded tensors only: no ``infer_wire``."""

    forwards_wire: bool = False

    async def infer_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> bytes:
        raise Unimplemented(f"this backend does not take encoded requests (model '{model.name}')")

    async def stream_wire(
        self,
        model: ModelSpec,
        request: bytes,
        *,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> AsyncIterator[bytes]:
        raise Unimplemented(f"this backend does not stream responses (model '{model.name}')")
        yield b""  # pragma: no cover (makes this an async generator)
