"""Python calls, CPU by thread and garbage collections per ModelInfer request, tracing off vs on.

    python -m loadtests.tracing_calls [--requests 3000] [--concurrency 32] [--top 30]
        [--json out.json]

Throughput and CPU per request on a shared 2-core machine move by tens of
percent from one round to the next; the number of Python calls a request
costs does not. This starts one ``tritonserver`` (tests/models/triton) and one
``rotel`` collector, then, for each of tracing off and on (100 % sampled, OTLP
to the collector), a child process that runs the real gateway (its gRPC server
included, on an ephemeral loopback port) and drives it with ``ghz`` at
``--concurrency`` (``$GHZ``, PATH or ../shared/tools/ghz). At 32 the
gateway batches: calls per request then move with the batch sizes of the
moment, by a few percent between runs; at 1 they do not. After a warm-up the
child measures, over ``--requests`` calls each:

- unprofiled: CPU per request of each of its threads (utime + stime from
  /proc), of the span export process, and the garbage collector's
  collections per generation and time in collections;
- under ``sys.setprofile`` (every thread): Python function calls and calls
  into C, by function, split into the event loop's thread and the others.

The parent prints the figures side by side and the functions whose calls per
request changed most.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from loadtests.suite.load import find_ghz
from loadtests.tracing_overhead import REQUEST, ROOT, children, process_cpu_s

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def thread_cpu_s() -> dict[str, float]:
    """utime + stime of each thread of this process, by name (the main thread
    as ``main``; threads of one name summed)."""
    found: dict[str, float] = collections.defaultdict(float)
    pid = os.getpid()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            line = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = line[line.index("(") + 1 : line.rindex(")")]
        fields = line.rsplit(")", 1)[1].split()
        seconds = (int(fields[11]) + int(fields[12])) / _TICKS_PER_S
        found["main" if int(task.name) == pid else name] += seconds
    return found


async def ghz(address: str, requests: int, concurrency: int) -> None:
    data = json.loads(REQUEST.read_text())["data"]
    found = find_ghz()
    if found is None:
        raise SystemExit("ghz not found ($GHZ, PATH, ../shared/tools/ghz): it drives the load")
    process = await asyncio.create_subprocess_exec(
        str(found), "--insecure",
        "--proto", str(ROOT / "protos/inference/grpc_service.proto"),
        "--import-paths", str(ROOT / "protos"),
        "--call", "inference.GRPCInferenceService/ModelInfer",
        "-d", json.dumps(data), "-c", str(concurrency), "-n", str(requests),
        "--timeout", "30s", "-O", "json", address,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    report = json.loads(out or b"{}")
    codes = report.get("statusCodeDistribution") or {}
    if set(codes) - {"OK"} or not codes:
        raise SystemExit(f"ghz: not all calls OK: {codes} {err.decode()[-500:]}")


class Counts:
    """A profile hook for every thread that counts calls only while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.main = threading.get_ident()
        self.calls: collections.Counter[tuple[str, str, str]] = collections.Counter()

    def hook(self, frame: FrameType, event: str, arg: Any) -> None:
        if not self.on:
            return
        where = "loop" if threading.get_ident() == self.main else "other"
        if event == "call":
            code = frame.f_code
            self.calls[where, "/".join(code.co_filename.split("/")[-2:]), code.co_name] += 1
        elif event == "c_call":
            self.calls[where, "C", getattr(arg, "__qualname__", repr(arg))] += 1


