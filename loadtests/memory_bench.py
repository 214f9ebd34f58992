"""The gateway's RSS before, during and after a spike of large requests.

    python -m loadtests.memory_bench [--requests 24] [--mib 32] [--rounds 2] [--baseline DIR]

A real ``tritonserver`` (``gpu_sim``, 5 ms a call) behind the gateway, which
sends each request on its own (``max_batch_size`` 1) and does not take a slow
large call for a hung one (``outlier_min_s`` 30). Each round: 50 small
requests, the RSS; ``--requests`` concurrent requests of ``--mib`` MiB, the
peak RSS (sampled every 50 ms); the RSS every 0.5 s for 3 s after the last
answer. ``--baseline DIR``: the same against a checkout of the code before,
alternating with this tree's in each round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from gateway.api.inference import grpc_service_pb2 as pb
from tests.support.gateway import rss_bytes, start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

MIB = 1 << 20


def gpu_sim_request(elements: int) -> bytes:
    """An encoded ModelInfer of ``elements`` FP32 ones for ``gpu_sim``."""
    tensor = pb.ModelInferRequest.InferInputTensor(
        name="INPUT", datatype="FP32", shape=[1, elements]
    )
    raw = np.ones(elements, np.float32).tobytes()
    message = pb.ModelInferRequest(model_name="gpu_sim", inputs=[tensor], raw_input_contents=[raw])
    return message.SerializeToString()


async def _burst(address: str, payload: bytes, count: int, pid: int) -> tuple[list[str], float]:
    """Send ``count`` at once; their statuses and the peak RSS meanwhile."""
    options = [("grpc.max_send_message_length", 2 * len(payload))]
    options.append(("grpc.max_receive_message_length", 2 * len(payload)))
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def one() -> str:
            try:
                await call(payload, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK"

        calls = asyncio.gather(*(one() for _ in range(count)))
        peak = 0.0
        while not calls.done():
            peak = max(peak, rss_bytes(pid) / MIB)
            await asyncio.sleep(0.05)
        return await calls, peak


def run(
    workdir: Path, count: int, mib: int, rounds: int, baseline: Path | None
) -> list[dict[str, Any]]:
    env = {"GATEWAY_NVML": "false", "GATEWAY_OUTLIER_MIN_S": "30"}
    env["GATEWAY_BATCHING"] = json.dumps({"gpu_sim": {"max_batch_size": 1}})
    small, large = gpu_sim_request(4), gpu_sim_request(mib * MIB // 4)
    variants: list[tuple[str, Path | None]] = [("after", None)]
    if baseline is not None:
        variants.insert(0, ("before", baseline))
    rows = []
    with start_triton(MODEL_REPOSITORY, workdir / "triton", env={"GPU_SIM_FIXED_MS": "5"}) as t:
        args = ["--triton", t.grpc_url, "--no-cpu-models"]
        for round_ in range(rounds):
            for name, repo in variants:
                home = workdir / f"{name}{round_}"
                with start_gateway(home, args=args, env=env, repo=repo) as gw:
                    asyncio.run(_burst(gw.address, small, 50, gw.pid))
                    time.sleep(1)
                    before = rss_bytes(gw.pid) / MIB
                    codes, peak = asyncio.run(_burst(gw.address, large, count, gw.pid))
                    idle = []
                    for _ in range(6):
                        time.sleep(0.5)
                        idle.append(rss_bytes(gw.pid) / MIB)
                statuses = {code: codes.count(code) for code in sorted(set(codes))}
                rows.append({"code": name, "before": before, "peak": peak, "idle": idle} | statuses)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| code | RSS before | peak | 0.5 s after the last answer | 3 s after | statuses |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        statuses = ", ".join(f"{k} {v}" for k, v in row.items() if k.isupper())
        lines.append(
            f"| {row['code']} | {row['before']:.0f} MiB | {row['peak']:.0f} MiB "
            f"| {row['idle'][0]:.0f} MiB | {row['idle'][-1]:.0f} MiB | {statuses} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=24, help="sent at once")
    parser.add_argument("--mib", type=int, default=32, help="size of each request")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memory-") as tmp:
        rows = run(Path(tmp), args.requests, args.mib, args.rounds, args.baseline)
    print("\n".join(summary(rows)))


if __name__ == "__main__":
    main()
