"""Gateway CPU per batched request, with ghz, against its references in one run.

    python -m loadtests.batching_cpu [--baseline-ref main] [--rounds 5] [--requests 10000]

One ``tritonserver`` serves the suite's GPU-shaped model (2 ms + 20 us per row, one
instance, max batch 64; ``loadtests.suite.servers``).  In front of it, on loopback
ports: the gateway of this tree batching ``gpu_sim`` with a 2 ms queue delay, as the
suite's batching route does, and, with ``--baseline-ref``, the same gateway from
that git revision (``git archive`` into the work directory), so before and after are
measured side by side.  Beside them: floor A (a bare ``grpc.aio`` server returning
a canned reply, ``loadtests.suite.floors``) and Triton's own batcher (``gpu_sim_tb``,
the same 2 ms delay) called directly.

Rounds alternate between the paths (the order rotates by one each round); every
figure is the median over the rounds.  CPU per request is utime+stime of the
front process's tree from /proc around each run (``loadtests.suite.runner``).
Writes ``loadtests/results/batching.md`` and ``batching.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtests.suite.load import Ghz, find_ghz
from loadtests.suite.payloads import ADD_SUB, GPU_SIM, GPU_SIM_TB
from loadtests.suite.procs import Fleet, exit_on_sigterm
from loadtests.suite.report import machine
from loadtests.suite.runner import Plan, Summary, run_rounds, summarise
from loadtests.suite.servers import (
    Route,
    floor_server,
    gateway_triton_env,
    infer_ok,
    triton_server,
)

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "loadtests" / "results"
BATCHED = 256  # the concurrency of the batching target (issue 8)


def _gateway(
    fleet: Fleet, name: str, tree: Path, args: list[str], env: dict[str, str]
) -> tuple[int, str]:
    """Start the gateway whose source is ``tree`` (this venv's packages); its PID and address."""
    port_file = fleet.workdir / f"{name}.port"
    server = fleet.launch(
        name,
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0",
         "--port-file", str(port_file), "--log-level", "WARNING", *args],
        ready=lambda address: infer_ok(address, GPU_SIM),
        port_file=port_file,
        env={**env, "PYTHONPATH": str(tree)},
        cwd=tree,
    )  # fmt: skip
    return server.pid, server.address


def _baseline_tree(ref: str, workdir: Path) -> Path:
    """The repository at ``ref``, unpacked into ``workdir`` (no checkout is touched)."""
    tree = workdir / "baseline"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _routes(fleet: Fleet, baseline: Path | None) -> list[Route]:
    triton = triton_server(fleet)
    env = gateway_triton_env(triton)
    args = ["--triton", triton.grpc_url, "--no-cpu-models"]
    pid, address = _gateway(fleet, "gateway", REPO, args, env)
    routes = [
        Route("gateway", "gateway batching (this tree)", address, GPU_SIM, "gateway", pid,
              triton.pid, (BATCHED,)),
    ]  # fmt: skip
    if baseline is not None:
        pid, address = _gateway(fleet, "baseline", baseline, args, env)
        routes.append(
            Route("baseline", "gateway batching (baseline)", address, GPU_SIM, "gateway", pid,
                  triton.pid, (BATCHED,))
        )  # fmt: skip
    floor, floor_pid = floor_server(fleet, "floor-a", ["canned"])
    routes += [
        Route("floor_a", "floor A: grpc.aio canned reply", floor, ADD_SUB, "floor A", floor_pid,
              None, (64, BATCHED)),
        Route("triton_batcher", "Triton's batcher direct (gpu_sim_tb)", triton.grpc_url,
              GPU_SIM_TB, "Triton", triton.pid, None, (BATCHED,)),
    ]  # fmt: skip
    return routes


def _cell(summary: Summary | None, field: str, fmt: str) -> str:
    value = getattr(summary, field) if summary is not None else None
    return "—" if value is None else format(value, fmt)