async def child_main(
    mode: str, phase: str, triton: str, requests: int, concurrency: int
) -> dict[str, Any]:
    from gateway.config import load_settings
    from gateway.server import GatewayServer
    from gateway.telemetry import configure_tracing

    counts = Counts()
    if phase == "calls":
        # Installed before the gateway starts its threads, so that they have it
        # too (and so not in the process that measures CPU: the hook costs).
        threading.setprofile(counts.hook)
        sys.setprofile(counts.hook)
    tracing = configure_tracing()
    assert tracing.enabled == (mode == "on")
    settings = load_settings(
        triton_endpoints=[triton], cpu_models=[], host="127.0.0.1", port=0, probe_timeout_s=30
    )
    server = GatewayServer(settings, tracing)
    port = await server.start()
    address = f"127.0.0.1:{port}"
    gc.freeze()  # as gateway.server.serve does once started
    try:
        await ghz(address, 1000, concurrency)  # warm-up: channels, layouts, estimates
        if phase == "calls":
            counts.on = True
            await ghz(address, requests, concurrency)
            counts.on = False
            return {
                "calls": {"|".join(key): value / requests for key, value in counts.calls.items()}
            }
        gc_time = [0.0]
        began = [0.0]

        def timed(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                began[0] = time.perf_counter()
            else:
                gc_time[0] += time.perf_counter() - began[0]

        gc.callbacks.append(timed)
        stats_before = gc.get_stats()
        cpu_before = thread_cpu_s()
        kids = children(os.getpid())
        kids_before = sum(process_cpu_s(k) for k in kids)
        await ghz(address, requests, concurrency)
        cpu_after = thread_cpu_s()
        kids_cpu = sum(process_cpu_s(k) for k in kids) - kids_before
        stats_after = gc.get_stats()
        gc.callbacks.remove(timed)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        await server.stop()
    n = requests
    return {
        "cpu_us": {k: (cpu_after[k] - cpu_before.get(k, 0.0)) / n * 1e6 for k in cpu_after},
        "export_cpu_us": kids_cpu / n * 1e6,
        "gc_collections": [
            (a["collections"] - b["collections"]) / n
            for a, b in zip(stats_after, stats_before, strict=True)
        ],
        "gc_us": gc_time[0] / n * 1e6,
    }


def child(args: argparse.Namespace) -> None:
    result = child_main(args.child, args.phase, args.triton, args.requests, args.concurrency)
    args.out.write_text(json.dumps(asyncio.run(result)))


def run_mode(
    mode: str, triton: str, collector: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if mode == "on":
        env |= {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_TRACES_SAMPLER": "always_on",
        }
    else:
        env["OTEL_TRACES_EXPORTER"] = "none"
    result: dict[str, Any] = {"mode": mode, "requests": args.requests}
    for phase in ("cpu", "calls"):
        out = work / f"{mode}-{phase}.json"
        subprocess.run(
            [sys.executable, "-m", "loadtests.tracing_calls", "--child", mode, "--phase", phase,
             "--triton", triton, "--requests", str(args.requests),
             "--concurrency", str(args.concurrency), "--out", str(out)],
            check=True, env=env, cwd=ROOT, timeout=900,
        )  # fmt: skip
        result |= json.loads(out.read_text())
    return result


def summary(results: dict[str, dict[str, Any]], top: int) -> list[str]:
    lines = []
    for mode, r in results.items():
        calls = r["calls"]
        loop = sum(v for k, v in calls.items() if k.startswith("loop|"))
        other = sum(v for k, v in calls.items() if k.startswith("other|"))
        cpu = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["cpu_us"].items()) if v >= 1)
        lines.append(
            f"{mode}: calls/request {loop + other:.1f} (event loop {loop:.1f}, other threads "
            f"{other:.1f}); CPU us/request: total {sum(r['cpu_us'].values()):.0f} ({cpu}), "
            f"export process {r['export_cpu_us']:.0f}; gc collections/request "
            f"{', '.join(f'{c:.4f}' for c in r['gc_collections'])}, gc {r['gc_us']:.1f} us/request"
        )
    if {"off", "on"} <= results.keys():
        off, on = results["off"]["calls"], results["on"]["calls"]
        delta = {k: on.get(k, 0.0) - off.get(k, 0.0) for k in off.keys() | on.keys()}
        lines.append(f"on - off, the {top} largest changes (calls/request, thread|file|function):")
        for key, value in sorted(delta.items(), key=lambda kv: -abs(kv[1]))[:top]:
            lines.append(f"{value:+8.2f}  {key}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument(
        "--concurrency", type=int, default=32, help="ghz's; 1 makes every batch a batch of one"
    )
    parser.add_argument("--modes", default="off,on")
    parser.add_argument("--json", type=Path, help="write both modes' results here")
    parser.add_argument("--child", choices=("off", "on"), help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=("cpu", "calls"), help=argparse.SUPPRESS)
    parser.add_argument("--triton", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0
    from tests.collector import start_collector
    from tests.support.triton import MODEL_REPOSITORY, start_triton

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_collector(work / "rotel", print_spans=False) as collector,
            start_triton(MODEL_REPOSITORY, work / "triton") as triton,
        ):
            results = {
                mode: run_mode(mode, triton.grpc_url, collector.grpc_endpoint, args, work)
                for mode in args.modes.split(",")
            }
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(summary(results, args.top)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
