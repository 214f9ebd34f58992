"""One view of the fleet, shared by the gateway worker processes of a host.

With several workers (the gateway's ``workers`` setting) each worker places its
own requests, but only one of them, the leader, probes the backends, re-reads
their models and polls device telemetry: N workers doing it would multiply that
load on every Triton by N. The leader writes what it learned to a file in a
private directory; the followers read it:

- **health**: each backend's breaker state as the leader sees it. A follower
  ejects a backend the leader ejected, and readmits one the leader's probe
  found healthy again (re-reading its models first), as the leader's own
  probe would. Passive health stays per worker: a follower still opens its
  breaker on its own failed calls and closes it on a successful trial call.
- **models**: a digest of each backend's models; when it changes, a follower
  re-reads that backend's models once, instead of every worker polling.
- **telemetry**: the leader's device readings and backend loads, with their
  original sample times (the monotonic clock is the host's, so ages stay
  right); followers read them through ``SharedTelemetryProvider``.

The file is JSON, replaced atomically (write, then rename), so a reader sees
a whole version or the previous one. DNS discovery is not shared: each worker
resolves its ``dns:///`` names itself (resolving is not load on a backend).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from scheduler.fleet import BackendState, Fleet
from scheduler.health import BreakerState
from scheduler.telemetry.snapshot import BackendLoad, DeviceSnapshot, ProviderSample
from scheduler.telemetry.snapshot import TelemetrySnapshot as Snapshot

log = logging.getLogger(__name__)

Role = Literal["leader", "follower"]


def models_digest(state: BackendState) -> str:
    """What a backend serves, in a few bytes: a change means "re-read its models"."""
    served = sorted(
        (name, spec.versions, spec.max_batch_size) for name, spec in state.backend.models().items()
    )
    return hashlib.sha256(repr(served).encode()).hexdigest()[:16]


class SharedView:
    """The shared file: ``publish`` (the leader) and ``read`` (followers)."""

    def __init__(self, path: Path, role: Role) -> None:
        self.path = path
        self.role = role
        self._seen: tuple[int, int] | None = None  # (inode, mtime) of the last read
        self._models_seen: dict[str, str] = {}

    # -- the leader ----------------------------------------------------------
    def publish(self, fleet: Fleet, telemetry: Snapshot | None, now: float) -> None:
        state = {
            "written_at": now,
            "backends": {
                s.id: {
                    "breaker": s.breaker.state.value,
                    "discovered": s.discovered,
                    "models": models_digest(s),
                    "error": s.breaker.last_error,
                }
                for s in fleet
            },
            "devices": [asdict(d) for d in telemetry.devices.values()] if telemetry else [],
            "loads": [_load_dict(load) for load in telemetry.loads.values()] if telemetry else [],
        }
        partial = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        partial.write_text(json.dumps(state))
        os.replace(partial, self.path)

    # -- followers -----------------------------------------------------------
    def read(self, *, changed_only: bool = True) -> dict[str, Any] | None:
        """The published state; None if there is none yet (or, with
        ``changed_only``, if it is the version read last time)."""
        try:
            stat = self.path.stat()
            version = (stat.st_ino, stat.st_mtime_ns)
            if changed_only and version == self._seen:
                return None
            state: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # not written yet, or being replaced: next time
        if changed_only:
            self._seen = version
        return state

    async def follow(self, fleet: Fleet, now: float) -> None:
        """Apply the leader's health verdicts and model changes to this worker's fleet."""
        state = self.read()
        if state is None:
            return
        changed = False
        for backend_id, verdict in state.get("backends", {}).items():
            local = fleet.get(backend_id)
            if local is None:  # not (yet) known here, e.g. DNS resolved differently
                continue
            changed |= await self._apply(fleet, local, verdict, now)
        if changed:
            fleet.changed()

    async def _apply(
        self, fleet: Fleet, state: BackendState, verdict: dict[str, Any], now: float
    ) -> bool:
        breaker = state.breaker
        if verdict["breaker"] == BreakerState.OPEN.value:
            if breaker.state is BreakerState.CLOSED:
                breaker.record_failure(
                    now, f"the leader ejected it: {verdict['error']}", fatal=True
                )
                log.warning("backend %s ejected (by the leader's probe)", state.id)
                return True
            return False
        if verdict["breaker"] != BreakerState.CLOSED.value or not verdict["discovered"]:
            return False
        # Until told otherwise, what this worker read itself at start is current.
        seen = self._models_seen.setdefault(state.id, models_digest(state))
        models_changed = seen != verdict["models"]
        if breaker.state is BreakerState.CLOSED and state.discovered and not models_changed:
            return False
        if not await fleet.rediscover_one(state):
            return False
        self._models_seen[state.id] = verdict["models"]
        if breaker.state is not BreakerState.CLOSED:
            log.info("backend %s is healthy again (by the leader's probe)", state.id)
        breaker.record_success()
        return True


class SharedTelemetryProvider:
    """A telemetry provider that reads the leader's published readings: a
    follower's ``DeviceMonitor`` polls this instead of NVML and every Triton."""

    def __init__(self, view: SharedView) -> None:
        self._view = view

    @property
    def name(self) -> str:
        return "shared"

    def sample(self, now: float) -> ProviderSample:
        state = self._view.read(changed_only=False)
        if state is None:
            raise RuntimeError(f"the leader has not published telemetry to {self._view.path} yet")
        devices = []
        for values in state.get("devices", []):
            values["processes"] = tuple(tuple(pair) for pair in values.get("processes", ()))
            devices.append(DeviceSnapshot(**values))
        loads = [BackendLoad(**values) for values in state.get("loads", [])]
        return ProviderSample(devices=tuple(devices), loads=tuple(loads))

    def close(self) -> None:
        return None


def _load_dict(load: BackendLoad) -> dict[str, Any]:
    return {
        "backend_id": load.backend_id,
        "sampled_at": load.sampled_at,
        "pending_requests": dict(load.pending_requests),
        "queue_us": dict(load.queue_us),
        "compute_infer_us": dict(load.compute_infer_us),
        "request_success": dict(load.request_success),
    }
