"""Throughput and gateway CPU per request with tracing off vs on (100 % sampled), in one run.

Starts one tritonserver (tests/models/triton, its own tracing off so only the
gateway's cost is measured), one ``rotel`` collector (receiving, not printing),
and two gateways in front of that Triton: one with tracing off (no exporter),
one with ``OTEL_TRACES_EXPORTER=otlp`` and ``OTEL_TRACES_SAMPLER=always_on``.
Rounds alternate between the two so both see the same machine noise; each
round sends a fixed ``--requests`` ModelInfer calls with ``ghz`` (``$GHZ``,
PATH, or ../shared/tools/ghz) at ``--concurrency``, enough to saturate the
gateway. Per round: throughput, latency, and the CPU (utime + stime from
/proc) over the round divided by the requests sent, of the gateway process
and of its child processes (the span export process, with tracing on).
Reported: medians over ``--rounds``, the median of the rounds' on/off ratios
(each pair ran back to back), and the in-process time of the tracing code a
request runs with tracing off (``off_path_us``). ``--baseline PATH`` adds a
third gateway running another checkout's code (``main``, say) with tracing on,
in the same rounds: a change's effect and the cost against "off" in one run.

Without ghz the project's Python generator (asyncio tritonclient callers)
drives the load instead, and the output says so: it costs far more CPU per
request than ghz, on the same cores as the gateway.

    python -m loadtests.tracing_overhead [--rounds 7] [--requests 4000] [--concurrency 32]
        [--baseline ../main]

Writes tracing.md and tracing.json into ``--out`` (default loadtests/results;
a scratch directory for a run on a busy machine).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
import timeit
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as aioclient
from opentelemetry.trace import NoOpTracer
from tritonclient.grpc import InferInput

from gateway.telemetry import Tracing
from loadtests.suite.load import find_ghz
from scheduler.tracing import recording
from tests.collector import start_collector
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "loadtests" / "results"
REQUEST = ROOT / "loadtests" / "ghz" / "add_sub.json"
MODEL = "add_sub"
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process so far, in seconds."""
    line = Path(f"/proc/{pid}/stat").read_text()
    # The command name is parenthesised and may hold spaces: split after it.
    fields = line.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_S


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid`` (the export process, when tracing is on)."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def on_env(collector: str) -> dict[str, str]:
    """A gateway's environment for tracing on: OTLP/gRPC to ``collector``, all sampled."""
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_SAMPLER": "always_on",
    }


def off_path_us(calls: int = 200_000) -> float:
    """Microseconds per request of the tracing code a request runs with tracing
    off: the trailer and context look-ups in the metadata (a caller that sent
    no ``traceparent``) and the scheduler's ``recording`` checks (four)."""
    tracing = Tracing()
    tracer = NoOpTracer()
    metadata = (("user-agent", "grpc-go/1.0"), ("content-type", "application/grpc"))

    def one() -> None:
        tracing.answer_metadata(metadata)
        tracing.request_context(metadata)
        for _ in range(4):
            recording(tracer)

    return timeit.timeit(one, number=calls) / calls * 1e6