def _markdown(
    context: dict[str, object], routes: list[Route], medians: dict[str, dict[int, Summary]]
) -> str:
    def get(route: str, level: int, field: str) -> float | None:
        summary = medians.get(route, {}).get(level)
        value = getattr(summary, field) if summary is not None else None
        return float(value) if value is not None else None

    rows = []
    for route in routes:
        for level in route.levels:
            summary = medians.get(route.key, {}).get(level)
            rows.append(
                f"| {route.label} | {level} | {_cell(summary, 'rps', '.0f')} | "
                f"{_cell(summary, 'p50_ms', '.2f')} | {_cell(summary, 'front_cpu_us', '.0f')} | "
                f"{_cell(summary, 'triton_cpu_us', '.0f')} |"
            )
    ratios = []
    floor = get("floor_a", 64, "front_cpu_us")
    floor_256 = get("floor_a", BATCHED, "front_cpu_us")
    triton_rps = get("triton_batcher", BATCHED, "rps")
    for key in ("gateway", "baseline"):
        cpu, rps = get(key, BATCHED, "front_cpu_us"), get(key, BATCHED, "rps")
        if cpu is None:
            continue
        label = "this tree" if key == "gateway" else f"baseline ({context['baseline']})"
        ratios.append(
            f"| {label} | "
            + (f"{cpu / floor:.2f}x" if floor else "—") + " | "
            + (f"{cpu / floor_256:.2f}x" if floor_256 else "—") + " | "
            + (f"{rps / triton_rps:.2f}x" if rps and triton_rps else "—") + " |"
        )  # fmt: skip
    before, after = (
        get("baseline", BATCHED, "front_cpu_us"),
        get("gateway", BATCHED, "front_cpu_us"),
    )
    change = (
        [f"This tree spends {after / before:.2f}x the baseline's CPU per batched request."]
        if before and after
        else []
    )
    return "\n".join(
        [
            "# Gateway batching: CPU per request and throughput, with ghz",
            "",
            f"`{context['command']}` · {context['date']} · {context['machine']} · "
            f"ghz {context['ghz']} · {context['rounds']} rounds alternating between paths, "
            f"{context['requests']} requests per run; every figure is the median over the rounds. "
            "Model `gpu_sim`: 2 ms + 20 us per row, one instance, max batch 64; the gateway "
            "batches it with a 2 ms queue delay, as Triton's batcher does `gpu_sim_tb`. "
            "CPU per request: utime+stime of the process tree from /proc around each run. "
            "The machine is shared with other engineers' tests and benchmarks: compare "
            "figures within this run, not across runs.",
            "",
            "| path | concurrency | req/s | p50 ms | front CPU us/req | Triton CPU us/req |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "| gateway | CPU vs floor A (c=64) | CPU vs floor A (c=256) "
            "| req/s vs Triton's batcher |",
            "|---|---|---|---|",
            *ratios,
            "",
            "Targets (issue 8): CPU per request <= 1.2x floor A; throughput >= 0.6x Triton's "
            "own batcher at c=256. " + " ".join(change),
            "",
        ]
    )


def _machine_line() -> str:
    m = machine()
    return (
        f"{m['cpu']}, {m['cores']} cores ({m['arch']}, Python {m['python']}), "
        f"load average at start {m['loadavg_start']}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", help="git revision to compare with (e.g. main)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10000, help="requests per run")
    parser.add_argument("--max-seconds", type=float, default=90, help="bound on any one run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    exit_on_sigterm()
    binary = find_ghz()
    if binary is None:
        raise SystemExit("ghz not found ($GHZ, PATH, ../shared/tools/ghz)")
    plan = Plan(args.rounds, 0, args.requests, warmup=args.requests // 4, max_s=args.max_seconds)
    with tempfile.TemporaryDirectory(prefix="batching-cpu-") as tmp:
        workdir = Path(tmp)
        ghz = Ghz(binary, workdir)
        baseline = _baseline_tree(args.baseline_ref, workdir) if args.baseline_ref else None
        with Fleet(workdir) as fleet:
            routes = _routes(fleet, baseline)
            cells = run_rounds(routes, ghz, plan, lambda line: print(line, flush=True))
    medians = summarise(cells)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", args.baseline_ref or "HEAD"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    context: dict[str, object] = {
        "command": shlex.join(["python", "-m", "loadtests.batching_cpu", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": _machine_line(),
        "ghz": ghz.version,
        "rounds": args.rounds,
        "requests": args.requests,
        "baseline": (
            (
                args.baseline_ref
                if commit.startswith(args.baseline_ref)
                else f"{args.baseline_ref} = {commit}"
            )
            if args.baseline_ref
            else None
        ),
    }
    args.results.mkdir(parents=True, exist_ok=True)
    text = _markdown(context, routes, medians)
    (args.results / "batching.md").write_text(text)
    cells_json = [vars(cell) for cell in cells]
    (args.results / "batching.json").write_text(
        json.dumps({"context": context, "cells": cells_json}, indent=1) + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
