"""Throughput with tracing off vs on (100 % sampled, OTLP to a local collector), in one run.

Starts one tritonserver (tests/models/triton, its own tracing off so only the
gateway's cost is measured), one ``rotel`` collector (receiving, not printing),
and two gateways in front of that Triton: one with tracing off (no exporter),
one with ``OTEL_TRACES_EXPORTER=otlp`` and ``OTEL_TRACES_SAMPLER=always_on``.
Rounds alternate between the two so both see the same machine noise; each
round is a closed loop of ``--concurrency`` asyncio tritonclient callers for
``--seconds``. Reported: the median over ``--rounds`` of throughput and latency.

    python -m loadtests.tracing_overhead [--rounds 3] [--seconds 5] [--concurrency 16]

Writes loadtests/results/tracing.md and tracing.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as aioclient
from tritonclient.grpc import InferInput

from tests.collector import start_collector
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

RESULTS = Path(__file__).parent / "results"
MODEL = "add_sub"


def _inputs() -> list[InferInput]:
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        tensors.append(tensor)
    return tensors


async def closed_loop(address: str, concurrency: int, seconds: float) -> dict[str, float]:
    """``concurrency`` callers, each sending its next request when the last one answers."""
    client = aioclient.InferenceServerClient(address)
    inputs = _inputs()
    latencies: list[float] = []
    errors = 0
    try:
        await client.infer(MODEL, inputs)  # warm the channel
        end = time.perf_counter() + seconds

        async def caller() -> None:
            nonlocal errors
            while (start := time.perf_counter()) < end:
                try:
                    await client.infer(MODEL, inputs, client_timeout=10)
                except Exception:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    finally:
        await client.close()
    ms = np.array(latencies) * 1e3
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": float(errors),
    }


def measure(rounds: int, seconds: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_collector(work / "rotel", print_spans=False) as collector,
            start_triton(MODEL_REPOSITORY, work / "triton") as triton,
        ):
            args = ["--triton", triton.grpc_url, "--no-cpu-models", "--log-level", "WARNING"]
            on_env = {
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_EXPORTER_OTLP_ENDPOINT": collector.grpc_endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "always_on",
            }
            off_env = {"OTEL_TRACES_EXPORTER": "none"}
            with (
                start_gateway(work / "off", args=args, env=off_env) as off,
                start_gateway(work / "on", args=args, env=on_env) as on,
            ):
                runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
                for _ in range(rounds):
                    for label, gateway in (("off", off), ("on", on)):
                        result = asyncio.run(closed_loop(gateway.address, concurrency, seconds))
                        runs[label].append(result)
                        print(f"tracing {label}: {result['rps']:.0f} req/s", flush=True)
    medians = {
        label: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for label, results in runs.items()
    }
    return {
        "model": MODEL,
        "rounds": rounds,
        "seconds": seconds,
        "concurrency": concurrency,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "runs": runs,
        "median": medians,
        "overhead": 1 - medians["on"]["rps"] / medians["off"]["rps"],
    }


def write(result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "tracing.json").write_text(json.dumps(result, indent=2) + "\n")
    med = result["median"]
    lines = [
        "# Tracing overhead: gateway throughput with tracing off vs on",
        "",
        f"`python -m loadtests.tracing_overhead --rounds {result['rounds']} --seconds "
        f"{result['seconds']:g} --concurrency {result['concurrency']}` on {result['machine']}.",
        f"Model `{result['model']}` on one local tritonserver (CPU, Python backend), "
        f"{result['concurrency']} closed-loop asyncio tritonclient callers, "
        f"{result['seconds']:g} s per round, rounds alternating off/on; medians of "
        f'{result["rounds"]} rounds. "on" = OTLP/gRPC export to a local rotel, '
        "`always_on` sampler (every request: server, queue, batch, placement, backend spans).",
        "",
        "| tracing | req/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|",
    ]
    for label in ("off", "on"):
        row = med[label]
        lines.append(
            f"| {label} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['errors']:.0f} |"
        )
    lines += [
        "",
        f"Throughput cost of tracing at 100 %: {result['overhead']:.1%}.",
        "",
        "The callers, both gateways, Triton and the collector share the machine's cores, and",
        "the gateway is CPU-bound here, so span creation and OTLP export (on the batch span",
        "processor's thread, under the GIL) come straight out of throughput; sample less",
        "(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`) to pay proportionally less.",
        "",
    ]
    (RESULTS / "tracing.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    result = measure(args.rounds, args.seconds, args.concurrency)
    write(result)
    print((RESULTS / "tracing.md").read_text())


if __name__ == "__main__":
    main()
