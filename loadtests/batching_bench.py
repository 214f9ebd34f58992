"""Throughput with gateway batching on vs off, and vs Triton's own dynamic
batcher, at several concurrencies, all in one run against one real Triton.

    python -m loadtests.batching_bench [--concurrency 1 16 64 256] [--seconds 4] [--repeats 3]

The model is ``gpu_sim`` shaped like a GPU: a fixed cost per call plus a small
per-row cost (here 20 ms + 0.05 ms/row), so merging callers pays. Paths:

- ``gateway, no batching``: gateway (``batching_layer=none``) -> gpu_sim
- ``gateway batching``: gateway (default: it batches; 2 ms queue delay) -> gpu_sim
- ``Triton batcher, direct``: client -> Triton's gpu_sim_tb (dynamic_batching,
  2 ms queue delay), no gateway
- ``gateway -> Triton batcher``: gateway (``batching_layer=backend``) -> gpu_sim_tb

Each cell is the median over ``repeats`` closed-loop runs of ``seconds``. Writes
loadtests/results/batching_loadgen.md, batching_loadgen.json and
batching_loadgen.png (the figures of ``loadtests.batching_cpu``, with ghz, are in batching.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path
from typing import Any

from loadtests.loadgen import fp32_inputs, run_load
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

RESULTS = Path(__file__).parent / "results"
COST = {"GPU_SIM_FIXED_MS": "20", "GPU_SIM_PER_ITEM_MS": "0.05"}


def measure(levels: list[int], seconds: float, repeats: int) -> dict[str, Any]:
    table: dict[str, dict[int, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with start_triton(MODEL_REPOSITORY, work / "triton", env=COST) as triton:
            common = ["--triton", triton.grpc_url, "--no-cpu-models", "--log-level", "WARNING"]
            with (
                start_gateway(
                    work / "off", args=common, env={"GATEWAY_BATCHING_LAYER": "none"}
                ) as off,
                # The same 2 ms queue delay that gpu_sim_tb gives Triton's batcher.
                start_gateway(
                    work / "on", args=common, env={"GATEWAY_DEFAULT_MAX_QUEUE_DELAY_US": "2000"}
                ) as on,
                start_gateway(
                    work / "backend", args=common, env={"GATEWAY_BATCHING_LAYER": "backend"}
                ) as passthrough,
            ):
                paths = {
                    "gateway, no batching": (off.address, "gpu_sim"),
                    "gateway batching": (on.address, "gpu_sim"),
                    "Triton batcher, direct": (triton.grpc_url, "gpu_sim_tb"),
                    "gateway -> Triton batcher": (passthrough.address, "gpu_sim_tb"),
                }
                for _ in range(repeats):
                    for name, (target, model) in paths.items():
                        for level in levels:
                            result = asyncio.run(
                                run_load(
                                    target,
                                    model,
                                    fp32_inputs("INPUT", (1, 16)),
                                    concurrency=level,
                                    duration_s=seconds,
                                    timeout_s=30,
                                )
                            )
                            if result.ok != result.count:
                                raise SystemExit(f"{name} at {level}: errors {result.errors}")
                            table.setdefault(name, {}).setdefault(level, []).append(result.rps)
                            print(f"{name:28s} c={level:<4d} {result.rps:8.1f} req/s", flush=True)
    medians = {
        name: {lvl: statistics.median(v) for lvl, v in row.items()} for name, row in table.items()
    }
    return {
        "levels": levels,
        "seconds": seconds,
        "repeats": repeats,
        "cost": COST,
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "runs": {n: {str(k): v for k, v in row.items()} for n, row in table.items()},
        "median_rps": {n: {str(k): v for k, v in row.items()} for n, row in medians.items()},
    }


def _ratio_row(
    label: str, top: dict[str, float], bottom: dict[str, float], levels: list[int], fmt: str
) -> str:
    cells = " | ".join(fmt.format(top[str(lvl)] / bottom[str(lvl)]) for lvl in levels)
    return f"| {label} | {cells} |"


def write(result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "batching_loadgen.json").write_text(json.dumps(result, indent=2) + "\n")
    levels = result["levels"]
    med = result["median_rps"]
    off, on = med["gateway, no batching"], med["gateway batching"]
    direct = med["Triton batcher, direct"]
    lines = [
        "# Dynamic batching: throughput (requests/s), median of repeated runs",
        "",
        "These figures come from the Python load generator (`loadtests.loadgen`), whose own "
        "CPU on a 2-core machine caps them: they say how batching scales with concurrency, "
        "not what the gateway costs. The gateway's CPU per batched request and its "
        "throughput against Triton's batcher, with ghz, are in [batching.md](batching.md) "
        "(`python -m loadtests.batching_cpu`).",
        "",
        f"`python -m loadtests.batching_bench` — model `gpu_sim` costing "
        f"{result['cost']['GPU_SIM_FIXED_MS']} ms + {result['cost']['GPU_SIM_PER_ITEM_MS']} "
        f"ms/row per call, one instance; closed loop, {result['seconds']} s per cell, "
        f"median of {result['repeats']} runs; client, gateway and Triton share one machine "
        f"({result['machine']}).",
        "",
        "| path | " + " | ".join(f"c={lvl}" for lvl in levels) + " |",
        "|---|" + "---|" * len(levels),
    ]
    for name, row in med.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[str(lvl)]:.1f}" for lvl in levels) + " |")
    lines += [
        "",
        "| ratio | " + " | ".join(f"c={lvl}" for lvl in levels) + " |",
        "|---|" + "---|" * len(levels),
        _ratio_row("gateway batching / no batching", on, off, levels, "{:.1f}x"),
        _ratio_row("gateway batching / Triton batcher", on, direct, levels, "{:.2f}"),
        "",
        "![throughput](batching_loadgen.png)",
        "",
    ]
    (RESULTS / "batching_loadgen.md").write_text("\n".join(lines))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, row in med.items():
        ax.plot(levels, [row[str(lvl)] for lvl in levels], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers")
    ax.set_ylabel("requests/s (median)")
    ax.set_title("gpu_sim: 20 ms + 0.05 ms/row per call")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "batching_loadgen.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.concurrency, args.seconds, args.repeats)
    write(result)
    print((RESULTS / "batching_loadgen.md").read_text())


if __name__ == "__main__":
    main()
