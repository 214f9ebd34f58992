"""Tenants at equal priority: does a tenant sending ten times its quota slow another?

    python -m loadtests.tenants_bench [--seconds 4] [--rounds 3] [--shares Q N] [--baseline DIR]

One real ``tritonserver`` whose ``gpu_sim`` costs a fixed 50 ms per call,
batched by the gateway at most 4 rows at a time (about 75 requests/s). Tenant
"quiet" runs 4 closed-loop callers; tenant "noisy" has a quota of 20
requests/s (burst 20) and sends open-loop from a process of its own (as
another service would), first at 20/s, its quota, then at 200/s. Each round
measures, one after another: quiet alone, quiet with noisy at its quota,
quiet with noisy at ten times it; the quiet tenant's p99, and the gateway's
CPU seconds per phase (its refusals' cost).

``--shares Q N``: a second gateway of this tree in which the tenants' fair
shares are Q (quiet) and N (noisy), e.g. ``3 1`` for the noisy tenant's
quota of about a quarter of the model's capacity; its rounds alternate with
the equal-shares gateway's ("after").

``--baseline DIR``: a checkout of the code before (e.g. ``git archive main``
unpacked there); its gateway runs against the same Triton and the rounds
alternate between it and this tree's, so both see the same machine.
Every load is bounded in time; every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from gateway.api.inference import grpc_service_pb2 as pb
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

_ENV = {"GPU_SIM_FIXED_MS": "50", "GPU_SIM_PER_ITEM_MS": "0"}
_BATCHING = json.dumps({"gpu_sim": {"max_batch_size": 4, "max_queue_delay_microseconds": 2000}})
_TENANTS = {
    "quiet": {"api_keys": ["quiet-key"]},
    "noisy": {"api_keys": ["noisy-key"], "rate_per_s": 20, "burst": 20},
}
PHASES = ("alone", "share", "flood")
_NOISY_RATE = {"alone": 0.0, "share": 20.0, "flood": 200.0}


async def tenant_load(
    address: str, key: str, seconds: float, *, callers: int = 0, rate: float = 0.0
) -> tuple[list[float], Counter[str]]:
    """Closed loop with ``callers``, or open loop at ``rate``; latencies of OK calls."""
    request = pb.ModelInferRequest(
        model_name="gpu_sim",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 4])],
        raw_input_contents=[bytes(16)],
    ).SerializeToString()
    latencies: list[float] = []
    codes: Counter[str] = Counter()
    stop_at = time.perf_counter() + seconds
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        metadata = (("authorization", f"Bearer {key}"),)

        async def one() -> None:
            began = time.perf_counter()
            try:
                await call(request, timeout=5, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                codes[exc.code().name] += 1
                return
            codes["OK"] += 1
            latencies.append(time.perf_counter() - began)

        async def caller() -> None:
            while time.perf_counter() < stop_at:
                await one()

        if callers:
            await asyncio.gather(*(caller() for _ in range(callers)))
        else:
            tasks = []
            next_at = time.perf_counter()
            while next_at < stop_at:
                tasks.append(asyncio.create_task(one()))
                next_at += 1 / rate  # open loop: on schedule, however late the answers
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            await asyncio.gather(*tasks)
    return latencies, codes


def _noisy(address: str, seconds: float, rate: float, ready: Any, go: Any, out: Any) -> None:
    """The noisy tenant's sender, in a process of its own."""
    ready.set()
    go.wait(30)
    _, codes = asyncio.run(tenant_load(address, "noisy-key", seconds, rate=rate))
    out.put(dict(codes))


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def phase(gw: GatewayProcess, seconds: float, noisy_rate: float) -> dict[str, Any]:
    """Quiet's p99 with noisy sending at ``noisy_rate`` (0: not at all)."""
    spawn = multiprocessing.get_context("spawn")
    process = None
    if noisy_rate:
        ready, go, out = spawn.Event(), spawn.Event(), spawn.Queue()
        process = spawn.Process(
            target=_noisy, args=(gw.address, seconds, noisy_rate, ready, go, out)
        )
        process.start()
        ready.wait(30)
        time.sleep(0.5)  # its imports are done; let the machine settle
        go.set()
    cpu_before = _cpu_s(gw.pid)
    latencies, quiet = asyncio.run(tenant_load(gw.address, "quiet-key", seconds, callers=4))
    noisy: dict[str, int] = {}
    if process is not None:
        noisy = out.get(timeout=30)
        process.join(30)
        if process.is_alive():
            process.kill()
    time.sleep(0.5)  # what is still in flight ends before the next phase
    return {
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
        "latencies_s": latencies,
        "quiet": dict(quiet),
        "noisy": noisy,
        "cpu_s": _cpu_s(gw.pid) - cpu_before,
    }


