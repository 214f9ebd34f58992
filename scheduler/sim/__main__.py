"""``python -m scheduler.sim``: run a scenario under every routing policy and compare.

The default (no options) runs the ``default`` scenario — 16 GPUs of two
speeds and a CPU pool, three models — under each policy and prints a table.
``--sweep`` adds offered-load points; ``--out DIR`` writes the table (.md),
the raw numbers (.json) and a plot (.png) there.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from scheduler.routing import ROUTERS
from scheduler.sim.cpu import CpuStage
from scheduler.sim.engine import Simulation
from scheduler.sim.report import Result, measure, plot_sweep, table
from scheduler.sim.scenarios import SCENARIOS


def run_one(scenario_name: str, router: str, **options: object) -> Result:
    # No cyclic collection from the workload's records to the measures: the
    # run itself makes no cycles per request (``Simulation.run``), and at a
    # million requests the collector's passes over the arrivals as they are
    # built cost about as much as building them.
    enabled = gc.isenabled()
    gc.disable()
    try:
        scenario = SCENARIOS[scenario_name](**options)
        start = time.perf_counter()
        sim = Simulation(scenario, router)
        requests = sim.run()
        scale = float(options.get("scale", 1.0))  # type: ignore[arg-type]
        result = measure(sim, requests, time.perf_counter() - start, scale)
        sim.release()  # the records go by reference counting, not the collector
        return result
    finally:
        if enabled:
            gc.enable()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scheduler.sim", description=__doc__)
    parser.add_argument("--scenario", default="default", choices=sorted(SCENARIOS))
    parser.add_argument(
        "--policy", action="append", choices=ROUTERS, help="repeatable; default all"
    )
    parser.add_argument("--gpus", type=int, help="GPUs in the fleet (default per scenario)")
    parser.add_argument("--duration", type=float, help="seconds of traffic")
    parser.add_argument(
        "--requests", type=int, help="exactly this many requests (cuts the traffic)"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="offered load, x the base")
    parser.add_argument("--sweep", type=float, nargs="*", help="offered-load points to run")
    parser.add_argument("--replicas", type=int, help="gateway replicas")
    parser.add_argument("--trace", type=Path, help="replay this CSV/JSONL trace")
    parser.add_argument("--telemetry-interval", type=float, help="seconds between samples")
    parser.add_argument("--lag", type=float, help="seconds before a sample is seen")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cold", action="store_true", help="servers start with the run: no warm estimates"
    )
    parser.add_argument(
        "--gateway-cpu-ms",
        type=float,
        nargs=2,
        metavar=("BEFORE", "AFTER"),
        help="model each replica's CPU: ms of work per request before / after the backend",
    )
    parser.add_argument(
        "--no-stale-sweep",
        action="store_true",
        help="do not run the estimator's stale-estimate sweep (the live gateway does)",
    )
    parser.add_argument("--name", help="output file stem (default sim_SCENARIO)")
    parser.add_argument("--out", type=Path, help="write NAME.md, NAME.json, NAME.png here")
    parser.add_argument("--verbose", action="store_true", help="log ejections and readmissions")
    args = parser.parse_args(argv)
    # The fleet logs every ejection; with failures at scale that drowns the table.
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    options: dict[str, object] = {"seed": args.seed}
    for key in ("gpus", "replicas", "trace", "requests"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.telemetry_interval is not None:
        options["telemetry_interval_s"] = args.telemetry_interval
    if args.lag is not None:
        options["telemetry_lag_s"] = args.lag
    if args.cold:
        options["cold"] = True
    if args.no_stale_sweep:
        options["stale_sweep"] = False
    if args.gateway_cpu_ms is not None:
        before, after = args.gateway_cpu_ms
        options["gateway_cpu"] = CpuStage(before / 1e3, after / 1e3)
    if args.duration is not None:
        options["duration_s"] = args.duration
    scales = args.sweep or [args.scale]
    results = []
    for scale in scales:
        for router in args.policy or ROUTERS:
            result = run_one(args.scenario, router, **options, scale=scale)
            results.append(result)
            print(
                f"{args.scenario} x{scale:.2f} {router}: {result.requests} requests "
                f"in {result.wall_s:.1f} s",
                file=sys.stderr,
            )
    text = table(results)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.name or f"sim_{args.scenario}"
        (args.out / f"{stem}.md").write_text(text + "\n")
        raw = [dataclasses.asdict(r) for r in results]
        (args.out / f"{stem}.json").write_text(json.dumps(raw, indent=1) + "\n")
        if len(scales) > 1:
            plot_sweep(results, args.out / f"{stem}.png", args.scenario)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
