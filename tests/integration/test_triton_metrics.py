"""TritonMetricsProvider and DeviceMonitor against a real tritonserver's metrics endpoint."""

from __future__ import annotations

import time

import numpy as np
import tritonclient.grpc as grpcclient

from scheduler.clock import MonotonicClock
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.snapshot import BackendLoad
from scheduler.telemetry.triton_metrics import TritonMetricsProvider
from tests.support.triton import TritonProcess

REQUESTS = 3


def _send_int64_offset(triton: TritonProcess, count: int) -> None:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    try:
        for size in range(1, count + 1):
            values = np.arange(size, dtype=np.int64)[None]
            tensor = grpcclient.InferInput("INPUT", list(values.shape), "INT64")
            tensor.set_data_from_numpy(values)
            result = client.infer("int64_offset", [tensor], client_timeout=10)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), values + 1)
    finally:
        client.close()


def _load_after(provider: TritonMetricsProvider, done: int) -> BackendLoad:
    # Triton counts a request after its response is sent; allow it a moment.
    deadline = time.monotonic() + 5
    while True:
        (load,) = provider.sample(time.monotonic()).loads
        if load.request_success.get("int64_offset", 0) >= done or time.monotonic() > deadline:
            return load
        time.sleep(0.05)


def test_loads_count_the_requests_sent(triton: TritonProcess) -> None:
    backend_id = f"triton@{triton.grpc_url}"
    provider = TritonMetricsProvider(triton.metrics_url, backend_id, timeout_s=2.0)
    (before,) = provider.sample(time.monotonic()).loads
    done = before.request_success.get("int64_offset", 0)
    _send_int64_offset(triton, REQUESTS)
    sample = provider.sample(time.monotonic())
    assert sample.devices == ()  # this Triton runs on CPU: no nv_gpu_* families
    load = _load_after(provider, done + REQUESTS)
    assert load.backend_id == backend_id
    assert load.request_success["int64_offset"] >= done + REQUESTS
    assert load.compute_infer_us["int64_offset"] > before.compute_infer_us.get("int64_offset", 0)
    assert load.queue_us["int64_offset"] >= 0
    assert load.pending_requests["int64_offset"] == 0  # nothing in flight now
    assert {"int64_offset", "add_sub"} <= load.models
    provider.close()


async def test_monitor_reads_triton_loads(triton: TritonProcess) -> None:
    backend_id = f"triton@{triton.grpc_url}"
    clock = MonotonicClock()
    monitor = DeviceMonitor(
        [TritonMetricsProvider(triton.metrics_url, backend_id, timeout_s=2.0)],
        clock=clock,
        sample_timeout_s=5.0,
    )
    snapshot = await monitor.poll_once()
    load = snapshot.load(backend_id, clock.now(), max_age_s=5.0)
    assert load is not None and "int64_offset" in load.models
    assert monitor.errors() == {}
    await monitor.aclose()
