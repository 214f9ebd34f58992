"""The stream path alone: the gateway's CPU per ModelStreamInfer message beside the stream floor.

    python -m loadtests.suite.streams [--rounds 5] [--before ../main]

Starts the gateway with the CPU ``add_sub`` (as the suite's gateway C), floor A
(whose ``ModelStreamInfer`` is the stream floor) and, with ``--before DIR``, a
second gateway run from another checkout of the project (e.g. the main branch,
to measure a change). ghz drives each with the suite's stream load (16 streams
of 100 messages, ``--requests`` messages a run), the paths alternating within
every round, and the CPU per message of each server comes from /proc as in the
suite. Writes ``loadtests/results/streams.md``: medians over the rounds, and
every round's figures.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from loadtests.suite import report
from loadtests.suite.load import Ghz, find_ghz
from loadtests.suite.payloads import ADD_SUB
from loadtests.suite.procs import Fleet, exit_on_sigterm
from loadtests.suite.runner import Cell, measure
from loadtests.suite.servers import STREAMS, Route, floor_server, infer_ok

RESULTS = Path(__file__).resolve().parents[1] / "results"
MESSAGES = 100  # per stream, as in the suite


def _gateway(fleet: Fleet, name: str, checkout: Path) -> tuple[str, int]:
    """``python -m gateway serve`` with the CPU add_sub, run from ``checkout``'s sources."""
    port_file = fleet.workdir / f"{name}.port"
    server = fleet.launch(
        name,
        [sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1", "--port", "0",
         "--port-file", str(port_file), "--log-level", "WARNING",
         "--cpu-model", "builtin:add_sub"],
        ready=lambda address: infer_ok(address, ADD_SUB),
        port_file=port_file,
        cwd=checkout,  # ``-m`` finds the package in the working directory first
    )  # fmt: skip
    return server.address, server.pid


def run(args: argparse.Namespace, workdir: Path) -> list[str]:
    ghz_binary = find_ghz()
    if ghz_binary is None:
        raise SystemExit("ghz not found ($GHZ, PATH, ../shared/tools/ghz)")
    machine = report.machine()
    here = Path(__file__).resolve().parents[2]
    with Fleet(workdir) as fleet:
        found = [("gateway", "gateway (this checkout)", *_gateway(fleet, "gateway", here))]
        if args.before is not None:
            address, pid = _gateway(fleet, "before", args.before.resolve())
            found.append(("before", f"gateway ({args.before})", address, pid))
        address, pid = floor_server(fleet, "floor-a", ["canned"])
        found.append(("floor", "stream floor (floor A)", address, pid))
        routes = [
            Route(key, label, address, ADD_SUB, key, pid, None, (STREAMS,), MESSAGES)
            for key, label, address, pid in found
        ]
        ghz = Ghz(ghz_binary, workdir)
        streams = max(STREAMS, args.requests // MESSAGES)
        for route in routes:  # warm-up
            measure(route, STREAMS, max(STREAMS, streams // 4), ghz, args.max_seconds)
        cells: dict[str, list[Cell]] = {route.key: [] for route in routes}
        for number in range(args.rounds):
            shift = number % len(routes)
            for route in [*routes[shift:], *routes[:shift]]:
                cell = measure(route, STREAMS, streams, ghz, args.max_seconds)
                cell.round = number + 1
                cells[route.key].append(cell)
                cpu = "-" if cell.front_cpu_us is None else f"{cell.front_cpu_us:.0f}"
                print(f"round {cell.round}  {route.label:<40} {cpu} us/msg {cell.error or ''}")
    return _table(args, machine, routes, cells, ghz.version)


def _table(
    args: argparse.Namespace,
    machine: dict[str, object],
    routes: list[Route],
    cells: dict[str, list[Cell]],
    ghz_version: str,
) -> list[str]:
    def median(key: str, field: str) -> float | None:
        values = [getattr(c, field) for c in cells[key] if getattr(c, field) is not None]
        return statistics.median(values) if values else None

    floor = median("floor", "front_cpu_us")
    command = shlex.join(["python", "-m", "loadtests.suite.streams", *sys.argv[1:]])
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# ModelStreamInfer: gateway CPU per message beside the stream floor",
        "",
        f"Command: `{command}` · {date} · {machine['cpu']}, {machine['cores']} cores, "
        f"load average at start {machine['loadavg_start']}, at the end "
        f"{[round(x, 2) for x in os.getloadavg()]} (a machine shared with other "
        f"engineers' tests and benchmarks) · ghz {ghz_version}, {STREAMS} streams of "
        f"{MESSAGES} messages (`add_sub`, FP32 [1, 16] x 2) · {args.rounds} rounds, the "
        "paths alternating within each; CPU is utime+stime of the server's process tree "
        "from /proc over a run, per message answered; figures are medians over the rounds.",
        "",
        "| path | CPU us/msg | x stream floor | msg/s | ghz CPU us/msg |",
        "|---|---|---|---|---|",
    ]
    for route in routes:
        cpu = median(route.key, "front_cpu_us")
        ratio = "—" if cpu is None or not floor else f"{cpu / floor:.2f}"
        lines.append(
            f"| {route.label} | {_n(cpu)} | {ratio} | {_n(median(route.key, 'rps'))} "
            f"| {_n(median(route.key, 'client_cpu_us'))} |"
        )
    lines += ["", "Every round (CPU us/msg):", "", "| round | " + " | ".join(
        r.label for r in routes) + " |", "|---|" + "---|" * len(routes)]  # fmt: skip
    for number in range(args.rounds):
        row = [_n(cells[r.key][number].front_cpu_us) for r in routes]
        lines.append(f"| {number + 1} | " + " | ".join(row) + " |")
    return [*lines, ""]


def _n(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=10_000, help="messages per run")
    parser.add_argument("--before", type=Path, help="another checkout's gateway, to compare")
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on any one run")
    args = parser.parse_args()
    exit_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="streams-") as tmp:
        lines = run(args, Path(tmp))
    out = RESULTS / "streams.md"
    out.write_text("\n".join(lines))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