def run(
    workdir: Path,
    seconds: float,
    rounds: int,
    baseline: Path | None,
    shares: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """``{variant: [round: {phase: figures}]}`` for "after" (this tree), "before"
    (``baseline``) and "shares Q:N" (this tree with those fair shares)."""
    env = {"GATEWAY_BATCHING": _BATCHING, "GATEWAY_NVML": "false"}
    env["GATEWAY_TENANTS"] = json.dumps(_TENANTS)
    results: dict[str, list[dict[str, Any]]] = {}
    with start_triton(MODEL_REPOSITORY, workdir / "triton", env=_ENV) as triton:
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        gateways = {"after": start_gateway(workdir / "after", args=args, env=env)}
        try:
            if baseline is not None:
                gateways["before"] = start_gateway(
                    workdir / "before", args=args, env=env, repo=baseline
                )
            if shares is not None:
                quiet, noisy = shares
                tenants = {
                    "quiet": _TENANTS["quiet"] | {"share": quiet},
                    "noisy": _TENANTS["noisy"] | {"share": noisy},
                }
                gateways[f"shares {quiet:g}:{noisy:g}"] = start_gateway(
                    workdir / "shares",
                    args=args,
                    env=env | {"GATEWAY_TENANTS": json.dumps(tenants)},
                )
            for gw in gateways.values():  # warm up: connections, service times
                asyncio.run(tenant_load(gw.address, "quiet-key", 1.0, callers=4))
            for _ in range(rounds):
                for variant, gw in gateways.items():
                    figures = {p: phase(gw, seconds, _NOISY_RATE[p]) for p in PHASES}
                    results.setdefault(variant, []).append(figures)
        finally:
            for gw in gateways.values():
                gw.terminate()
    return results


def summary(results: dict[str, Any]) -> list[str]:
    """Markdown lines: p99 of every round's latencies pooled, per phase; the
    median over rounds of the ratio within a round; CPU medians."""
    lines = [
        "| code | quiet p99 alone | at noisy's quota | noisy at 10x | 10x vs quota "
        "| 10x vs alone | per-round ratio 10x/quota, median | noisy at 10x: statuses "
        "| gateway CPU s, quota → 10x |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, rounds in results.items():
        p99 = {
            p: float(np.percentile([s for r in rounds for s in r[p]["latencies_s"]], 99)) * 1e3
            for p in PHASES
        }
        per_round = statistics.median(r["flood"]["p99_ms"] / r["share"]["p99_ms"] for r in rounds)
        noisy = Counter[str]()
        for r in rounds:
            noisy.update(r["flood"]["noisy"])
        statuses = ", ".join(f"{k} {v // len(rounds)}" for k, v in sorted(noisy.items()))
        cpu = {p: statistics.median(r[p]["cpu_s"] for r in rounds) for p in ("share", "flood")}
        lines.append(
            f"| {variant} | {p99['alone']:.0f} ms | {p99['share']:.0f} ms | {p99['flood']:.0f} ms "
            f"| {p99['flood'] / p99['share'] - 1:+.0%} | {p99['flood'] / p99['alone'] - 1:+.0%} "
            f"| {per_round - 1:+.0%} | {statuses} "
            f"| {cpu['share']:.2f} → {cpu['flood']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a checkout of the code before")
    parser.add_argument(
        "--shares", type=float, nargs=2, metavar=("QUIET", "NOISY"), help="fair shares to compare"
    )
    parser.add_argument("--json", type=Path, help="write every round's figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tenants-") as tmp:
        shares = tuple(args.shares) if args.shares else None
        results = run(Path(tmp), args.seconds, args.rounds, args.baseline, shares)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print("\n".join(summary(results)))


if __name__ == "__main__":
    main()
