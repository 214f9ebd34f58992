"""scheduler.telemetry: snapshots and providers (NVML, Triton metrics, CPU)."""

from __future__ import annotations

import dataclasses
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from scheduler.telemetry.cpu import CpuProvider, read_meminfo
from scheduler.telemetry.nvml import NvmlProvider
from scheduler.telemetry.snapshot import (
    BackendLoad,
    DeviceSnapshot,
    TelemetrySnapshot,
)
from scheduler.telemetry.triton_metrics import (
    TritonMetricsError,
    TritonMetricsProvider,
    parse_triton_metrics,
)

GIB = 1024**3
ROOT = Path(__file__).resolve().parents[2]


def _driver_present() -> bool:
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


# --- snapshots -----------------------------------------------------------------------


def test_snapshot_is_immutable_and_stale_means_unknown() -> None:
    source = {"g": DeviceSnapshot("g", "gpu", "simulated", sampled_at=10.0, utilization=0.0)}
    snapshot = TelemetrySnapshot(devices=source, taken_at=10.0)
    source.clear()  # the snapshot holds its own copy
    assert set(snapshot.devices) == {"g"}
    with pytest.raises(TypeError):
        snapshot.devices["h"] = snapshot.devices["g"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot.taken_at = 0.0  # type: ignore[misc]
    assert snapshot.age_s("g", 12.5) == 2.5
    assert snapshot.is_fresh("g", 12.0, max_age_s=2.0)
    assert not snapshot.is_fresh("g", 12.1, max_age_s=2.0)
    # an idle device that went stale is unknown, not idle
    assert snapshot.fresh_devices(13.0, max_age_s=2.0) == {"g": None}
    assert snapshot.device("g", 13.0, max_age_s=2.0) is None
    assert snapshot.age_s("missing", 13.0) is None
    assert not snapshot.is_fresh("missing", 13.0, max_age_s=100.0)


def test_device_snapshot_validates_and_load_is_read_only() -> None:
    with pytest.raises(ValueError, match="utilization"):
        DeviceSnapshot("g", "gpu", "nvml", sampled_at=0.0, utilization=1.5)
    with pytest.raises(ValueError, match="memory_used_bytes"):
        DeviceSnapshot("g", "gpu", "nvml", sampled_at=0.0, memory_used_bytes=-1)
    load = BackendLoad("b", 1.0, pending_requests={"m": 2}, request_success={"n": 5})
    assert load.models == {"m", "n"} and load.total_pending == 2
    with pytest.raises(TypeError):
        load.pending_requests["m"] = 0  # type: ignore[index]
    snapshot = TelemetrySnapshot(loads={"b": load}, taken_at=1.0)
    assert snapshot.load("b", 2.0, max_age_s=5.0) is load
    assert snapshot.load("b", 7.0, max_age_s=5.0) is None


# --- NVML ----------------------------------------------------------------------------


def test_nvml_without_driver_reports_no_gpus_once(caplog: pytest.LogCaptureFixture) -> None:
    if _driver_present():
        pytest.skip("this host has an NVIDIA driver")
    provider = NvmlProvider(retry_init_s=10.0)
    caplog.set_level(logging.DEBUG, logger="scheduler.telemetry.nvml")
    for second in range(30):  # passes the retry interval twice
        assert provider.sample(float(second)).devices == ()
    provider.close()
    provider.close()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 1, lines
    assert lines[0].startswith("NVML: no NVIDIA driver on this host (")
    assert lines[0].endswith("no local GPUs, serving on CPU")
    assert not provider.available


class FakeNvml:
    """The part of the pynvml module NvmlProvider uses, with two GPUs."""

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):
        pass

    class NVMLError_DriverNotLoaded(NVMLError):
        pass

    def __init__(self, *, init_error: Exception | None = None) -> None:
        self.init_error = init_error
        self.init_calls = 0
        self.shutdown_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise self.init_error

    def nvmlShutdown(self) -> None:
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> str:
        return f"GPU-{handle}"

    def nvmlDeviceGetName(self, handle: int) -> bytes:
        return b"Fake H200"  # old pynvml releases return bytes

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> Any:
        return SimpleNamespace(total=80 * GIB, used=GIB, free=79 * GIB)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> Any:
        return SimpleNamespace(gpu=42, memory=7)

    def nvmlDeviceGetPowerUsage(self, handle: int) -> int:
        if handle == 1:
            raise self.NVMLError_NotSupported("Not Supported")
        return 123_456  # mW

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[Any]:
        return [
            SimpleNamespace(pid=99, usedGpuMemory=GIB),
            SimpleNamespace(pid=7, usedGpuMemory=None),
        ]


