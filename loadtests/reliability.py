"""Reliability figures for ``loadtests/results/reliability.md`` (issue 9).

    python -m loadtests.reliability [--seconds 4]

Starts real processes on loopback (two tritonservers whose ``gpu_sim`` costs a
fixed 50 ms per call, capped at 4 rows a batch, so one serves about 80
requests a second; the gateway in front of them), then:

- hung backend: closed-loop load, then one Triton SIGSTOPped under it: requests
  served per second before and during, and requests lost;
- overload: the capacity of one Triton measured closed-loop, then an open loop
  at 3x that rate with 1 s deadlines: goodput, admitted p50/p99, statuses, and
  the gateway's RSS before, at the end and 3 s after the spike;
- tenants: a quiet tenant's latency alone, and while a noisy tenant sends ten
  times its rate quota (``loadtests.tenants_bench``, which also compares
  with a baseline checkout).

Every load is bounded in time; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from loadtests import tenants_bench
from loadtests.loadgen import LoadResult, fp32_inputs, run_load
from tests.support.gateway import GatewayProcess, rss_bytes, start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

_ENV = {"GPU_SIM_FIXED_MS": "50", "GPU_SIM_PER_ITEM_MS": "0"}
_BATCHING = json.dumps({"gpu_sim": {"max_batch_size": 4, "max_queue_delay_microseconds": 2000}})


def _load(gw: GatewayProcess, seconds: float, **kw: object) -> LoadResult:
    return asyncio.run(
        run_load(gw.address, "gpu_sim", fp32_inputs("INPUT", (1, 4)), duration_s=seconds, **kw)  # type: ignore[arg-type]
    )


def _summary(result: LoadResult) -> str:
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(result.statuses.items()))
    return (
        f"{result.rps:.0f} ok/s, p50 {result.percentile_ms(50):.0f} ms, "
        f"p99 {result.percentile_ms(99):.0f} ms ({statuses})"
    )


def hung_backend(workdir: Path, seconds: float) -> list[str]:
    lines = []
    with (
        start_triton(MODEL_REPOSITORY, workdir / "t1", env=_ENV) as t1,
        start_triton(MODEL_REPOSITORY, workdir / "t2", env=_ENV) as t2,
    ):
        args = ["--triton", t1.grpc_url, "--triton", t2.grpc_url, "--no-cpu-models"]
        env = {"GATEWAY_BATCHING": _BATCHING, "GATEWAY_NVML": "false"}
        with start_gateway(workdir / "gw1", args=args, env=env) as gw:
            _load(gw, 1.0, concurrency=24, timeout_s=5)  # learn service times
            before = _load(gw, seconds, concurrency=24, timeout_s=5)
            os.killpg(t2.pid, signal.SIGSTOP)
            try:
                during = _load(gw, seconds, concurrency=24, timeout_s=5)
            finally:
                os.killpg(t2.pid, signal.SIGCONT)
        lost = during.count - during.ok
        lines.append(f"- both Tritons up: {_summary(before)}")
        lines.append(f"- one SIGSTOPped: {_summary(during)}")
        lines.append(
            f"- during/before: {during.rps / before.rps:.0%} of the throughput with both up "
            f"(the one left alone can serve about half); requests lost: {lost}"
        )
    return lines


def overload(workdir: Path, seconds: float) -> list[str]:
    lines = []
    with start_triton(MODEL_REPOSITORY, workdir / "t3", env=_ENV) as triton:
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        env = {"GATEWAY_BATCHING": _BATCHING, "GATEWAY_NVML": "false"}
        with start_gateway(workdir / "gw2", args=args, env=env) as gw:
            capacity = _load(gw, seconds, concurrency=32, timeout_s=5)
            rate = 3 * capacity.rps
            rss_before = rss_bytes(gw.pid) / 2**20
            spike = _load(gw, seconds, concurrency=1024, rate=rate, timeout_s=1.0)
            rss_spike = rss_bytes(gw.pid) / 2**20
            time.sleep(3)
            rss_after = rss_bytes(gw.pid) / 2**20
        goodput = spike.rps / capacity.rps if capacity.rps else 0.0
        lines.append(f"- capacity (closed loop, 32 callers): {_summary(capacity)}")
        lines.append(f"- open loop at 3x ({rate:.0f}/s), 1 s deadlines: {_summary(spike)}")
        lines.append(
            f"- goodput {goodput:.0%} of capacity; admitted p99 "
            f"{spike.percentile_ms(99):.0f} ms against a 1000 ms deadline"
        )
        lines.append(
            f"- gateway RSS: {rss_before:.0f} MiB before, {rss_spike:.0f} MiB after the "
            f"spike, {rss_after:.0f} MiB 3 s later"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each load phase")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        workdir = Path(tmp)
        print("## Hung backend (SIGSTOP)\n")
        print("\n".join(hung_backend(workdir, args.seconds)))
        print("\n## Overload at 3x capacity\n")
        print("\n".join(overload(workdir, args.seconds)))
        print("\n## Tenants at equal priority\n")
        print("\n".join(tenants_bench.summary(tenants_bench.run(workdir, args.seconds, 1, None))))


if __name__ == "__main__":
    main()
