"""scheduler.telemetry: simulated devices, the device monitor, and the GPU check script."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from scheduler.clock import ManualClock
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.providers import TelemetryProvider
from scheduler.telemetry.simulated import SimulatedGpu, SimulatedOutOfMemory, SimulatedProvider
from scheduler.telemetry.snapshot import (
    BackendLoad,
    DeviceSnapshot,
    ProviderSample,
)
from tests.unit.test_telemetry_providers import GIB, ROOT, _driver_present

# --- simulated -----------------------------------------------------------------------


def test_simulated_follows_the_clock_and_allocations() -> None:
    clock = ManualClock()
    gpu = SimulatedGpu(
        "sim:0",
        memory_total_bytes=16 * GIB,
        base_memory_used_bytes=GIB,
        utilization=[(0.0, 0.0), (10.0, 1.0)],
        speed=2.0,
        idle_power_w=50.0,
        max_power_w=350.0,
    )
    provider = SimulatedProvider([gpu, SimulatedGpu("sim:1", GIB, utilization=lambda t: t / 100)])
    assert isinstance(provider, TelemetryProvider)
    assert provider.gpu("sim:0").speed == 2.0

    def read(device_id: str) -> DeviceSnapshot:
        return {d.device_id: d for d in provider.sample(clock.now()).devices}[device_id]

    assert read("sim:0").utilization == 0.0 and read("sim:0").power_w == 50.0
    clock.advance(2.5)
    assert read("sim:0").utilization == pytest.approx(0.25)
    assert read("sim:1").utilization == pytest.approx(0.025)
    clock.advance(100.0)  # held flat after the last point; callables are clipped to 1
    assert read("sim:0").utilization == 1.0 and read("sim:0").power_w == 350.0
    assert read("sim:1").utilization == 1.0 and read("sim:1").sampled_at == 102.5

    provider.allocate("sim:0", 4 * GIB)
    assert read("sim:0").memory_used_bytes == 5 * GIB
    assert read("sim:0").memory_free_bytes == 11 * GIB
    with pytest.raises(SimulatedOutOfMemory, match=f"{11 * GIB} of {16 * GIB} free"):
        provider.allocate("sim:0", 12 * GIB)
    provider.free("sim:0", 4 * GIB)
    assert read("sim:0").memory_used_bytes == GIB
    with pytest.raises(ValueError, match="only 0 allocated"):
        provider.free("sim:0", 1)
    with pytest.raises(ValueError, match="strictly increasing"):
        SimulatedGpu("bad", GIB, utilization=[(1.0, 0.5), (1.0, 0.7)])


# --- monitor -------------------------------------------------------------------------


class Blocking:
    """A provider whose sample blocks until released, counting calls."""

    name = "blocking"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.closed = False

    def sample(self, now: float) -> ProviderSample:
        self.calls += 1
        self.release.wait(10)
        return ProviderSample(devices=(DeviceSnapshot("blk", "gpu", "simulated", now),))

    def close(self) -> None:
        self.closed = True


def _sim(name: str, device_id: str) -> SimulatedProvider:
    return SimulatedProvider([SimulatedGpu(device_id, 8 * GIB)], name=name)


async def test_failing_provider_is_tolerated_and_its_devices_go_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(100.0)
    good, flaky = _sim("good", "sim:good"), _sim("flaky", "sim:flaky")
    monitor = DeviceMonitor([good, flaky], clock=clock, interval_s=0.01)
    first = await monitor.poll_once()
    assert set(first.devices) == {"sim:good", "sim:flaky"}
    assert monitor.errors() == {}

    flaky.fail_with(RuntimeError("exporter down"))
    with caplog.at_level(logging.DEBUG, logger="scheduler.telemetry.monitor"):
        for _ in range(5):
            clock.advance(1.0)
            snapshot = await monitor.poll_once()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "flaky failed: exporter down" in warnings[0].getMessage()
    now = clock.now()
    assert snapshot.devices["sim:flaky"].sampled_at == 100.0  # kept, ageing
    assert snapshot.is_fresh("sim:good", now, max_age_s=2.0)
    assert not snapshot.is_fresh("sim:flaky", now, max_age_s=2.0)
    assert snapshot.fresh_devices(now, max_age_s=2.0)["sim:flaky"] is None
    error = monitor.errors()["flaky"]
    assert (error.message, error.at, error.current) == ("exporter down", 105.0, True)

    flaky.fail_with(None)
    clock.advance(1.0)
    recovered = await monitor.poll_once()
    assert recovered.is_fresh("sim:flaky", clock.now(), max_age_s=0.0)
    assert not monitor.errors()["flaky"].current
    await monitor.aclose()


async def test_snapshots_are_replaced_never_edited() -> None:
    clock = ManualClock()
    provider = _sim("sim", "sim:0")
    monitor = DeviceMonitor([provider], clock=clock)
    before = await monitor.poll_once()
    assert monitor.snapshot() is before
    provider.allocate("sim:0", GIB)
    clock.advance(1.0)
    after = await monitor.poll_once()
    assert after is not before and monitor.snapshot() is after
    assert before.devices["sim:0"].memory_used_bytes == 0
    assert before.devices["sim:0"].sampled_at == 0.0 and before.taken_at == 0.0
    assert after.devices["sim:0"].memory_used_bytes == GIB and after.taken_at == 1.0
    await monitor.aclose()


class Listed:
    """A provider that reports exactly the device ids the test sets."""

    name = "listed"

    def __init__(self, *device_ids: str) -> None:
        self.device_ids = device_ids

    def sample(self, now: float) -> ProviderSample:
        return ProviderSample(
            devices=tuple(DeviceSnapshot(d, "gpu", "simulated", now) for d in self.device_ids),
            loads=(BackendLoad("listed-backend", now),),
        )

    def close(self) -> None:
        pass


async def test_devices_a_provider_stops_reporting_are_dropped() -> None:
    listed = Listed("a", "b")
    monitor = DeviceMonitor([listed, _sim("other", "c")], clock=ManualClock())
    assert set((await monitor.poll_once()).devices) == {"a", "b", "c"}
    listed.device_ids = ("b",)  # a GPU falls off the bus
    snapshot = await monitor.poll_once()
    assert set(snapshot.devices) == {"b", "c"} and set(snapshot.loads) == {"listed-backend"}
    await monitor.aclose()


async def test_hung_provider_times_out_and_is_not_piled_up() -> None:
    clock = ManualClock()
    blocking = Blocking()
    monitor = DeviceMonitor([blocking, _sim("sim", "s")], clock=clock, sample_timeout_s=0.5)
    snapshot = await monitor.poll_once()
    assert set(snapshot.devices) == {"s"}
    assert "longer than 0.5 s" in monitor.errors()["blocking"].message
    await monitor.poll_once()
    assert blocking.calls == 1  # still running: not called a second time
    assert "still running" in monitor.errors()["blocking"].message
    blocking.release.set()
    for _ in range(100):  # the abandoned thread finishes; the next poll asks again
        snapshot = await monitor.poll_once()
        if "blk" in snapshot.devices:
            break
        await asyncio.sleep(0.01)
    assert "blk" in snapshot.devices and blocking.calls == 2
    await monitor.aclose()
    assert blocking.closed


async def test_start_polls_in_background_and_aclose_leaves_no_task() -> None:
    clock = ManualClock()
    provider = _sim("sim", "s")
    monitor = DeviceMonitor([provider], clock=clock, interval_s=0.01)
    await monitor.start()
    assert "s" in monitor.snapshot().devices  # the first poll happens in start()
    with pytest.raises(RuntimeError):
        await monitor.start()
    seen = {monitor.snapshot().taken_at}
    for _ in range(200):
        clock.advance(1.0)
        await asyncio.sleep(0.01)
        seen.add(monitor.snapshot().taken_at)
        if len(seen) >= 3:
            break
    assert len(seen) >= 3 and monitor.running
    await monitor.aclose()
    await monitor.aclose()
    assert not monitor.running
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "device-monitor"]
    taken = monitor.snapshot().taken_at
    clock.advance(1.0)
    await asyncio.sleep(0.05)
    assert monitor.snapshot().taken_at == taken


def test_monitor_rejects_duplicate_names() -> None:
    with pytest.raises(ValueError, match="unique"):
        DeviceMonitor([_sim("x", "a"), _sim("x", "b")], clock=ManualClock())


def test_gpu_check_script_fails_clearly_without_a_gpu(tmp_path: Path) -> None:
    if _driver_present():
        pytest.skip("this host has an NVIDIA driver")
    result = subprocess.run(
        [sys.executable, "loadtests/gpu/nvml_check.py", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "FAIL: NVML found no GPU" in result.stderr
    assert "no local GPUs, serving on CPU" in result.stderr
    summary = json.loads((tmp_path / "nvml_check.json").read_text())
    assert summary["ok"] is False and "no GPU" in summary["error"]
