"""The simulator checked against a real run: same fleet, same workload.

Real: two tritonservers serving ``gpu_sim`` at two speeds (the emulated GPUs
of ``tests/integration/test_scheduling.py``) and the gateway's CPU pool
serving its twin (``tests.support.cpu_sim``), driven through the gateway by
the project's open-loop load generator with Poisson arrivals and a client
deadline. Simulated: ``scheduler.sim`` with the same three devices, the very
arrivals the real run sent (their send times are recorded and replayed), the
same deadline and the default routing policy. Compared: p50, p99 and each
backend's share of the answered requests (from the gateway's own
``gateway_requests_total`` by backend); the check passes when each is within
15% of the larger of the two (for a share under 10% in both, 2 points
instead; the table gives both the difference in points and the relative
one, and says which rule a share passed by).

    .venv/bin/python -m loadtests.sim_vs_real [--rate 30] [--duration 20] [--deadline-ms 160]

Each simulated call takes what the measured run saw a call of that device
take (``--overhead split``, see ``overheads`` and ``replies``): the device
is held for Triton's compute time a request (the CPU pool for its
configured time), and the rest of the gateway's call time beyond Triton's
queue (the round trip, hand-offs and event-loop delays the real gateway
lives with, which its policy reads through its in-flight work and learnt
service times) is the call's reply, which leaves the device free for the
call queued behind it, as Triton runs it; ``measured`` holds the device for
that rest too. The simulated estimator starts from the live one's state as
the load began. The calibration run's path noise is replayed in
time order (``--path-noise in-order``). The real half is in
``loadtests.sim_vs_real_live``, the simulated half in
``loadtests.sim_vs_real_model``; ``loadtests.sim_vs_real_dist`` runs the
check N times.

The default fleet is slow enough (tens of ms a batch) that the devices'
queueing and batching, not the shared machine's CPU noise, decide latency.
The default load (30 req/s) is below the fleet's capacity and the deadline
(160 ms) leaves the slow server time to finish whenever its last call is
half done, so the policy, more than shedding, splits the work: the fast
server takes what it finishes soonest, the slow one what would wait longer
on the fast one. The CPU tier takes only what no accelerator can finish in
time (spillover), which at this load is little (0-2% of the answers in
most runs on the shared machine, more when it is busy). Writes
``loadtests/results/sim_vs_real.md`` and ``.json``. Not a CI test: it
measures timing on a shared machine.

The gateway's own CPU is the simulator's ``CpuStage``: the gateway
process's utime + stime (``/proc/PID/stat``) around a load after the
calibration run, less what it burns idle, per request served.
``--cpu-before`` of it is spent ahead of the batch queue, the rest ahead of
the reply. The load generator's own CPU is measured too; ``--fold-client``
adds it to the stage, else it is only reported. What the stage accounts for
is taken off the path noise drawn from the idle run, not counted twice.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtests.sim_vs_real_live import FleetMs, real_run
from loadtests.sim_vs_real_model import overheads, replies, simulated_run, within
from scheduler.sim.cpu import CpuStage

__all__ = ["overheads", "simulated_run", "within"]  # the model's, kept importable from here

RESULTS = Path(__file__).parent / "results"


def _num(value: object) -> float:
    """A number from the run's records (typed ``object`` there)."""
    assert isinstance(value, int | float)
    return float(value)


@dataclass
class Calibration:
    """What the calibration run measured, as the simulated runs use it."""

    idle: dict[str, object]  # the calibration run's records
    stage: CpuStage  # the gateway's CPU per request, before and after the backend
    cpu_ms: float
    measured_ms: float  # Triton's compute a request less the fast server's configured cost
    triton_ms: float  # each device call's overhead where no measured figure is used
    fast_ms: float  # the fast server's call as simulated: configured + its overhead
    idle_learnt: dict[str, float]
    path_ms: list[float]  # the path's noise, in the order the requests were answered


