"""Latency at concurrency 1: through the gateway vs straight to Triton, in one run.

Starts a real tritonserver (tests/models/triton) and the real gateway in front
of it, then sends the same request alternately to each (so both see the same
machine noise) and reports percentiles per round and the median over rounds.

    python -m loadtests.latency [--rounds 5] [--requests 400] [--model add_sub]

Writes loadtests/results/latency.md and latency.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

RESULTS = Path(__file__).parent / "results"


def _inputs(model: str) -> list[grpcclient.InferInput]:
    if model == "add_sub":
        arrays = {"INPUT0": np.ones((1, 16), np.float32), "INPUT1": np.ones((1, 16), np.float32)}
        datatype = "FP32"
    elif model == "gpu_sim":
        arrays, datatype = {"INPUT": np.ones((1, 64), np.float32)}, "FP32"
    else:
        raise SystemExit(f"no request template for model {model!r}")
    tensors = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def _percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {f"p{p}": float(np.percentile(ms, p)) for p in (50, 90, 99)}


def measure(rounds: int, requests: int, model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_triton(MODEL_REPOSITORY, work / "triton") as triton,
            start_gateway(
                work / "gateway", args=["--triton", triton.grpc_url, "--no-cpu-models"]
            ) as gateway,
        ):
            clients = {
                "direct": grpcclient.InferenceServerClient(triton.grpc_url),
                "gateway": grpcclient.InferenceServerClient(gateway.address),
            }
            tensors = _inputs(model)
            for client in clients.values():  # warm up connections and caches
                for _ in range(20):
                    client.infer(model, tensors)
            per_round = []
            for _ in range(rounds):
                samples: dict[str, list[float]] = {name: [] for name in clients}
                for _ in range(requests):
                    for name, client in clients.items():
                        start = time.perf_counter()
                        client.infer(model, tensors)
                        samples[name].append(time.perf_counter() - start)
                per_round.append({name: _percentiles(s) for name, s in samples.items()})
    summary = {
        path: {
            key: statistics.median(r[path][key] for r in per_round) for key in ("p50", "p90", "p99")
        }
        for path in ("direct", "gateway")
    }
    overhead = summary["gateway"]["p50"] - summary["direct"]["p50"]
    return {
        "model": model,
        "rounds": rounds,
        "requests_per_round": requests,
        "machine": f"{platform.node()} {platform.machine()} {platform.python_version()}",
        "per_round": per_round,
        "median": summary,
        "p50_overhead_ms": overhead,
        "p50_ratio": summary["gateway"]["p50"] / summary["direct"]["p50"],
    }


def write(result: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latency.json").write_text(json.dumps(result, indent=2) + "\n")
    med = result["median"]
    lines = [
        "# Latency at concurrency 1: gateway vs direct Triton",
        "",
        f"Model `{result['model']}`, {result['rounds']} rounds x {result['requests_per_round']} "
        "requests per path, alternating paths; medians over rounds. Command: "
        "`make bench` (`python -m loadtests.latency`).",
        "",
        "| path | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
        *(
            f"| {path} | {med[path]['p50']:.3f} | {med[path]['p90']:.3f} | {med[path]['p99']:.3f} |"
            for path in ("direct", "gateway")
        ),
        "",
        f"Gateway p50 overhead: {result['p50_overhead_ms']:.3f} ms "
        f"(ratio {result['p50_ratio']:.2f}). Machine: {result['machine']}.",
        "",
    ]
    path = RESULTS / "latency.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--model", default="add_sub")
    args = parser.parse_args()
    result = measure(args.rounds, args.requests, args.model)
    print(write(result).read_text())


if __name__ == "__main__":
    main()