def test_nvml_reads_devices_and_tolerates_unsupported_fields() -> None:
    fake = FakeNvml()
    provider = NvmlProvider(library=fake)
    first, second = provider.sample(5.0).devices
    assert first.device_id == "nvml:GPU-0" and first.name == "Fake H200" and first.kind == "gpu"
    assert (first.memory_total_bytes, first.memory_used_bytes) == (80 * GIB, GIB)
    assert first.utilization == pytest.approx(0.42)
    assert first.memory_utilization == pytest.approx(0.07)
    assert first.power_w == pytest.approx(123.456)
    assert first.processes == ((99, GIB), (7, None))
    assert first.sampled_at == 5.0 and first.source == "nvml"
    assert second.power_w is None  # not supported: unknown, and the rest is still read
    assert second.memory_free_bytes == 79 * GIB
    provider.sample(6.0)
    assert fake.init_calls == 1
    provider.close()
    assert fake.shutdown_calls == 1
    assert provider.sample(7.0).devices == ()  # closed


def test_nvml_retries_init_only_after_the_interval(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeNvml(init_error=FakeNvml.NVMLError_DriverNotLoaded("Driver Not Loaded"))
    provider = NvmlProvider(library=fake, retry_init_s=60.0)
    with caplog.at_level(logging.INFO, logger="scheduler.telemetry.nvml"):
        for second in range(60):
            assert provider.sample(float(second)).devices == ()
        assert fake.init_calls == 1
        fake.init_error = None  # the driver is loaded later
        assert len(provider.sample(60.0).devices) == 2
    assert fake.init_calls == 2
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "NVML: no NVIDIA driver on this host (Driver Not Loaded); no local GPUs, serving on CPU",
        "NVML: 2 GPU(s): Fake H200, Fake H200",
    ]


