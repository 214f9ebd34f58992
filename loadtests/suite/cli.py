"""``python -m loadtests.suite``: the whole benchmark suite in one run (``make bench-suite``).

    python -m loadtests.suite [--quick] [--rounds 3] [--requests 10000] [--requests-c1 1000]

Starts Triton, the gateways, the floors and (when installed) MLServer on loopback
ports, drives them with ghz in alternating rounds, and writes
``loadtests/results/suite.md``, ``suite.json``, ``suite_cpu.png`` and
``suite_throughput.png``.  ``--quick`` is a one-minute smoke run (one round, few
requests: its figures are rough).  ghz comes from ``$GHZ``, PATH or
``../shared/tools/ghz``; without it the Python generator runs instead and every
output says that its numbers are not comparable.

Every server runs in its own process group and is stopped when the suite ends,
whichever way it ends: normally, on an error, on Ctrl-C, or on SIGTERM.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtests.suite import plots, report
from loadtests.suite.load import Ghz, LoadRunner, PythonLoad, find_ghz
from loadtests.suite.procs import Fleet, exit_on_sigterm
from loadtests.suite.runner import Plan, idle_cpu, run_rounds, summarise
from loadtests.suite.servers import start_fleet

RESULTS = Path(__file__).resolve().parents[1] / "results"
FALLBACK_WARNING = (
    "ghz NOT FOUND: these figures come from the project's Python load generator "
    "(loadtests/loadgen.py), whose own CPU is the ceiling on a 2-core machine; they are "
    "NOT comparable with ghz figures, and streams were not measured. Set GHZ=/path/to/ghz."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.suite", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="1-minute smoke run")
    parser.add_argument("--rounds", type=int, help="rounds over every path (default 3)")
    parser.add_argument("--requests", type=int, help="requests per run at c>1 (default 10000)")
    parser.add_argument("--requests-c1", type=int, help="requests per run at c=1 (default 1000)")
    parser.add_argument("--stream-messages", type=int, default=100, help="messages per stream")
    parser.add_argument("--connections", type=int, default=1, help="ghz connections per run")
    parser.add_argument("--max-seconds", type=float, default=60, help="bound on any one run")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where results go")
    parser.add_argument("--workdir", type=Path, help="keep logs here (default: a temp dir)")
    return parser


def _plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    rounds = args.rounds or (1 if quick else 3)
    requests = args.requests or (2000 if quick else 10000)
    requests_c1 = args.requests_c1 or (200 if quick else 1000)
    return Plan(rounds, requests_c1, requests, warmup=requests // 4, max_s=args.max_seconds)


def _loader(workdir: Path, connections: int) -> LoadRunner:
    ghz = find_ghz()
    if ghz is not None:
        return Ghz(ghz, workdir, connections)
    banner = "!" * 78
    print(f"{banner}\n{FALLBACK_WARNING}\n{banner}", file=sys.stderr, flush=True)
    return PythonLoad()


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    started = time.monotonic()
    plan = _plan(args)
    load = _loader(workdir, args.connections)
    print(f"suite: load generator {load.name} ({load.version}); logs in {workdir}", flush=True)
    context: dict[str, Any] = {
        "command": shlex.join(["python", "-m", "loadtests.suite", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "load_generator": load.name,
        "load_generator_version": load.version,
        "comparable": load.comparable,
        "warning": None if load.comparable else FALLBACK_WARNING,
        "plan": vars(plan),
    }
    with Fleet(workdir) as fleet:
        print("suite: starting Triton, gateways, floors, MLServer ...", flush=True)
        info = start_fleet(fleet, stream_messages=args.stream_messages)
        for note in info.notes:
            print(f"suite: {note}", flush=True)
        idle = idle_cpu(list(fleet.names))
        idle_ms_per_s = {fleet.names[pid]: round(ms, 1) for pid, ms in idle.items()}
        cells = run_rounds(info.routes, load, plan, lambda line: print(line, flush=True))
    medians = summarise(cells)
    targets = report.evaluate(medians, comparable=load.comparable)
    context |= {
        "notes": [*info.notes, *([] if load.comparable else [FALLBACK_WARNING])],
        "idle_ms_per_s": idle_ms_per_s,
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "elapsed_min": (time.monotonic() - started) / 60,
        "mlserver_version": info.mlserver,
        "workers_available": info.workers,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    report.write_json(args.results / "suite.json", context, info.routes, cells, medians, targets)
    report.write_markdown(args.results / "suite.md", context, info.routes, medians, targets)
    subtitle = f"{load.name}, median of {plan.rounds} rounds"
    plots.plot(args.results, info.routes, medians, subtitle)
    return context


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    exit_on_sigterm()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        run(args, args.workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="suite-") as tmp:
            run(args, Path(tmp))
    print((args.results / "suite.md").read_text())
    return 0
