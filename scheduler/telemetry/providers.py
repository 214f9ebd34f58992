"""The provider protocol: one source of device readings (NVML, Triton metrics, CPU, simulated).

A provider is deliberately synchronous: NVML calls, HTTP requests and /proc reads
block, and the monitor runs each ``sample`` on a worker thread with a timeout, so a
provider never has to know about the event loop. Implementations:

- ``scheduler.telemetry.nvml.NvmlProvider``: local GPUs through the NVIDIA driver;
- ``scheduler.telemetry.triton_metrics.TritonMetricsProvider``: a Triton's Prometheus
  endpoint (GPUs on remote hosts, per-model queues);
- ``scheduler.telemetry.cpu.CpuProvider``: this host's CPUs, for local backends;
- ``scheduler.telemetry.simulated.SimulatedProvider``: configurable fake GPUs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from scheduler.telemetry.snapshot import ProviderSample

__all__ = ["ProviderSample", "TelemetryProvider"]


@runtime_checkable
class TelemetryProvider(Protocol):
    """Reads devices and backend loads on demand.

    ``name`` is unique within one monitor (it keys the monitor's error report).
    ``sample(now)`` blocks, is called from a worker thread (never two at once for one
    provider), stamps every reading with ``now`` and raises when the source cannot be
    read; the monitor then keeps the previous readings and lets them age.
    ``close`` releases what the provider holds and must be safe to call twice.
    """

    @property
    def name(self) -> str: ...

    def sample(self, now: float) -> ProviderSample: ...

    def close(self) -> None: ...
