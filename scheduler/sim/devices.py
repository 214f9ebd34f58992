"""Simulated devices: what a GPU (behind a Triton server) or a CPU worker pool
does with the calls it is sent, on the simulator's virtual clock.

A device runs at most ``instances`` calls at once (Triton's instance_group
count, or CPU worker threads); later calls wait in its FIFO queue — the
queue Triton reports as ``pending_requests``. A call of ``rows`` takes
``(fixed_s + per_row_s * rows) / speed``, times log-normal noise, times the
``slow`` factor of a failure window that covers its start. With
``reply_s``, the gateway has a call's answer that long after the device is
done with it (the reply's way back and the gateway's wake-up on it): the
device starts its next call at once, while the gateway still counts the
last one in flight.

Failures are windows of virtual time: ``dead`` refuses every call at once
(connection refused: retryable elsewhere), ``hung`` accepts calls and never
answers (the caller times out at its deadline), ``slow`` multiplies service
time. A window's end is the recovery.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scheduler.backends.base import DecodedTensorsOnly, Device, DeviceKind
from scheduler.errors import Unavailable
from scheduler.placement import Tier
from scheduler.request import Parameters
from scheduler.spec import ModelSpec, Tensor

FailureKind = Literal["dead", "hung", "slow"]


@dataclass(frozen=True, slots=True)
class DeviceType:
    """A kind of device: its cost shape per batch and its memory."""

    name: str
    fixed_s: float
    per_row_s: float
    memory_bytes: int = 80 * 1024**3
    tier: Tier = Tier.ACCELERATOR


@dataclass(frozen=True, slots=True)
class Failure:
    kind: FailureKind
    start_s: float
    end_s: float
    factor: float = 4.0  # for ``slow``


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """One device in a scenario: its type, parallelism, speed and failures.

    ``used_bytes``: memory other tenants hold; a device whose free memory is
    below a model's footprint plus headroom is reported as such by telemetry.
    """

    id: str
    type: DeviceType
    instances: int = 1
    speed: float = 1.0
    used_bytes: int = 0
    failures: tuple[Failure, ...] = ()
    models: tuple[str, ...] | None = None  # None: every model of the scenario
    #: Whether its server reports service-time statistics from before the run
    #: (``service_time_hints``), as a Triton server that has been serving does.
    warm: bool = True
    #: Seconds from the device finishing a call to the gateway having its
    #: answer; the device is free meanwhile (0: the answer is there at once).
    reply_s: float = 0.0


class SimBackend(DecodedTensorsOnly):
    """The ``Backend`` the scheduler's fleet holds for a simulated device.

    The simulator never awaits it: calls go to ``SimDevice`` on virtual time.
    It exists so the real ``Fleet``, registry and candidate tables are built
    exactly as the live gateway builds them, through the protocol alone.
    """

    def __init__(self, spec: DeviceSpec, models: Sequence[ModelSpec]) -> None:
        self._spec = spec
        config = {"instance_group": [{"count": spec.instances}]}
        self._models = {m.name: _with_config(m, config) for m in models}

    @property
    def id(self) -> str:
        return self._spec.id

    @property
    def device(self) -> Device:
        kind = DeviceKind.GPU if self.tier is Tier.ACCELERATOR else DeviceKind.CPU
        return Device(kind, host=self._spec.id, name=self._spec.type.name)

    @property
    def tier(self) -> Tier:
        return self._spec.type.tier

    @property
    def endpoint(self) -> str:
        return f"{self._spec.id}:8001" if self.tier is Tier.ACCELERATOR else ""

    @property
    def workers(self) -> int:
        return self._spec.instances

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        """What Triton's statistics would say after warm-up: the mean time of a
        batch of one and of a full batch, per model (a CPU pool has none)."""
        if self.tier is not Tier.ACCELERATOR or not self._spec.warm:
            return ()
        kind, speed = self._spec.type, self._spec.speed
        return [
            (name, rows, (kind.fixed_s + kind.per_row_s * rows) / speed)
            for name, spec in self._models.items()
            for rows in sorted({1, max(1, spec.max_batch_size)})
        ]

    def models(self) -> Mapping[str, ModelSpec]:
        return self._models

    async def start(self) -> None:
        return None

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
        raise Unavailable("a simulated backend runs on the simulator's clock only")

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


def _with_config(spec: ModelSpec, config: Mapping[str, object]) -> ModelSpec:
    return ModelSpec(
        name=spec.name,
        inputs=spec.inputs,
        outputs=spec.outputs,
        versions=spec.versions,
        platform=spec.platform,
        max_batch_size=spec.max_batch_size,
        config={**spec.config, **config},
    )


@dataclass(slots=True)
class Call:
    """One batch sent to a device by one gateway replica."""

    model: str
    rows: int
    sent_at: float
    token: object  # the replica's own record of the call
    started_at: float = math.nan


@dataclass(slots=True)
class SimDevice:
    """A device's live state: calls running and waiting per model, busy time so far.

    As in Triton, each model has its own ``instances`` and its own queue on a
    device: models do not wait for each other (how they share the GPU's
    compute is not modelled).
    """

    spec: DeviceSpec
    running: dict[str, int] = field(default_factory=dict)
    waiting: dict[str, collections.deque[tuple[Call, Any]]] = field(default_factory=dict)
    busy_s: float = 0.0  # service time summed over calls (instances overlap)
    served_rows: int = 0
    calls: int = 0  # calls started
    waited_s: float = 0.0  # time calls spent in its queue before they started
    active: int = 0  # calls running, all models
    active_since: float = 0.0
    occupied_s: float = 0.0  # time with at least one call running: its utilization

    def started(self, now: float) -> None:
        if self.active == 0:
            self.active_since = now
        self.active += 1

    def finished(self, now: float) -> None:
        self.active -= 1
        if self.active == 0:
            self.occupied_s += now - self.active_since

    def pending_by_model(self) -> dict[str, int]:
        """Calls waiting per model (Triton's ``nv_inference_pending_request_count``)."""
        return {model: len(queue) for model, queue in self.waiting.items() if queue}

    def failure_at(self, now: float) -> Failure | None:
        if not self.spec.failures:  # the common case: a device that never fails
            return None
        for failure in self.spec.failures:
            if failure.start_s <= now < failure.end_s:
                return failure
        return None

    def service_s(self, rows: int, now: float, noise: float) -> float:
        kind = self.spec.type
        seconds = (kind.fixed_s + kind.per_row_s * rows) / self.spec.speed * noise
        failure = self.failure_at(now) if self.spec.failures else None
        if failure is not None and failure.kind == "slow":
            seconds *= failure.factor
        return seconds

    def free_bytes(self, footprint: int) -> int:
        return max(0, self.spec.type.memory_bytes - self.spec.used_bytes - footprint)


def noise_source(seed: int, sigma: float) -> collections.abc.Iterator[float]:
    """Log-normal service-time noise with median 1, drawn in blocks."""
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.lognormal(0.0, sigma, 4096).tolist() if sigma > 0 else [1.0] * 4096
