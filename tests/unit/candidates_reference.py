"""The candidate builder as it was before the incremental tables: the reference model.

It rebuilt every row per batch in Python, scanning every device of the
snapshot per backend; kept verbatim but for names, so that
tests/unit/test_candidates_model.py can check ``scheduler.candidates`` against
it over random state changes. The rules it implements: breaker and drain state, the
work each backend has in flight, learned service times, and telemetry — fresh
telemetry only: a stale or missing reading leaves a constraint unchecked and
adds no load, it never makes a device look idle or full.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence

import numpy as np

from scheduler.config import SchedulerConfig
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import BackendState
from scheduler.load import concurrency
from scheduler.placement import Candidates, Tier
from scheduler.spec import ModelSpec
from scheduler.telemetry.snapshot import DeviceSnapshot, TelemetrySnapshot


def _is_local(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]")
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReferenceBuilder:
    """One row per backend: availability, memory and load limits, queued work
    and predicted service time for this batch size."""

    def __init__(self, config: SchedulerConfig) -> None:
        self._config = config
        #: The telemetry age of each row of the last ``build``, as a decision states it.
        self.ages: list[float] = []

    def devices_of(
        self, state: BackendState, snapshot: TelemetrySnapshot | None, now: float
    ) -> list[DeviceSnapshot]:
        """Fresh GPU readings for a backend: its Triton's own metrics, or the
        local NVML GPUs when the Triton server runs on this host."""
        if snapshot is None or state.tier is Tier.CPU:
            return []
        max_age = self._config.telemetry_max_age_s
        prefix = f"{state.id}:"
        url = str(getattr(state.backend, "url", ""))
        local = _is_local(url) if url else False
        found = []
        for device_id, device in snapshot.devices.items():
            if device.kind != "gpu" or device.age_s(now) > max_age:
                continue
            if device_id.startswith(prefix) or (local and device.source == "nvml"):
                found.append(device)
        return found

    def build(
        self,
        spec: ModelSpec,
        rows: int,
        states: Sequence[BackendState],
        estimator: ServiceTimeEstimator,
        snapshot: TelemetrySnapshot | None,
        now: float,
    ) -> Candidates:
        n = len(states)
        cfg = self._config
        footprint = cfg.model_memory_bytes.get(spec.name, 0)
        tier = np.empty(n, np.int8)
        available = np.empty(n, np.bool_)
        memory_ok = np.ones(n, np.bool_)
        load_ok = np.empty(n, np.bool_)
        queued_s = np.empty(n, np.float64)
        service_s = np.empty(n, np.float64)
        age = np.full(n, np.nan)
        sampled_at = np.full(n, np.nan)
        for i, state in enumerate(states):
            tier[i] = state.tier
            available[i] = state.usable(now)
            predicted = estimator.predict(state.id, spec.name, rows)
            service_s[i] = math.nan if predicted is None else predicted
            single = estimator.predict(state.id, spec.name, 1) or 0.0
            ours = state.load.seconds(spec.name) / max(1, concurrency(state, spec))
            theirs = 0.0
            load = (
                snapshot.load(state.id, now, cfg.telemetry_max_age_s)
                if snapshot is not None
                else None
            )
            if load is not None:
                # Triton's queue holds other gateways' work too; ours is in it
                # as well, so take the larger view rather than the sum.
                theirs = load.pending_requests.get(spec.name, 0) * single
                age[i] = load.age_s(now)
                sampled_at[i] = load.sampled_at
            queued_s[i] = max(ours, theirs)
            devices = self.devices_of(state, snapshot, now)
            utilization_ok = True
            if devices:
                age[i] = min(d.age_s(now) for d in devices)
                sampled_at[i] = max(d.sampled_at for d in devices)
                free = [d.memory_free_bytes for d in devices if d.memory_free_bytes is not None]
                if footprint and free:
                    memory_ok[i] = max(free) >= footprint + cfg.memory_headroom_bytes
                busy = [d.utilization for d in devices if d.utilization is not None]
                utilization_ok = not busy or min(busy) <= cfg.max_gpu_utilization
            load_ok[i] = utilization_ok and state.in_flight < cfg.max_in_flight_per_backend
        self.ages = age.tolist()
        return Candidates(
            backend_ids=tuple(s.id for s in states),
            tier=tier,
            available=available,
            memory_ok=memory_ok,
            load_ok=load_ok,
            queued_s=queued_s,
            service_s=service_s,
            sampled_at=sampled_at,
        )