def calibrate(
    fleet: FleetMs,
    rate: float,
    calibrate_rate: float,
    calibrate_s: float,
    *,
    cpu_stage: bool = True,
    fold_client: bool = False,
    cpu_before: float = 0.5,
    device_ms: float | None = None,
    overhead: str = "split",
) -> Calibration:
    """The calibration run at ``calibrate_rate`` (queueing nothing) and a
    CPU probe at ``rate``: the path's own cost (client, gRPC, gateway, Python
    backend), each idle latency less the fast server's call and the
    gateway's CPU; and the CPU a request costs the gateway at the
    rate under test (per-request CPU falls with rate as batches amortise the
    loop's wake-ups). The fast server's time taken off each latency is its
    call's cost as the simulator will model it (``overheads`` of the
    calibration run): with its learnt service time instead, the round trip
    the simulated device is charged for was counted again as path noise."""
    idle = real_run(calibrate_rate, calibrate_s, fleet, cpu_probe_rate=rate)
    cpu_ms = _num(idle["probe_gateway_cpu_ms_per_request"]) if cpu_stage else 0.0
    if fold_client and cpu_stage:
        cpu_ms += _num(idle["probe_client_cpu_ms_per_request"])
    stage = CpuStage(cpu_ms * cpu_before / 1e3, cpu_ms * (1 - cpu_before) / 1e3)
    # A call's overhead on the device (the Python backend's IPC, the stub's
    # wake-up): Triton's compute time a request in the calibration run (batches
    # of one) less the cost the fast server was configured with; the fallback
    # of ``overheads``, which reads the measured run.
    fast_seen: dict[str, float] = idle["servers"]["fast"]  # type: ignore[index]
    measured_ms = max(0.0, fast_seen["compute_ms"] - fleet.fast[0] - fleet.fast[1])
    triton_ms = measured_ms if device_ms is None else device_ms
    idle_learnt: dict[str, float] = idle["learnt_service_ms"]  # type: ignore[assignment]
    fast_ms = fleet.fast[0] + fleet.fast[1] + overheads(fleet, idle, triton_ms, overhead)["fast"]
    if overhead == "split":  # and its reply, which the simulated call takes too
        fast_ms += replies(fleet, idle)["fast"]
    path_ms = [max(0.0, x - fast_ms - cpu_ms) for x in idle["latencies_ms"]]  # type: ignore[attr-defined]
    return Calibration(idle, stage, cpu_ms, measured_ms, triton_ms, fast_ms, idle_learnt, path_ms)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second (Poisson)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument(
        "--deadline-ms", type=float, default=160.0, help="each request's deadline (client timeout)"
    )
    parser.add_argument("--seed", type=int, default=1, help="of the Poisson arrivals")
    parser.add_argument(
        "--fleet-ms",
        type=float,
        nargs=6,
        metavar=("FAST", "FAST_ROW", "SLOW", "SLOW_ROW", "CPU", "CPU_ROW"),
        help="ms per batch and per row of each device (default 40 1 80 2 50 4)",
    )
    parser.add_argument(
        "--device-ms",
        type=float,
        help="per-call device overhead with --overhead triton, and where a device has no "
        "figure (default: Triton's compute less the configured cost, calibration run)",
    )
    parser.add_argument(
        "--calibrate-rate", type=float, default=20.0, help="req/s of the run that measures the path"
    )
    parser.add_argument(
        "--calibrate-s",
        type=float,
        default=10.0,
        help="seconds of it: the longer, the less one burst of the shared machine's skews it",
    )
    parser.add_argument(
        "--cpu-before", type=float, default=0.5, help="share of the gateway CPU before the queue"
    )
    parser.add_argument(
        "--path-before",
        type=float,
        default=0.5,
        help="share of the path's noise before the batch queue (it eats the deadline)",
    )
    parser.add_argument(
        "--no-cpu-stage", action="store_true", help="do not model the gateway's CPU (as before)"
    )
    parser.add_argument(
        "--fold-client", action="store_true", help="add the load generator's CPU to the stage"
    )
    parser.add_argument(
        "--path-noise",
        choices=("in-order", "shuffled"),
        default="in-order",
        help="the calibration's path noise replayed in time order, or drawn at random",
    )
    parser.add_argument(
        "--overhead",
        choices=("split", "measured", "learnt", "triton"),
        default="split",
        help="each device call's overhead: Triton's compute on the device and the rest of "
        "the gateway's call time as its reply; all of that on the device; that and the live "
        "estimator's belief (as before); or Triton's compute only",
    )
    parser.add_argument("--out", default="sim_vs_real", help="results file stem")
    args = parser.parse_args()
    start = time.perf_counter()
    fleet = FleetMs()
    if args.fleet_ms is not None:
        f = args.fleet_ms
        fleet = FleetMs((f[0], f[1]), (f[2], f[3]), (f[4], f[5]))
    deadline_s = args.deadline_ms / 1e3
    cal = calibrate(
        fleet,
        args.rate,
        args.calibrate_rate,
        args.calibrate_s,
        cpu_stage=not args.no_cpu_stage,
        fold_client=args.fold_client,
        cpu_before=args.cpu_before,
        device_ms=args.device_ms,
        overhead=args.overhead,
    )
    idle, stage, path_ms = cal.idle, cal.stage, cal.path_ms
    measured_ms, triton_ms, fast_ms = cal.measured_ms, cal.triton_ms, cal.fast_ms
    idle_learnt = cal.idle_learnt
    load_before = os.getloadavg()[0]  # the machine is shared: how busy it was
    real = real_run(args.rate, args.duration, fleet, deadline_s=deadline_s, poisson_seed=args.seed)
    sent_at_s: list[float] = real.pop("sent_at_s")  # type: ignore[assignment]
    device_ms = overheads(fleet, real, triton_ms, args.overhead)
    reply_ms = replies(fleet, real) if args.overhead == "split" else {}
    span_s = args.calibrate_s if args.path_noise == "in-order" else None
    sim = simulated_run(
        sent_at_s,
        fleet,
        device_ms,
        path_ms,
        stage,
        deadline_s,
        args.path_before,
        span_s,
        sweep_phase_s=_num(real["gateway_up_s"]),
        estimates=None if args.overhead == "learnt" else real["learnt_at_start_ms"],  # type: ignore[arg-type]
        reply_ms=reply_ms,
    )
    rows = [
        ("p50 ms", real["p50_ms"], sim["p50_ms"], False),
        ("p99 ms", real["p99_ms"], sim["p99_ms"], False),
    ]
    for name in ("fast", "slow", "cpu"):
        rows.append((f"share {name}", real["share"][name], sim["share"][name], True))  # type: ignore[index]
    lines = [
        f"# Simulator vs real run: gpu_sim, Poisson {args.rate:.0f} req/s for "
        f"{args.duration:.0f} s, deadline {args.deadline_ms:.0f} ms",
        "",
        f"Fleet: {fleet.describe()}. The simulator replays the real run's "
        f"{len(sent_at_s)} send times. Calibrated at {args.calibrate_rate:.0f} req/s for "
        f"{args.calibrate_s:.0f} s: "
        f"idle p50 {_num(idle['p50_ms']):.1f} ms (p99 {_num(idle['p99_ms']):.1f} ms), so the "
        f"path adds {float(np.median(path_ms)):.1f} ms (median; {args.path_noise} from the "
        f"idle run, less the fast server's call as simulated, {fast_ms:.1f} ms, and the "
        f"gateway CPU). Each device call's overhead in the simulator ({args.overhead}): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in device_ms.items())
        + (
            "; each call's reply, the device free meanwhile: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in reply_ms.items())
            if reply_ms
            else ""
        )
        + ". The gateway's mean call time in the measured run: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in real["call_ms"].items())  # type: ignore[attr-defined]
        + "; the live estimator's service time for one row, median over the run: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in real["learnt_service_ms"].items())  # type: ignore[attr-defined]
        + " (calibration run: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in idle_learnt.items())
        + f"); Triton's compute less the configured cost: {measured_ms:.1f} ms."
        + f" Load average (1 min) before the measured run: {load_before:.1f}, after: "
        f"{os.getloadavg()[0]:.1f}.",
        f"Gateway CPU per request (/proc utime+stime less idle, in a 3 s probe at "
        f"{args.rate:.0f} req/s after the calibration run): "
        f"{_num(idle['probe_gateway_cpu_ms_per_request']):.2f} ms; load generator's: "
        f"{_num(idle['probe_client_cpu_ms_per_request']):.2f} ms (at "
        f"{args.calibrate_rate:.0f} req/s: {_num(idle['gateway_cpu_ms_per_request']):.2f} and "
        f"{_num(idle['client_cpu_ms_per_request']):.2f} ms). Simulated CPU stage: "
        f"{stage.before_s * 1e3:.2f} ms before the queue + {stage.after_s * 1e3:.2f} ms "
        f"before the reply"
        + (" (client's folded in)" if args.fold_client and not args.no_cpu_stage else "")
        + f"; simulated gateway CPU utilisation {_num(sim['gateway_cpu_utilisation']):.0%}."
        f" During the measured run the gateway used "
        f"{_num(real['gateway_cpu_ms_per_request']):.2f} ms CPU per request.",
        "",
        "| measure | real | simulated | sim - real | relative (of the larger) | within 15% |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ok = True
    for name, r, s, share in rows:
        good = within(float(r), float(s), share)  # type: ignore[arg-type]
        ok = ok and good
        fmt = "{:.1%}" if share else "{:.1f}"
        diff = f"{(s - r) * 100:+.1f} pts" if share else f"{s - r:+.1f} ms"  # type: ignore[operator]
        rel = abs(s - r) / max(abs(r), abs(s), 1e-9)  # type: ignore[operator, arg-type]
        how = "yes" if good and rel <= 0.15 else ("yes (≤2 pts, share <10%)" if good else "NO")
        lines.append(f"| {name} | {fmt.format(r)} | {fmt.format(s)} | {diff} | {rel:.0%} | {how} |")
    lines += [
        "",
        f"Requests: real {real['requests']} ({real['ok']} ok; {real['statuses']}), "
        f"simulated {sim['requests']} ({sim['ok']} ok in time; {sim['outcomes']}). "
        "Shares are of the answered requests, by backend.",
        "Servers in the real run (Triton's statistics: rows a batch, queue and compute "
        "ms a request): "
        + "; ".join(
            f"{name} {v['rows_per_batch']:.1f} rows, queue {v['queue_ms']:.1f}, "
            f"compute {v['compute_ms']:.1f}"
            for name, v in real["servers"].items()  # type: ignore[attr-defined]
        )
        + ". Simulated: "
        + "; ".join(
            f"{name} {v['rows_per_batch']:.1f} rows, queue {v['queue_ms']:.1f} ms a call"
            for name, v in sim["servers"].items()  # type: ignore[attr-defined]
        )
        + ".",
    ]
    lines += [f"Verdict: {'PASS' if ok else 'FAIL'} (took {time.perf_counter() - start:.0f} s)."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    real.pop("latencies_ms", None)
    idle.pop("latencies_ms", None)
    idle.pop("sent_at_s", None)
    (RESULTS / f"{args.out}.md").write_text(text)
    (RESULTS / f"{args.out}.json").write_text(
        json.dumps({"calibration": idle, "real": real, "sim": sim}, indent=1) + "\n"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
