"""Immutable telemetry values: what one device, one backend's queues, and the fleet look like.

Everything here is a frozen dataclass whose mappings are read-only views over private
copies, so a snapshot handed to the placement policy can be read from any thread
without locks and never changes under the reader. "Unknown" is ``None`` throughout:
a number that could not be read, or that is too old to trust, is never reported as
zero, because zero would look idle and attract work.

This module imports only the standard library (see ``scheduler/telemetry/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Literal

DeviceKind = Literal["gpu", "cpu"]
Source = Literal["nvml", "triton-metrics", "cpu", "simulated"]


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    # A copy first: a proxy over the caller's dict would still change with it.
    return MappingProxyType(dict(mapping))


def _check_fraction(name: str, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1 or None, got {value!r}")


def _check_bytes(name: str, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {value!r}")


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """One device as one provider saw it at ``sampled_at`` (monotonic seconds).

    ``device_id`` is unique across the fleet and says where the reading came from:
    ``"nvml:GPU-<uuid>"``, ``"triton@host:port:GPU-<uuid>"``, ``"cpu:local"``.
    ``utilization`` is the fraction of time the device was busy (0..1);
    ``memory_utilization`` is NVML's memory-controller busy fraction, not the share
    of memory in use. ``processes`` holds ``(pid, used_bytes)`` pairs, ``used_bytes``
    being ``None`` where the driver does not say. ``cores`` and ``load_1m`` are set
    for CPUs only.
    """

    device_id: str
    kind: DeviceKind
    source: Source
    sampled_at: float
    host: str = "local"
    name: str = ""
    uuid: str = ""
    memory_total_bytes: int | None = None
    memory_used_bytes: int | None = None
    memory_free_bytes: int | None = None
    utilization: float | None = None
    memory_utilization: float | None = None
    power_w: float | None = None
    processes: tuple[tuple[int, int | None], ...] = ()
    cores: int | None = None
    load_1m: float | None = None

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        _check_fraction("utilization", self.utilization)
        _check_fraction("memory_utilization", self.memory_utilization)
        _check_bytes("memory_total_bytes", self.memory_total_bytes)
        _check_bytes("memory_used_bytes", self.memory_used_bytes)
        _check_bytes("memory_free_bytes", self.memory_free_bytes)
        # Accept any iterable of pairs but store a tuple, so the snapshot stays immutable.
        object.__setattr__(self, "processes", tuple((int(p), u) for p, u in self.processes))

    def age_s(self, now: float) -> float:
        """Seconds since the reading; never negative (a reading is not from the future)."""
        return max(0.0, now - self.sampled_at)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (for the admin view and ``--json`` output)."""
        values = asdict(self)
        values["processes"] = [list(pair) for pair in self.processes]
        return values


@dataclass(frozen=True, slots=True)
class BackendLoad:
    """What a backend's own metrics say about its queues, per model name.

    ``pending_requests`` is a gauge (requests waiting now). ``queue_us``,
    ``compute_infer_us`` and ``request_success`` are cumulative counters since the
    backend started: a reader takes differences between two snapshots to get rates
    and mean durations. Versions of one model are summed.
    """

    backend_id: str
    sampled_at: float
    pending_requests: Mapping[str, int] = field(default_factory=dict)
    queue_us: Mapping[str, int] = field(default_factory=dict)
    compute_infer_us: Mapping[str, int] = field(default_factory=dict)
    request_success: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("pending_requests", "queue_us", "compute_infer_us", "request_success"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def models(self) -> frozenset[str]:
        """Every model any of the series mentions."""
        return frozenset(
            (*self.pending_requests, *self.queue_us, *self.compute_infer_us, *self.request_success)
        )

    @property
    def total_pending(self) -> int:
        return sum(self.pending_requests.values())

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.sampled_at)


@dataclass(frozen=True, slots=True)
class ProviderSample:
    """One provider's answer to one poll: the devices it sees and the loads it reports."""

    devices: tuple[DeviceSnapshot, ...] = ()
    loads: tuple[BackendLoad, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "loads", tuple(self.loads))


@dataclass(frozen=True, slots=True)
class TelemetrySnapshot:
    """The fleet at ``taken_at``: the latest reading of every device and backend queue.

    Entries keep their own ``sampled_at``; a provider that stops answering leaves its
    last readings here, ageing. Readers ask with a ``max_age_s``: an entry older than
    that is *unknown* (``None``), never idle, so the policy can tell "no data" from
    "nothing to do".
    """

    devices: Mapping[str, DeviceSnapshot] = field(default_factory=dict)
    loads: Mapping[str, BackendLoad] = field(default_factory=dict)
    taken_at: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "devices", _frozen(self.devices))
        object.__setattr__(self, "loads", _frozen(self.loads))

    def age_s(self, device_id: str, now: float) -> float | None:
        """Seconds since ``device_id`` was read; ``None`` for a device never seen."""
        device = self.devices.get(device_id)
        return None if device is None else device.age_s(now)

    def is_fresh(self, device_id: str, now: float, max_age_s: float) -> bool:
        age = self.age_s(device_id, now)
        return age is not None and age <= max_age_s

    def device(self, device_id: str, now: float, max_age_s: float) -> DeviceSnapshot | None:
        """The reading if it is fresh enough; ``None`` (unknown) otherwise."""
        return self.devices[device_id] if self.is_fresh(device_id, now, max_age_s) else None

    def fresh_devices(self, now: float, max_age_s: float) -> Mapping[str, DeviceSnapshot | None]:
        """Every known device; stale ones map to ``None`` (unknown, not idle)."""
        return MappingProxyType(
            {
                device_id: device if device.age_s(now) <= max_age_s else None
                for device_id, device in self.devices.items()
            }
        )

    def load(self, backend_id: str, now: float, max_age_s: float) -> BackendLoad | None:
        """The backend's queue report if fresh enough; ``None`` (unknown) otherwise."""
        load = self.loads.get(backend_id)
        return load if load is not None and load.age_s(now) <= max_age_s else None