def test_nvml_main_needs_only_the_stdlib_and_says_no_gpus() -> None:
    if _driver_present():
        pytest.skip("this host has an NVIDIA driver")
    forbidden = ("tritonclient", "pydantic", "grpc", "ml_dtypes", "prometheus_client", "gateway")
    code = (
        "import sys\n"
        "from scheduler.telemetry import nvml\n"
        "rc = nvml.main(['--json', '--samples', '2', '--interval', '0'])\n"
        "allowed = {'scheduler', 'scheduler.clock', 'scheduler.telemetry',\n"
        "           'scheduler.telemetry.snapshot', 'scheduler.telemetry.nvml'}\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {forbidden!r}\n"
        "       or (m.startswith('scheduler') and m not in allowed)]\n"
        "print('RC', rc, 'BAD', bad)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert "RC 1 BAD []" in result.stdout, result.stdout + result.stderr
    assert "no local GPUs, serving on CPU" in result.stderr
    assert "no GPUs found" in result.stderr


# --- Triton metrics (parsing; the live server is in tests/integration) ---------------

EXPOSITION = """\
# HELP nv_gpu_utilization GPU utilization rate [0.0 - 1.0)
# TYPE nv_gpu_utilization gauge
nv_gpu_utilization{gpu_uuid="GPU-aaaa"} 0.25
nv_gpu_utilization{gpu_uuid="GPU-bbbb"} 1
# TYPE nv_gpu_memory_total_bytes gauge
nv_gpu_memory_total_bytes{gpu_uuid="GPU-aaaa"} 85899345920
nv_gpu_memory_total_bytes{gpu_uuid="GPU-bbbb"} 85899345920
# TYPE nv_gpu_memory_used_bytes gauge
nv_gpu_memory_used_bytes{gpu_uuid="GPU-aaaa"} 1073741824
nv_gpu_memory_used_bytes{gpu_uuid="GPU-bbbb"} 8.589934592e+10
# TYPE nv_gpu_power_usage gauge
nv_gpu_power_usage{gpu_uuid="GPU-aaaa"} 301.5
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="resnet",version="1"} 10
nv_inference_request_success{model="resnet",version="2"} 5
nv_inference_request_success{model="bert",version="1"} 0
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="resnet",version="1"} 700
nv_inference_queue_duration_us{model="resnet",version="2"} 300
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{gpu_uuid="GPU-aaaa",model="resnet",version="1"} 9000
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="resnet",version="1"} 3
nv_inference_pending_request_count{model="bert",version="1"} 0
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def test_parse_maps_gpus_by_uuid_and_sums_model_versions() -> None:
    sample = parse_triton_metrics(
        EXPOSITION, backend_id="triton@10.0.0.5:8001", host="10.0.0.5", sampled_at=3.0
    )
    devices = {d.device_id: d for d in sample.devices}
    assert set(devices) == {"triton@10.0.0.5:8001:GPU-aaaa", "triton@10.0.0.5:8001:GPU-bbbb"}
    a = devices["triton@10.0.0.5:8001:GPU-aaaa"]
    assert (a.kind, a.source, a.host, a.uuid) == ("gpu", "triton-metrics", "10.0.0.5", "GPU-aaaa")
    assert a.utilization == 0.25 and a.power_w == 301.5 and a.sampled_at == 3.0
    assert (a.memory_total_bytes, a.memory_used_bytes) == (80 * GIB, GIB)
    assert a.memory_free_bytes == 79 * GIB
    b = devices["triton@10.0.0.5:8001:GPU-bbbb"]
    assert b.memory_free_bytes == 0 and b.utilization == 1.0 and b.power_w is None
    (load,) = sample.loads
    assert load.backend_id == "triton@10.0.0.5:8001" and load.sampled_at == 3.0
    assert dict(load.request_success) == {"resnet": 15, "bert": 0}
    assert dict(load.queue_us) == {"resnet": 1000}
    assert dict(load.compute_infer_us) == {"resnet": 9000}
    assert dict(load.pending_requests) == {"resnet": 3, "bert": 0}


def test_parse_rejects_garbage() -> None:
    with pytest.raises(TritonMetricsError, match="unparsable"):
        parse_triton_metrics("nv_gpu_utilization{oops 1\n", backend_id="b", host="h", sampled_at=0)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_metrics_endpoint_raises_a_clear_error() -> None:
    url = f"http://127.0.0.1:{_closed_port()}/metrics"
    provider = TritonMetricsProvider(url, "triton@x", timeout_s=1.0)
    with pytest.raises(TritonMetricsError, match=r"Triton metrics at .* unreachable"):
        provider.sample(0.0)
    with pytest.raises(ValueError, match="http"):
        TritonMetricsProvider("127.0.0.1:8002", "triton@x")


@pytest.fixture
def silent_server() -> Iterator[tuple[str, threading.Event]]:
    """An HTTP server on 127.0.0.1 whose /slow hangs until released and /missing is 404."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/slow":
                release.wait(5)
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_metrics_http_error_and_timeout(silent_server: tuple[str, threading.Event]) -> None:
    base, _ = silent_server
    with pytest.raises(TritonMetricsError, match="HTTP 404"):
        TritonMetricsProvider(f"{base}/missing", "t").sample(0.0)
    with pytest.raises(TritonMetricsError, match="unreachable"):
        TritonMetricsProvider(f"{base}/slow", "t", timeout_s=0.2).sample(0.0)


# --- CPU -----------------------------------------------------------------------------


def test_cpu_provider_reads_sane_values() -> None:
    (device,) = CpuProvider().sample(4.0).devices
    assert (device.device_id, device.kind, device.source) == ("cpu:local", "cpu", "cpu")
    assert device.cores is not None and 1 <= device.cores <= (os.cpu_count() or 1)
    assert device.utilization is not None and 0.0 <= device.utilization <= 1.0
    assert device.load_1m is not None and device.load_1m >= 0
    assert device.memory_total_bytes is not None and device.memory_total_bytes > 0
    assert device.memory_free_bytes is not None and device.memory_used_bytes is not None
    assert device.memory_free_bytes + device.memory_used_bytes == device.memory_total_bytes
    assert device.sampled_at == 4.0


def test_meminfo_without_available_is_unknown(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:         500 kB\n")
    assert read_meminfo(meminfo) == (1024000, None)
    (device,) = CpuProvider(meminfo_path=meminfo).sample(0.0).devices
    assert device.memory_total_bytes == 1024000
    assert device.memory_used_bytes is None and device.memory_free_bytes is None
    assert read_meminfo(tmp_path / "absent") == (None, None)
