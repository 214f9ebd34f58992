"""The simulator against real runs, as a distribution: ``--runs N`` real runs
of one workload (a new Poisson seed each), each against its own simulation.

One run's agreement says little on a shared machine: two real runs of the same
workload differ by themselves (the arrivals, the machine's noise, what the
live estimator learnt in the first seconds). Here the check is N real runs,
each simulated from its own send times and its own measured call costs
(``sim_vs_real_model``), and per measure the simulator's error is set next to
the spread between the real runs: the noise floor a simulator cannot be asked
to beat. Each run is simulated three times: as the model stands (each device
held for its own compute, the rest of a call its reply, which leaves the
device free: ``replies``), with that rest held on the device (the model of
the pass before), and as the check first simulated. One calibration run, first, gives the path's
noise and the gateway's CPU per request to every simulation, as in
``loadtests.sim_vs_real``.

    .venv/bin/python -m loadtests.sim_vs_real_dist --runs 3

Writes ``loadtests/results/sim_vs_real_dist.md`` and ``.json``. Not a CI test:
it measures timing on a shared machine (several minutes a run of N=3).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from loadtests.sim_vs_real import Calibration, calibrate
from loadtests.sim_vs_real_live import FleetMs, real_run
from loadtests.sim_vs_real_model import overheads, replies, share_noise, simulated_run, within

RESULTS = Path(__file__).parent / "results"
MEASURES = ("p50_ms", "p99_ms", "fast", "slow", "cpu")


def _value(record: dict[str, object], measure: str) -> float:
    if measure.endswith("_ms"):
        return float(record[measure])  # type: ignore[arg-type]
    share: dict[str, float] = record["share"]  # type: ignore[assignment]
    return float(share[measure])


def one_run(
    seed: int, args: argparse.Namespace, fleet: FleetMs, cal: Calibration
) -> dict[str, object]:
    """A real run with Poisson ``seed``, and its simulations under three models."""
    load_before = os.getloadavg()[0]
    real = real_run(
        args.rate, args.duration, fleet, deadline_s=args.deadline_ms / 1e3, poisson_seed=seed
    )
    load_after = os.getloadavg()[0]
    # Kept in the records (the .json): a run can be simulated again under another model.
    sent_at_s: list[float] = real["sent_at_s"]  # type: ignore[assignment]
    real.pop("latencies_ms", None)
    phase = float(real["gateway_up_s"])  # type: ignore[arg-type]
    start: dict[str, float] = real["learnt_at_start_ms"]  # type: ignore[assignment]
    rules = ("split", "measured", "learnt")
    device_ms = {how: overheads(fleet, real, cal.triton_ms, how) for how in rules}
    reply_ms = replies(fleet, real)
    # (name, overhead rule, sweep, the live estimator's state at the start)
    models = (
        ("sim", "split", True, True),
        ("sim_held", "measured", True, True),  # the round trip held the device
        ("sim_before", "learnt", False, False),  # the model before that
    )
    sims = {
        name: simulated_run(
            sent_at_s,
            fleet,
            device_ms[how],
            cal.path_ms,
            cal.stage,
            args.deadline_ms / 1e3,
            0.5,
            args.calibrate_s,
            sweep_phase_s=phase,
            stale_sweep=sweep,
            estimates=start if from_live else None,
            reply_ms=reply_ms if how == "split" else None,
        )
        for name, how, sweep, from_live in models
    }
    return {
        "seed": seed,
        "load": [load_before, load_after],
        "device_ms": device_ms,
        "reply_ms": reply_ms,
        "real": real,
        **sims,
    }


def _fmt(measure: str, value: float) -> str:
    return f"{value:.1f}" if measure.endswith("_ms") else f"{value:.1%}"


def _diff(measure: str, value: float) -> str:
    return f"{value:+.1f} ms" if measure.endswith("_ms") else f"{value * 100:+.1f} pts"


def summary(runs: list[dict[str, object]], sim_key: str = "sim") -> list[dict[str, object]]:
    """Per measure: the real runs' mean and spread, the simulator's error per run."""
    rows = []
    for measure in MEASURES:
        real = [_value(r["real"], measure) for r in runs]  # type: ignore[arg-type]
        sim = [_value(r[sim_key], measure) for r in runs]  # type: ignore[arg-type]
        errors = [s - r for r, s in zip(real, sim, strict=True)]
        share = not measure.endswith("_ms")
        rows.append(
            {
                "measure": measure,
                "real": real,
                "sim": sim,
                "real_mean": statistics.fmean(real),
                "real_sd": statistics.stdev(real) if len(real) > 1 else 0.0,
                "real_range": max(real) - min(real),
                "mean_error": statistics.fmean(errors),
                "mean_abs_error": statistics.fmean(abs(e) for e in errors),
                "passed": sum(within(r, s, share) for r, s in zip(real, sim, strict=True)),
                # A share's binomial standard error at its size, mean over the runs.
                "sampling_se": statistics.fmean(
                    share_noise(v, int(r["real"]["ok"]))  # type: ignore[index]
                    for v, r in zip(real, runs, strict=True)
                )
                if share
                else None,
            }
        )
    return rows


def per_call_lines(runs: list[dict[str, object]]) -> list[str]:
    """The fast server's calls, per run: what its Triton trace says the server
    did with them, and the gateway's mean call time and Triton's queue, real
    and simulated (``sim``, and ``held`` with the reply on the device); and
    the requests refused at the door."""
    lines = [
        "",
        "## The fast server's calls",
        "",
        "Triton's trace of each call of the load (`loadtests.triton_trace`): the "
        "model's compute, the share of calls queued when the one before them ended, and "
        "the gap between that end and their start; reply: the gateway's mean call time "
        "less Triton's queue and compute. Then the gateway's mean call time and Triton's "
        "queue a call, real and simulated; and the requests refused at the door "
        "(RESOURCE_EXHAUSTED; the simulator's `shed`).",
        "",
        "| run | compute ms (p99) | queued | gap ms (p99) | reply ms | call ms: real "
        "| sim | held | queue ms: real | sim | held | refused: real | sim | held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, run in enumerate(runs):
        real: dict[str, Any] = run["real"]  # type: ignore[assignment]
        sim: dict[str, Any] = run["sim"]  # type: ignore[assignment]
        held: dict[str, Any] = run["sim_held"]  # type: ignore[assignment]
        trace = real.get("triton_calls", {}).get("fast", {})
        traced = (
            f"{trace['compute_ms']:.1f} ({trace['compute_p99_ms']:.1f}) | "
            f"{trace['queued_share']:.0%} | {trace['gap_ms']:.2f} ({trace['gap_p99_ms']:.2f})"
            if trace
            else " | | "
        )
        lines.append(
            f"| {i + 1} | {traced} | {run['reply_ms']['fast']:.1f} | "  # type: ignore[index]
            f"{real['call_ms']['fast']:.1f} | {sim['call_ms']['fast']:.1f} | "
            f"{held['call_ms']['fast']:.1f} | {real['servers']['fast']['queue_ms']:.1f} | "
            f"{sim['servers']['fast']['queue_ms']:.1f} | "
            f"{held['servers']['fast']['queue_ms']:.1f} | "
            f"{real['statuses'].get('RESOURCE_EXHAUSTED', 0)} | "
            f"{sim['outcomes'].get('shed', 0)} | {held['outcomes'].get('shed', 0)} |"
        )
    return lines


def report(runs: list[dict[str, object]], args: argparse.Namespace, cal: Calibration) -> str:
    n = len(runs)
    lines = [
        f"# Simulator vs real runs, as a distribution: gpu_sim, Poisson {args.rate:.0f} req/s "
        f"for {args.duration:.0f} s, deadline {args.deadline_ms:.0f} ms, {n} runs",
        "",
        f"    .venv/bin/python -m loadtests.sim_vs_real_dist --runs {n} --seed {args.seed}",
        "",
        f"Fleet: {FleetMs().describe()}. One calibration run at {args.calibrate_rate:.0f} req/s "
        f"for {args.calibrate_s:.0f} s (path noise in order, gateway CPU "
        f"{cal.cpu_ms:.2f} ms a request); then {n} real runs with Poisson seeds "
        f"{', '.join(str(r['seed']) for r in runs)}, each simulated from its own send times and "
        "its own measured call costs, its estimator starting from the live one's state as "
        "the load began, with the estimator's stale sweep at the gateway's phase: `sim`, "
        "each device held for Triton's compute time a request (the CPU pool for its "
        "configured time) and the rest of the gateway's call time (less Triton's queue) "
        "a reply that leaves the device free; `held`: that rest held the device too, as "
        "the previous model had it; `model before`: as this check simulated before that, "
        "each device also costing at least the live estimator's median belief, the "
        "estimator starting from the devices' seeds, no sweep (same path noise). "
        "Machine: 2 shared x86_64 cores; load average "
        "(1 min) before / after each real run: "
        + ", ".join(f"{r['load'][0]:.1f} / {r['load'][1]:.1f}" for r in runs)  # type: ignore[index]
        + ".",
        "",
        "## Each run",
        "",
        "| run | measure | real | sim | sim - real | held | model before | within the rule |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for i, run in enumerate(runs):
        for measure in MEASURES:
            r = _value(run["real"], measure)  # type: ignore[arg-type]
            s = _value(run["sim"], measure)  # type: ignore[arg-type]
            ns = _value(run["sim_held"], measure)  # type: ignore[arg-type]
            old = _value(run["sim_before"], measure)  # type: ignore[arg-type]
            ok = within(r, s, not measure.endswith("_ms"))
            lines.append(
                f"| {i + 1} | {measure} | {_fmt(measure, r)} | {_fmt(measure, s)} | "
                f"{_diff(measure, s - r)} | {_fmt(measure, ns)} | {_fmt(measure, old)} | "
                f"{'yes' if ok else 'NO'} |"
            )
    lines += per_call_lines(runs)
    lines += [
        "",
        "## Error against the noise floor",
        "",
        "Real spread: the sample standard deviation and the range of the real runs (the "
        "noise floor); sampling SE: a share's binomial standard error at the run's answered "
        "count. Errors are simulated less real, per run.",
        "",
        "| measure | real mean | real sd | real range | sampling SE | sim mean error | "
        "sim mean abs error | abs error / real sd | held: mean abs error "
        "| model before: mean abs error | runs within the rule |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    held = {row["measure"]: row for row in summary(runs, "sim_held")}
    before = {row["measure"]: row for row in summary(runs, "sim_before")}
    for row in summary(runs):
        m = str(row["measure"])
        sd = float(row["real_sd"])  # type: ignore[arg-type]
        se = row["sampling_se"]
        ratio = float(row["mean_abs_error"]) / sd if sd > 0 else float("inf")  # type: ignore[arg-type]
        lines.append(
            f"| {m} | {_fmt(m, float(row['real_mean']))} | {_diff(m, sd).lstrip('+')} | "  # type: ignore[arg-type]
            f"{_diff(m, float(row['real_range'])).lstrip('+')} | "  # type: ignore[arg-type]
            f"{'' if se is None else _diff(m, float(se)).lstrip('+')} | "  # type: ignore[arg-type]
            f"{_diff(m, float(row['mean_error']))} | "  # type: ignore[arg-type]
            f"{_diff(m, float(row['mean_abs_error'])).lstrip('+')} | {ratio:.1f} | "  # type: ignore[arg-type]
            f"{_diff(m, float(held[m]['mean_abs_error'])).lstrip('+')} | "  # type: ignore[arg-type]
            f"{_diff(m, float(before[m]['mean_abs_error'])).lstrip('+')} | "  # type: ignore[arg-type]
            f"{row['passed']}/{n} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3, help="real runs (each with its simulation)")
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second (Poisson)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load a run")
    parser.add_argument("--deadline-ms", type=float, default=160.0, help="each request's deadline")
    parser.add_argument("--seed", type=int, default=11, help="run i uses Poisson seed SEED + i")
    parser.add_argument("--calibrate-rate", type=float, default=20.0)
    parser.add_argument("--calibrate-s", type=float, default=10.0)
    parser.add_argument("--out", default="sim_vs_real_dist", help="results file stem")
    args = parser.parse_args()
    start = time.perf_counter()
    fleet = FleetMs()
    cal = calibrate(fleet, args.rate, args.calibrate_rate, args.calibrate_s)
    runs = [one_run(args.seed + i, args, fleet, cal) for i in range(args.runs)]
    text = report(runs, args, cal) + f"\nTook {time.perf_counter() - start:.0f} s.\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.out}.md").write_text(text)
    cal.idle.pop("sent_at_s", None)
    cal.idle["path_ms"] = cal.path_ms  # replayed into every simulation
    raw = {"calibration": cal.idle, "runs": runs, "summary": summary(runs)}
    (RESULTS / f"{args.out}.json").write_text(json.dumps(raw, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
