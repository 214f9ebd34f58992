"""The heterogeneous scheduler against real processes: two tritonservers that
emulate GPUs of different speeds and the gateway's CPU pool, all serving
``gpu_sim``; traffic divides by speed, survives a server being killed, and
returns when it comes back."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient

from loadtests.loadgen import LoadResult, fp32_inputs, run_load
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

FAST = {"GPU_SIM_FIXED_MS": "4", "GPU_SIM_PER_ITEM_MS": "0.05"}
SLOW = {"GPU_SIM_FIXED_MS": "16", "GPU_SIM_PER_ITEM_MS": "0.2"}
CPU = {"CPU_SIM_FIXED_MS": "40", "CPU_SIM_PER_ITEM_MS": "2"}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, TritonProcess]]:
    work = tmp_path_factory.mktemp("fleet")
    with (
        start_triton(MODEL_REPOSITORY, work / "fast", env=FAST) as fast,
        start_triton(MODEL_REPOSITORY, work / "slow", env=SLOW) as slow,
    ):
        yield {"fast": fast, "slow": slow}


def _gateway(fleet: dict[str, TritonProcess], workdir: Path) -> GatewayProcess:
    metrics = {t.grpc_url: t.metrics_url for t in fleet.values()}
    return start_gateway(
        workdir,
        args=[
            "--triton",
            fleet["fast"].grpc_url,
            "--triton",
            fleet["slow"].grpc_url,
            "--cpu-model",
            "tests.support.cpu_sim:gpu_sim",
        ],
        env={
            **CPU,
            "GATEWAY_HEALTH_INTERVAL_S": "0.25",
            "GATEWAY_BREAKER_BASE_BACKOFF_S": "0.25",
            "GATEWAY_BREAKER_MAX_BACKOFF_S": "1",
            "GATEWAY_TRITON_METRICS_URLS": json.dumps(metrics),
        },
    )


def _rows_served(triton: TritonProcess) -> int:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    stats = client.get_inference_statistics("gpu_sim").model_stats[0]
    return int(stats.inference_count)


async def _load(gateway: GatewayProcess, seconds: float, concurrency: int = 16) -> LoadResult:
    return await run_load(
        gateway.address,
        "gpu_sim",
        fp32_inputs("INPUT", (1, 8)),
        concurrency=concurrency,
        duration_s=seconds,
        timeout_s=5.0,
    )


async def test_traffic_divides_by_speed(fleet: dict[str, TritonProcess], tmp_path: Path) -> None:
    before = {name: _rows_served(t) for name, t in fleet.items()}
    with _gateway(fleet, tmp_path) as gateway:
        result = await _load(gateway, seconds=4)
    served = {name: _rows_served(t) - before[name] for name, t in fleet.items()}
    assert result.statuses == {"OK": result.count}, result.errors
    cpu = result.ok - served["fast"] - served["slow"]
    # The fast server is 4x faster: it must carry clearly more; the CPU pool is
    # only a spill tier and, with no deadline pressure, carries almost nothing.
    assert served["fast"] > 1.5 * served["slow"] > 0, (served, cpu)
    assert cpu <= 0.05 * result.ok, (served, cpu)


async def test_killed_server_loses_no_request_and_traffic_returns(
    fleet: dict[str, TritonProcess], tmp_path: Path
) -> None:
    fast = fleet["fast"]
    with _gateway(fleet, tmp_path) as gateway:
        during = asyncio.create_task(_load(gateway, seconds=4))
        await asyncio.sleep(1.5)
        ports = (fast.grpc_port, fast.http_port, fast.metrics_port)
        await asyncio.to_thread(fast.kill)
        result = await during
        reborn = await asyncio.to_thread(
            start_triton, MODEL_REPOSITORY, tmp_path / "reborn", env=FAST, ports=ports
        )
        try:
            await asyncio.sleep(1.5)  # a probe readmits it (backoff is capped at 1 s here)
            after = await _load(gateway, seconds=2)
            back = _rows_served(reborn)
        finally:
            reborn.stop()
        log = gateway.log()
    # Every request ended with a result or a clear status; nearly all succeeded
    # (retried on the slow server or the CPU pool while the fast one was away).
    assert set(result.statuses) <= {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}, result.errors
    assert result.ok >= 0.98 * result.count, result.errors
    assert after.statuses == {"OK": after.count}, after.errors
    assert back > 0.3 * after.ok, "traffic did not return to the restarted server"
    assert "ejected" in log and "healthy again" in log
