"""Simulated GPUs: configurable memory, speed and utilization over time.

For tests and the discrete-event simulator: readings are a pure function of the
``now`` each ``sample`` is given (the monitor's clock, a ``ManualClock`` in tests)
plus the allocations made so far, so a test steps time and knows exactly what the
next snapshot says.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.telemetry.snapshot import DeviceSnapshot, ProviderSample

__all__ = ["Curve", "SimulatedGpu", "SimulatedOutOfMemory", "SimulatedProvider"]

#: Utilization over clock time: a constant, a function of ``now``, or ``(t, value)``
#: points interpolated linearly and held flat before the first and after the last.
Curve = float | Callable[[float], float] | Sequence[tuple[float, float]]


class SimulatedOutOfMemory(RuntimeError):
    """An allocation would exceed a simulated GPU's memory."""


@dataclass(frozen=True, slots=True)
class SimulatedGpu:
    """One simulated GPU.

    ``speed`` is relative throughput (1.0 = the reference device; 2.0 runs a batch in
    half the time); telemetry does not use it, the simulator's service-time model
    reads it through ``SimulatedProvider.gpu``. ``power_w`` is interpolated between
    ``idle_power_w`` and ``max_power_w`` by utilization when both are given.
    """

    device_id: str
    memory_total_bytes: int
    base_memory_used_bytes: int = 0
    utilization: Curve = 0.0
    speed: float = 1.0
    name: str = "Simulated GPU"
    host: str = "sim"
    idle_power_w: float | None = None
    max_power_w: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.base_memory_used_bytes <= self.memory_total_bytes:
            raise ValueError(
                f"{self.device_id}: base_memory_used_bytes must be within 0..memory_total_bytes"
            )
        if self.speed <= 0:
            raise ValueError(f"{self.device_id}: speed must be > 0, got {self.speed!r}")
        curve = self.utilization
        if not callable(curve) and not isinstance(curve, float | int):
            points = tuple((float(t), float(v)) for t, v in curve)
            if not points:
                raise ValueError(f"{self.device_id}: a utilization curve needs at least one point")
            if any(b[0] <= a[0] for a, b in itertools.pairwise(points)):
                raise ValueError(f"{self.device_id}: curve times must be strictly increasing")
            object.__setattr__(self, "utilization", points)

    def utilization_at(self, now: float) -> float:
        """The curve's value at ``now``, clipped to 0..1."""
        curve = self.utilization
        if callable(curve):
            value = float(curve(now))
        elif isinstance(curve, float | int):
            value = float(curve)
        else:
            times = [t for t, _ in curve]
            values = [v for _, v in curve]
            value = float(np.interp(now, times, values))
        return min(1.0, max(0.0, value))


class SimulatedProvider:
    """Telemetry for a set of ``SimulatedGpu``; ``name`` defaults to ``"simulated"``.

    ``memory_used = base_memory_used_bytes + allocations``; ``allocate`` and ``free``
    model the footprint of models loaded and unloaded, and an allocation that does
    not fit raises ``SimulatedOutOfMemory`` like a real device would. ``fail_with``
    makes ``sample`` raise (a telemetry outage) until cleared with ``None``. All
    methods are thread-safe: the monitor samples from a worker thread while the
    simulation allocates from the event loop.
    """

    def __init__(self, gpus: Iterable[SimulatedGpu], *, name: str = "simulated") -> None:
        self.name = name
        self._gpus = {gpu.device_id: gpu for gpu in gpus}
        self._allocated = dict.fromkeys(self._gpus, 0)
        self._failure: Exception | None = None
        self._lock = threading.Lock()

    def gpu(self, device_id: str) -> SimulatedGpu:
        return self._gpus[device_id]

    def allocated_bytes(self, device_id: str) -> int:
        with self._lock:
            return self._allocated[device_id]

    def allocate(self, device_id: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        gpu = self._gpus[device_id]
        with self._lock:
            used = gpu.base_memory_used_bytes + self._allocated[device_id]
            if used + nbytes > gpu.memory_total_bytes:
                raise SimulatedOutOfMemory(
                    f"{device_id}: cannot allocate {nbytes} bytes, "
                    f"{gpu.memory_total_bytes - used} of {gpu.memory_total_bytes} free"
                )
            self._allocated[device_id] += nbytes

    def free(self, device_id: str, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        with self._lock:
            allocated = self._allocated[device_id]
            if nbytes > allocated:
                raise ValueError(f"{device_id}: freeing {nbytes} bytes, only {allocated} allocated")
            self._allocated[device_id] -= nbytes

    def fail_with(self, error: Exception | None) -> None:
        """Make every ``sample`` raise ``error`` (``None``: answer again)."""
        with self._lock:
            self._failure = error

    def sample(self, now: float) -> ProviderSample:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            allocated = dict(self._allocated)
        return ProviderSample(
            devices=tuple(
                self._read(gpu, allocated[gpu.device_id], now) for gpu in self._gpus.values()
            )
        )

    def close(self) -> None:
        pass

    @staticmethod
    def _read(gpu: SimulatedGpu, allocated: int, now: float) -> DeviceSnapshot:
        used = gpu.base_memory_used_bytes + allocated
        utilization = gpu.utilization_at(now)
        power = None
        if gpu.idle_power_w is not None and gpu.max_power_w is not None:
            power = gpu.idle_power_w + utilization * (gpu.max_power_w - gpu.idle_power_w)
        return DeviceSnapshot(
            device_id=gpu.device_id,
            kind="gpu",
            source="simulated",
            sampled_at=now,
            host=gpu.host,
            name=gpu.name,
            uuid=gpu.device_id,
            memory_total_bytes=gpu.memory_total_bytes,
            memory_used_bytes=used,
            memory_free_bytes=gpu.memory_total_bytes - used,
            utilization=utilization,
            power_w=power,
        )