def run_ghz(ghz: str, address: str, requests: int, concurrency: int) -> dict[str, float]:
    data = json.loads(REQUEST.read_text())["data"]
    command = [
        ghz, "--insecure",
        "--proto", str(ROOT / "protos/inference/grpc_service.proto"),
        "--import-paths", str(ROOT / "protos"),
        "--call", "inference.GRPCInferenceService/ModelInfer",
        "-d", json.dumps(data),
        "-c", str(concurrency), "-n", str(requests),
        "--timeout", "20s", "-O", "json", address,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0 and not done.stdout.strip():
        raise RuntimeError(f"ghz failed: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    latency = {d["percentage"]: d["latency"] for d in report.get("latencyDistribution") or ()}
    codes = report.get("statusCodeDistribution") or {}
    return {
        "rps": float(report["rps"]),
        "p50_ms": latency.get(50, 0) / 1e6,
        "p99_ms": latency.get(99, 0) / 1e6,
        "errors": float(sum(n for code, n in codes.items() if code != "OK")),
    }


def _inputs() -> list[InferInput]:
    tensors = []
    for name in ("INPUT0", "INPUT1"):
        tensor = InferInput(name, [1, 16], "FP32")
        tensor.set_data_from_numpy(np.ones((1, 16), np.float32))
        tensors.append(tensor)
    return tensors


async def python_callers(address: str, requests: int, concurrency: int) -> dict[str, float]:
    """The fallback: ``concurrency`` tritonclient callers sharing ``requests``."""
    client = aioclient.InferenceServerClient(address)
    inputs = _inputs()
    latencies: list[float] = []
    errors = 0
    left = requests
    try:

        async def caller() -> None:
            nonlocal errors, left
            while left > 0:
                left -= 1
                start = time.perf_counter()
                try:
                    await client.infer(MODEL, inputs, client_timeout=20)
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
        "rps": requests / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "errors": float(errors),
    }


def one_round(
    ghz: str | None, pid: int, address: str, requests: int, concurrency: int
) -> dict[str, float]:
    kids = children(pid)
    cpu_before = process_cpu_s(pid)
    kids_before = sum(process_cpu_s(k) for k in kids)
    if ghz:
        result = run_ghz(ghz, address, requests, concurrency)
    else:
        result = asyncio.run(python_callers(address, requests, concurrency))
    result["cpu_us_per_request"] = (process_cpu_s(pid) - cpu_before) / requests * 1e6
    kids_cpu = sum(process_cpu_s(k) for k in kids) - kids_before
    result["export_cpu_us_per_request"] = kids_cpu / requests * 1e6
    return result


def measure(
    rounds: int, requests: int, concurrency: int, baseline: Path | None = None
) -> dict[str, Any]:
    found = find_ghz()
    ghz = str(found) if found else None
    driver = "ghz" if ghz else "Python tritonclient callers (ghz not found)"
    print(f"driver: {driver}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_collector(work / "rotel", print_spans=False) as collector,
            start_triton(MODEL_REPOSITORY, work / "triton") as triton,
        ):
            args = ["--triton", triton.grpc_url, "--no-cpu-models", "--log-level", "WARNING"]
            on = on_env(collector.grpc_endpoint)
            off_env = {"OTEL_TRACES_EXPORTER": "none"}
            with contextlib.ExitStack() as stack:
                gateways = [
                    (
                        "off",
                        stack.enter_context(start_gateway(work / "off", args=args, env=off_env)),
                    ),
                    ("on", stack.enter_context(start_gateway(work / "on", args=args, env=on))),
                ]
                if baseline is not None:  # another checkout's code, tracing on
                    gateways.append(
                        (
                            "baseline",
                            stack.enter_context(
                                start_gateway(work / "base", args=args, env=on, repo=baseline)
                            ),
                        )
                    )
                for _, gateway in gateways:  # warm them (channels, first batches)
                    one_round(ghz, gateway.pid, gateway.address, 200, concurrency)
                runs: dict[str, list[dict[str, float]]] = {label: [] for label, _ in gateways}
                for index in range(rounds):
                    # Alternate which goes first, so neither always follows the other.
                    order = gateways if index % 2 == 0 else gateways[::-1]
                    for label, gateway in order:
                        result = one_round(ghz, gateway.pid, gateway.address, requests, concurrency)
                        runs[label].append(result)
                        print(
                            f"round {index + 1} tracing {label}: {result['rps']:.0f} req/s, "
                            f"{result['cpu_us_per_request']:.0f} us CPU/request",
                            flush=True,
                        )
    medians = {
        label: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for label, results in runs.items()
    }
    off_cpu = sorted(r["cpu_us_per_request"] for r in runs["off"])
    compared = {
        label: {
            "overhead": 1 - _paired(runs, "rps", label),
            "cpu_overhead": _paired(runs, "cpu_us_per_request", label) - 1,
        }
        for label in runs
        if label != "off"
    }
    return {
        "off_path_us": off_path_us(),
        "off_cpu_spread_us": [off_cpu[0], off_cpu[-1]],
        "driver": driver,
        "model": MODEL,
        "rounds": rounds,
        "requests": requests,
        "concurrency": concurrency,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "runs": runs,
        "median": medians,
        "overhead": 1 - medians["on"]["rps"] / medians["off"]["rps"],
        "cpu_overhead": medians["on"]["cpu_us_per_request"] / medians["off"]["cpu_us_per_request"]
        - 1,
        # Each round's on/off pair ran back to back: the median of the pairs'
        # ratios follows the machine's drifting load less than two medians do.
        "paired": compared,
        "baseline": _describe(baseline) if baseline is not None else None,
        "baseline_path": str(baseline) if baseline is not None else None,
    }


def _paired(runs: dict[str, list[dict[str, float]]], key: str, label: str) -> float:
    """The median over rounds of ``label``/off for ``key``."""
    pairs = zip(runs[label], runs["off"], strict=True)
    return statistics.median(on[key] / off[key] for on, off in pairs)


def _describe(tree: Path) -> str:
    """The baseline checkout: its path, and its commit when git knows it."""
    done = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return f"{tree} at {done.stdout.strip()}" if done.returncode == 0 else str(tree)


def table(result: dict[str, Any]) -> list[str]:
    med = result["median"]
    lines = [
        "| tracing | req/s | p50 ms | p99 ms | gateway CPU µs/request "
        "| export process CPU µs/request | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for label in med:
        row = med[label]
        name = "on, baseline tree" if label == "baseline" else label
        lines.append(
            f"| {name} | {row['rps']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} "
            f"| {row['cpu_us_per_request']:.0f} | {row['export_cpu_us_per_request']:.0f} "
            f"| {row['errors']:.0f} |"
        )
    return lines


def write(result: dict[str, Any], out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "tracing.json").write_text(json.dumps(result, indent=2) + "\n")
    baseline_flag = f" --baseline {result['baseline_path']}" if result["baseline_path"] else ""
    lines = [
        "# Tracing overhead: gateway throughput with tracing off vs on",
        "",
        f"`python -m loadtests.tracing_overhead --rounds {result['rounds']} --requests "
        f"{result['requests']} --concurrency {result['concurrency']}"
        f"{baseline_flag}`"
        f" on {result['machine']}, "
        "shared with other engineers' tests and benchmarks while it ran.",
        f"Load: {result['driver']}, {result['requests']} ModelInfer calls per round at "
        f"concurrency {result['concurrency']}, model `{result['model']}` on one local "
        "tritonserver (CPU, Python backend); rounds alternate between the gateways; medians of "
        f'{result["rounds"]} rounds. "on" = OTLP/gRPC export to a local rotel, `always_on` '
        "sampler (every request: server, queue, batch, placement, backend spans).",
        "",
        *table(result),
        "",
        f"Throughput cost of tracing at 100 %: {result['overhead']:.1%}; "
        f"gateway CPU per request: {result['cpu_overhead']:+.1%} (from the medians above). "
        f"Median of the rounds' on/off pairs: throughput cost "
        f"{result['paired']['on']['overhead']:.1%}, gateway CPU per request "
        f"{result['paired']['on']['cpu_overhead']:+.1%}.",
        *(
            [
                "",
                f"Baseline tree ({result['baseline']}), tracing on, in the same rounds: "
                f"throughput cost {result['paired']['baseline']['overhead']:.1%}, gateway CPU "
                f"per request {result['paired']['baseline']['cpu_overhead']:+.1%} (medians of "
                "its rounds' pairs with the off rounds).",
            ]
            if result["baseline"]
            else []
        ),
        "",
        f"Tracing off: the tracing code a request still runs (trailer and context look-ups "
        f"in its metadata, the scheduler's four `recording` checks) takes "
        f"{result['off_path_us']:.2f} µs (timed in-process, `off_path_us`), against a "
        f"spread of {result['off_cpu_spread_us'][0]:.0f} to "
        f"{result['off_cpu_spread_us'][1]:.0f} µs of gateway CPU per request between the "
        "off rounds; no span is made (tests/unit/test_tracing.py, "
        "`test_with_tracing_off_no_span_is_made_per_request`).",
        "",
    ]
    (out / "tracing.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout (e.g. of main) whose gateway runs, tracing on, in the same rounds",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help="where tracing.md and tracing.json go"
    )
    args = parser.parse_args()
    result = measure(args.rounds, args.requests, args.concurrency, args.baseline)
    write(result, args.out)
    print((args.out / "tracing.md").read_text())


if __name__ == "__main__":
    main()
