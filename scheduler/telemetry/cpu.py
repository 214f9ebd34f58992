"""This host's CPUs as one device (``"cpu:local"``), for the local CPU backends."""

from __future__ import annotations

import os
import platform
from pathlib import Path

from scheduler.telemetry.snapshot import DeviceSnapshot, ProviderSample

__all__ = ["CpuProvider", "available_cores", "read_meminfo"]


def available_cores() -> int:
    """Cores this process may run on (its affinity mask), which a container may narrow."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        # sched_getaffinity is Linux-only; elsewhere the machine's count is the best guess.
        return os.cpu_count() or 1


def read_meminfo(path: Path = Path("/proc/meminfo")) -> tuple[int | None, int | None]:
    """``(MemTotal, MemAvailable)`` in bytes from a meminfo file; ``None`` where absent."""
    values: dict[str, int] = {}
    try:
        text = path.read_text()
    except OSError:
        return None, None
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if key in ("MemTotal", "MemAvailable") and fields and fields[0].isdigit():
            # meminfo says "kB" but means KiB.
            scale = 1024 if len(fields) > 1 and fields[1] == "kB" else 1
            values[key] = int(fields[0]) * scale
    return values.get("MemTotal"), values.get("MemAvailable")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CpuProvider:
    """Reads load and memory of this host; ``name`` is ``"cpu"``.

    ``utilization`` is an estimate: the 1-minute load average divided by the cores
    this process may use, capped at 1. A load average counts runnable threads of
    every process on the host, so it sees contention from neighbours too, which is
    what a local backend competes with; it lags by design (an exponential average),
    fine for placement hints, not for per-request decisions. Memory comes from
    ``/proc/meminfo`` (``used = MemTotal - MemAvailable``) and is ``None`` where that
    file does not exist.
    """

    name = "cpu"

    def __init__(
        self,
        *,
        device_id: str = "cpu:local",
        host: str = "local",
        meminfo_path: Path = Path("/proc/meminfo"),
    ) -> None:
        self._device_id = device_id
        self._host = host
        self._meminfo_path = meminfo_path
        self._name = _cpu_name()

    def sample(self, now: float) -> ProviderSample:
        cores = available_cores()
        try:
            load_1m: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            load_1m = None
        total, available = read_meminfo(self._meminfo_path)
        used = total - available if total is not None and available is not None else None
        device = DeviceSnapshot(
            device_id=self._device_id,
            kind="cpu",
            source="cpu",
            sampled_at=now,
            host=self._host,
            name=self._name,
            memory_total_bytes=total,
            memory_used_bytes=max(0, used) if used is not None else None,
            memory_free_bytes=available,
            utilization=min(1.0, load_1m / cores) if load_1m is not None else None,
            cores=cores,
            load_1m=load_1m,
        )
        return ProviderSample(devices=(device,))

    def close(self) -> None:
        pass
