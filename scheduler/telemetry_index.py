"""Telemetry as placement reads it: one column per backend, not one scan per decision.

The device monitor publishes a new immutable ``TelemetrySnapshot`` per poll.
``TelemetryIndex`` turns a snapshot into per-backend columns (numpy arrays
indexed by the backend's *slot*) that every model's candidate table gathers
from. Freshness is what makes this subtle: a reading is used only while
``age_s(now) <= max_age_s``, so the columns are a function of ``now`` as well
as of the snapshot. They change only at a few instants, though — when a new
snapshot arrives, or when one of the readings in use ages out — so the index
recomputes at those instants and otherwise answers in O(1):

- ``sync(snapshot, now)`` recomputes when the snapshot object is another one,
  when ``now`` passed ``valid_until`` (the last instant at which every
  reading in use is still fresh, found exactly with ``math.nextafter``, so the
  cached columns agree with a per-decision ``age_s(now) <= max_age_s`` test
  to the last bit), or when ``now`` is earlier than the last recompute;
- devices are grouped by backend once per snapshot: a device belongs to the
  backend whose id is its prefix up to a ``:`` (``triton@host:port:GPU-…``),
  found by trying each ``:`` of the device id against a dict of backend ids
  instead of testing every backend against every device; local NVML GPUs
  belong to every accelerator backend whose Triton runs on this host.

Each recompute bumps ``epoch``; candidate tables compare it with their own to
know when to re-gather. Unknown stays unknown: a backend with no fresh reading
gets NaN free memory and NaN age, and passes the utilization check.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from scheduler.telemetry.snapshot import BackendLoad, TelemetrySnapshot

_INF = math.inf


def is_local(target: str) -> bool:
    """Whether ``host:port`` names this host (so local NVML GPUs are its GPUs)."""
    host = target.rpartition(":")[0].strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def last_fresh(sampled_at: float, max_age_s: float) -> float:
    """The last ``now`` at which ``max(0, now - sampled_at) <= max_age_s`` holds.

    ``sampled_at + max_age_s`` rounded may be one step off in either direction;
    walk to the exact boundary so a cached verdict flips at the same instant a
    per-decision check would.
    """
    t = sampled_at + max_age_s
    while t - sampled_at > max_age_s:
        t = math.nextafter(t, -_INF)
    while math.nextafter(t, _INF) - sampled_at <= max_age_s:
        t = math.nextafter(t, _INF)
    return t


@dataclass(frozen=True, slots=True)
class BackendSlot:
    """What the index needs to know about one backend."""

    backend_id: str
    accelerator: bool  # GPU readings apply; the CPU tier has none
    local: bool  # its Triton runs on this host: local NVML GPUs are its own


class TelemetryIndex:
    """Per-backend telemetry columns, recomputed per snapshot and per expiry."""

    def __init__(self, *, max_age_s: float, max_gpu_utilization: float) -> None:
        self._max_age_s = max_age_s
        self._max_utilization = max_gpu_utilization
        self._slots: tuple[BackendSlot, ...] = ()
        self._owners: dict[tuple[str, bool], tuple[int, ...]] = {}
        self._accelerator_slots: dict[str, int] = {}
        self._snapshot: TelemetrySnapshot | None = None
        self._readings = _Readings.empty(0)
        self._regroup = True
        self._computed_at = _INF
        self.valid_until = -_INF
        self.epoch = 0
        #: Largest free memory among a backend's fresh GPUs (NaN: unknown).
        self.free_bytes: npt.NDArray[np.float64] = np.empty(0)
        #: False where a fresh reading shows every GPU above the utilization limit.
        self.utilization_ok: npt.NDArray[np.bool_] = np.empty(0, np.bool_)
        #: ``sampled_at`` of the freshest reading in use (NaN: none).
        self.sampled_at: npt.NDArray[np.float64] = np.empty(0)
        #: The backend's own queue report, where fresh (else None).
        self.loads: list[BackendLoad | None] = []

    def bind(self, slots: Sequence[BackendSlot]) -> None:
        """The fleet changed: these backends, in slot order. Forces a recompute."""
        self._slots = tuple(slots)
        self._owners = {}
        self._accelerator_slots = {s.backend_id: i for i, s in enumerate(slots) if s.accelerator}
        self._regroup = True
        self.valid_until = -_INF

    def sync(self, snapshot: TelemetrySnapshot | None, now: float) -> int:
        """Make the columns right for ``now``; returns the epoch they belong to."""
        if snapshot is self._snapshot and self._computed_at <= now <= self.valid_until:
            return self.epoch
        if snapshot is not self._snapshot or self._regroup:
            self._snapshot = snapshot
            self._regroup = False
            self._readings = self._flatten(snapshot)
        self._recompute(now)
        return self.epoch

    def _owners_of(self, device_id: str, nvml: bool) -> tuple[int, ...]:
        """Slots of the backends a GPU belongs to (memoized: ids outlive snapshots)."""
        found = self._owners.get((device_id, nvml))
        if found is not None:
            return found
        owners: set[int] = set()
        slot_of = self._accelerator_slots  # built once per fleet, not per device id
        colon = device_id.find(":")
        while colon >= 0:
            slot = slot_of.get(device_id[:colon])
            if slot is not None:
                owners.add(slot)
            colon = device_id.find(":", colon + 1)
        if nvml:
            owners.update(i for i, s in enumerate(self._slots) if s.accelerator and s.local)
        found = self._owners[(device_id, nvml)] = tuple(sorted(owners))
        return found

    def _flatten(self, snapshot: TelemetrySnapshot | None) -> _Readings:
        """One row per (backend, GPU reading), plus each backend's queue report."""
        readings = _Readings.empty(len(self._slots))
        if snapshot is None:
            return readings
        slot, sampled, free, utilization = [], [], [], []
        for device_id, device in snapshot.devices.items():
            if device.kind != "gpu":
                continue
            owners = self._owners_of(device_id, device.source == "nvml")
            for owner in owners:
                slot.append(owner)
                sampled.append(device.sampled_at)
                free.append(_or_nan(device.memory_free_bytes))
                utilization.append(_or_nan(device.utilization))
        loads = [snapshot.loads.get(s.backend_id) for s in self._slots]
        return _Readings(
            device_slot=np.array(slot, np.intp),
            device_sampled_at=np.array(sampled, np.float64),
            device_free=np.array(free, np.float64),
            device_utilization=np.array(utilization, np.float64),
            loads=loads,
            load_sampled_at=np.array([np.nan if x is None else x.sampled_at for x in loads]),
        )

    def _recompute(self, now: float) -> None:
        r = self._readings
        n = len(self._slots)
        max_age = self._max_age_s
        # The same arithmetic as ``age_s(now) <= max_age_s``, element by element.
        load_fresh = np.maximum(now - r.load_sampled_at, 0.0) <= max_age
        fresh = np.maximum(now - r.device_sampled_at, 0.0) <= max_age
        slot, sampled = r.device_slot[fresh], r.device_sampled_at[fresh]
        newest = np.full(n, -_INF)
        np.maximum.at(newest, slot, sampled)
        has_device = newest > -_INF
        # The devices' age wins over the queue report's, as the freshest reading.
        self.sampled_at = np.where(
            has_device, newest, np.where(load_fresh, r.load_sampled_at, np.nan)
        )
        free = np.full(n, np.nan)
        np.fmax.at(free, slot, r.device_free[fresh])  # fmax skips NaN (unknown)
        self.free_bytes = free
        lowest = np.full(n, _INF)
        np.fmin.at(lowest, slot, r.device_utilization[fresh])
        self.utilization_ok = (lowest <= self._max_utilization) | (lowest == _INF)
        fresh_loads = zip(r.loads, load_fresh.tolist(), strict=True)
        self.loads = [load if ok else None for load, ok in fresh_loads]
        used = np.concatenate((sampled, r.load_sampled_at[load_fresh]))
        # Freshness ends first for the oldest reading in use.
        self.valid_until = last_fresh(float(used.min()), max_age) if used.size else _INF
        self._computed_at = now
        self.epoch += 1


@dataclass(frozen=True, slots=True)
class _Readings:
    """A snapshot's readings, flattened by backend slot (one snapshot's worth)."""

    device_slot: npt.NDArray[np.intp]
    device_sampled_at: npt.NDArray[np.float64]
    device_free: npt.NDArray[np.float64]
    device_utilization: npt.NDArray[np.float64]
    loads: list[BackendLoad | None]
    load_sampled_at: npt.NDArray[np.float64]  # NaN: no report (never fresh)

    @staticmethod
    def empty(n: int) -> _Readings:
        nothing = np.empty(0)
        return _Readings(
            np.empty(0, np.intp), nothing, nothing, nothing, [None] * n, np.full(n, np.nan)
        )


def _or_nan(value: float | None) -> float:
    return np.nan if value is None else float(value)
