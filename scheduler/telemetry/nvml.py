"""Local GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``).

Run ``python3 -m scheduler.telemetry.nvml [--json] [--samples N --interval S]`` on a
GPU host to print what the provider reads. This module imports only the standard
library, ``scheduler.clock`` and ``scheduler.telemetry.snapshot`` (and ``pynvml`` when
first sampled), so it runs on a bare GPU host with just numpy and pynvml installed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from scheduler.clock import MonotonicClock
from scheduler.telemetry.snapshot import DeviceSnapshot, ProviderSample

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that mean "this host has no usable NVIDIA driver" rather than a fault.
_NO_DRIVER_ERRORS = ("NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded")


def _text(value: str | bytes) -> str:
    # Older pynvml releases return bytes for names and UUIDs.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class NvmlProvider:
    """Reads every local GPU through NVML; ``name`` is ``"nvml"``.

    NVML is initialised lazily on the first ``sample`` and shut down in ``close``.
    When initialisation fails (no driver, as on every development and CI machine
    here, or no ``pynvml``), one clear line is logged, ``sample`` returns no devices,
    and initialisation is retried only every ``retry_init_s`` seconds of the ``now``
    passed in, so a CPU-only host pays nothing per poll and does not log per poll.
    A log line is written only when the state changes (unavailable / N GPUs).

    Per device the UUID is required (it keys the device: ``"nvml:<uuid>"``); every
    other field is read on its own and becomes ``None`` when NVML says it is not
    supported or not permitted (power on some boards, processes in containers), so
    one missing counter never hides the rest. ``library`` takes a stand-in for the
    ``pynvml`` module (tests); by default ``pynvml`` is imported on first use.
    Calls are serialised by a lock: NVML is thread-safe, but init/shutdown are not
    meant to race with queries.
    """

    name = "nvml"

    def __init__(
        self, *, host: str = "local", retry_init_s: float = 300.0, library: Any = None
    ) -> None:
        self._host = host
        self._retry_init_s = retry_init_s
        self._nvml: Any = library
        self._lock = threading.Lock()
        self._initialised = False
        self._closed = False
        self._next_init_at: float | None = None
        self._state = ""
        self._device_warnings: set[str] = set()

    @property
    def available(self) -> bool:
        """True once NVML is initialised (a driver answered)."""
        return self._initialised

    def sample(self, now: float) -> ProviderSample:
        with self._lock:
            if not self._ensure_initialised(now):
                return ProviderSample()
            nvml = self._nvml
            try:
                count = int(nvml.nvmlDeviceGetCount())
            except nvml.NVMLError as exc:
                raise RuntimeError(f"NVML: cannot count GPUs: {exc}") from exc
            devices = [d for i in range(count) if (d := self._read_device(i, now)) is not None]
            self._announce(
                f"gpus:{len(devices)}",
                logging.INFO,
                f"NVML: {len(devices)} GPU(s): " + ", ".join(d.name or d.uuid for d in devices)
                if devices
                else "NVML: driver loaded but no GPUs visible; serving on CPU",
            )
            return ProviderSample(devices=tuple(devices))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._initialised:
                self._initialised = False
                try:
                    self._nvml.nvmlShutdown()
                except Exception as exc:  # shutting down: nothing left to do about it
                    log.debug("NVML: shutdown failed: %s", exc)

    def _ensure_initialised(self, now: float) -> bool:
        if self._initialised:
            return True
        if self._closed or (self._next_init_at is not None and now < self._next_init_at):
            return False
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._nvml.nvmlInit()
        except Exception as exc:
            # Any failure here (ImportError, NVMLError, OSError) means no local GPUs.
            self._next_init_at = now + self._retry_init_s
            no_driver = type(exc).__name__ in _NO_DRIVER_ERRORS
            reason = f"{exc}" if no_driver else f"{type(exc).__name__}: {exc}"
            what = "no NVIDIA driver on this host" if no_driver else "cannot initialise"
            self._announce(
                "unavailable",
                logging.WARNING,
                f"NVML: {what} ({reason}); no local GPUs, serving on CPU",
            )
            return False
        self._initialised = True
        return True

    def _announce(self, state: str, level: int, message: str) -> None:
        if state != self._state:
            self._state = state
            log.log(level, "%s", message)

    def _read_device(self, index: int, now: float) -> DeviceSnapshot | None:
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        except nvml.NVMLError as exc:
            # A lost or inaccessible GPU is left out; say so once, not every poll.
            key = f"{index}:{exc}"
            if key not in self._device_warnings:
                self._device_warnings.add(key)
                log.warning("NVML: GPU %d unreadable, left out: %s", index, exc)
            return None
        name = self._field(nvml.nvmlDeviceGetName, handle)
        memory = self._field(nvml.nvmlDeviceGetMemoryInfo, handle)
        rates = self._field(nvml.nvmlDeviceGetUtilizationRates, handle)
        power_mw = self._field(nvml.nvmlDeviceGetPowerUsage, handle)
        processes = self._field(nvml.nvmlDeviceGetComputeRunningProcesses, handle)
        return DeviceSnapshot(
            device_id=f"nvml:{uuid}",
            kind="gpu",
            source="nvml",
            sampled_at=now,
            host=self._host,
            name=_text(name) if name is not None else "",
            uuid=uuid,
            memory_total_bytes=int(memory.total) if memory is not None else None,
            memory_used_bytes=int(memory.used) if memory is not None else None,
            memory_free_bytes=int(memory.free) if memory is not None else None,
            utilization=min(1.0, rates.gpu / 100.0) if rates is not None else None,
            memory_utilization=min(1.0, rates.memory / 100.0) if rates is not None else None,
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            processes=tuple(
                (int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
                for p in processes or ()
            ),
        )

    def _field(self, read: Callable[[Any], T], handle: Any) -> T | None:
        try:
            return read(handle)
        except self._nvml.NVMLError as exc:
            # NotSupported / NoPermission are normal on some boards: unknown, not zero.
            log.debug("NVML: %s unavailable: %s", getattr(read, "__name__", read), exc)
            return None


def _format(device: DeviceSnapshot) -> str:
    gib = 1024.0**3

    def amount(value: int | None) -> str:
        return "?" if value is None else f"{value / gib:.2f}"

    def percent(value: float | None) -> str:
        return "?" if value is None else f"{value:.0%}"

    power = "?" if device.power_w is None else f"{device.power_w:.1f} W"
    processes = ", ".join(
        f"{pid} ({'?' if used is None else f'{used / 1024**2:.0f} MiB'})"
        for pid, used in device.processes
    )
    return (
        f"{device.uuid}  {device.name}  memory used {amount(device.memory_used_bytes)}"
        f" / {amount(device.memory_total_bytes)} GiB (free {amount(device.memory_free_bytes)})"
        f"  util {percent(device.utilization)}  mem-util {percent(device.memory_utilization)}"
        f"  power {power}  processes: {processes or 'none'}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Print what NVML reads; exit status 1 when no GPU was seen."""
    parser = argparse.ArgumentParser(
        prog="python3 -m scheduler.telemetry.nvml", description="Show local GPUs as NVML sees them."
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per sample")
    parser.add_argument("--samples", type=int, default=1, help="how many samples (default 1)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.interval < 0:
        parser.error("--samples must be >= 1 and --interval >= 0")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    clock = MonotonicClock()
    provider = NvmlProvider()
    seen = False
    try:
        for index in range(args.samples):
            if index:
                time.sleep(args.interval)
            devices = provider.sample(clock.now()).devices
            seen = seen or bool(devices)
            if args.json:
                print(json.dumps({"sample": index, "devices": [d.as_dict() for d in devices]}))
            else:
                for device in devices:
                    print(_format(device))
    finally:
        provider.close()
    if not seen:
        print("no GPUs found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
