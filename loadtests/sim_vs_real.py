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

Each simulated device's call costs what the measured run saw a call of it
take (``--overhead learnt``, see ``overheads``): the configured device time
plus the round trip, IPC, hand-offs and event-loop delays the real gateway
lives with, which its policy reads through its in-flight work and learnt
service times. The calibration run's path noise is replayed in time order
(``--path-noise in-order``). The real half is in
``loadtests.sim_vs_real_live``.

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
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt

from loadtests.sim_vs_real_live import FleetMs, real_run
from scheduler.placement import Tier
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import DeviceSpec, DeviceType
from scheduler.sim.engine import Scenario, SimModel, Simulation
from scheduler.sim.report import measure
from scheduler.sim.workload import Arrival

RESULTS = Path(__file__).parent / "results"


def simulated_run(
    sent_at_s: list[float],
    fleet: FleetMs,
    device_ms: Mapping[str, float],
    path_ms: list[float],
    cpu: CpuStage | None = None,
    deadline_s: float = 10.0,
    path_before: float = 0.5,
    path_span_s: float | None = None,
) -> dict[str, object]:
    """The same fleet in the simulator, fed the real run's arrivals
    (``sent_at_s``) with the same deadline. ``device_ms`` by device (what a
    call costs beyond the configured device time: the round trip, the Python
    backend's IPC, the thread hand-off) is added to that device's fixed cost,
    where it occupies the device (the gateway sends a backend its next batch
    only when the last one is back, so the device is taken for the whole
    call); each request also gets a draw from
    ``path_ms``, what the path (client, gRPC, the gateway, a shared machine's
    scheduling noise) added to requests that queued nowhere. ``path_before``
    of that draw delays the request's arrival at the batch queue while its
    deadline stays anchored at the send time (the client's deadline runs
    from the send: time lost on the way in is time the policy no longer has,
    which decides spills to the CPU tier), and the rest of a second, separate
    draw is added to its reply. With ``path_span_s``, ``path_ms`` is a time
    series over that many seconds (the calibration run's requests in the
    order they were answered) and the draws are not random: a request takes
    the sample at its send time, its reply the one at its finish time (both
    wrapped around the span), so a burst of the shared machine's noise
    delays neighbouring requests together, as it does in a real run."""

    def kind(name: str, cost: tuple[float, float], tier: Tier) -> DeviceType:
        return DeviceType(name, (cost[0] + device_ms[name]) / 1e3, cost[1] / 1e3, tier=tier)

    devices = [
        DeviceSpec("fast", kind("fast", fleet.fast, Tier.ACCELERATOR)),
        DeviceSpec("slow", kind("slow", fleet.slow, Tier.ACCELERATOR)),
        DeviceSpec("cpu", kind("cpu", fleet.cpu, Tier.CPU), instances=fleet.cpu_workers),
    ]
    rng = np.random.default_rng(0)
    series = np.array(path_ms) / 1e3

    def noise_at(times_s: list[float]) -> npt.NDArray[np.float64]:
        if path_span_s is None:
            return rng.choice(series, size=len(times_s))
        at = (np.array(times_s) / path_span_s * series.size).astype(np.int64) % series.size
        drawn: npt.NDArray[np.float64] = series[at]
        return drawn

    path_s = noise_at(sent_at_s)
    before_s = path_s * path_before
    arrivals = sorted(
        Arrival(t + ahead, "gpu_sim", 1, deadline_s - ahead)
        for t, ahead in zip(sent_at_s, before_s.tolist(), strict=True)
    )
    duration_s = max((a.at_s for a in arrivals), default=0.0) + 0.001
    scenario = Scenario(
        "sim_vs_real",
        devices,
        [SimModel("gpu_sim", max_batch_size=64)],
        arrivals,
        duration_s,
        noise_sigma=0.05,
        gateway_cpu=cpu or CpuStage(),
        admission=True,  # the live gateway refuses what its queue would make late
    )
    sim = Simulation(scenario, "predicted_finish_time")
    requests = sim.run()
    result = measure(sim, requests, 0.0)
    # The deadline is the send time plus ``deadline_s``: latency runs from the send.
    answered = [r for r in requests if r.outcome == "ok"]
    latency_ms = np.array([(r.finished_at - (r.deadline - deadline_s)) * 1e3 for r in answered])
    after_s = noise_at([r.finished_at for r in answered]) * (1 - path_before)
    latency_ms += after_s * 1e3
    # The client gives up at its deadline: a reply the path noise pushes past
    # it is a DEADLINE_EXCEEDED there, not a latency.
    latency_ms = latency_ms[latency_ms <= deadline_s * 1e3]
    outcomes: dict[str, int] = {}
    for r in requests:
        outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1
    return {
        "requests": result.requests,
        "ok": int(latency_ms.size),
        "outcomes": outcomes,
        "p50_ms": float(np.percentile(latency_ms, 50)),
        "p99_ms": float(np.percentile(latency_ms, 99)),
        "share": {k: result.share.get(k, 0.0) for k in ("fast", "slow", "cpu")},
        "gateway_cpu_utilisation": sim.replicas[0].cpu.utilisation(duration_s),
        "servers": {
            name: {
                "rows_per_batch": d.served_rows / max(1, d.calls),
                "queue_ms": d.waited_s / max(1, d.calls) * 1e3,
            }
            for name, d in sim.devices.items()
            if name != "cpu"
        },
    }


def _num(value: object) -> float:
    """A number from the run's records (typed ``object`` there)."""
    assert isinstance(value, int | float)
    return float(value)


def overheads(
    fleet: FleetMs,
    real: Mapping[str, object],
    triton_ms: float,
    how: str,
) -> dict[str, float]:
    """What each simulated device's call costs beyond its configured time.

    ``learnt``: from the measured run ``real``, the largest of three figures
    for a call of one row, less its configured cost: the gateway's mean call
    time less Triton's mean queue time a request (how long the gateway sees a
    call take once the server starts it: the round trip and the gateway's
    own event-loop delays included — what keeps a backend's in-flight count
    up, which is what the policy's queued time reads); the live estimator's
    median service time (what the policy compared with the time left); and
    Triton's compute time a request (the floor: the estimator takes the wait
    it predicted off each call, so under queueing it can learn less than the
    device spent). A device with none falls back to ``triton_ms``.
    ``triton``: ``triton_ms`` for every device (Triton's compute less the
    configured cost in the calibration run, as before)."""
    learnt_ms: Mapping[str, float] = real.get("learnt_service_ms", {})  # type: ignore[assignment]
    call_ms: Mapping[str, float] = real.get("call_ms", {})  # type: ignore[assignment]
    servers: Mapping[str, Mapping[str, float]] = real.get("servers", {})  # type: ignore[assignment]
    out = {}
    for name, cost in (("fast", fleet.fast), ("slow", fleet.slow), ("cpu", fleet.cpu)):
        server = servers.get(name, {})
        seen = [
            learnt_ms.get(name, 0.0),
            server.get("compute_ms", 0.0),
            call_ms.get(name, 0.0) - server.get("queue_ms", 0.0),
        ]
        if how == "learnt" and max(seen) > 0.0:
            out[name] = max(0.0, max(seen) - cost[0] - cost[1])
        else:
            out[name] = triton_ms
    return out


def within(real: float, sim: float, share: bool = False) -> bool:
    if share and max(real, sim) < 0.10:
        return abs(real - sim) <= 0.02
    return abs(real - sim) <= 0.15 * max(abs(real), abs(sim), 1e-9)


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
        choices=("learnt", "triton"),
        default="learnt",
        help="each device call's overhead: from the live estimator, or Triton's compute",
    )
    parser.add_argument("--out", default="sim_vs_real", help="results file stem")
    args = parser.parse_args()
    start = time.perf_counter()
    # The path's own cost (client, gRPC, gateway, Python backend) at a load
    # that queues nothing: each idle latency less the fast server's learnt
    # service time and the gateway's CPU.
    # The CPU a request costs the gateway, measured at the rate under test
    # (per-request CPU falls with rate as batches amortise the loop's wake-ups).
    fleet = FleetMs()
    if args.fleet_ms is not None:
        f = args.fleet_ms
        fleet = FleetMs((f[0], f[1]), (f[2], f[3]), (f[4], f[5]))
    deadline_s = args.deadline_ms / 1e3
    idle = real_run(args.calibrate_rate, args.calibrate_s, fleet, cpu_probe_rate=args.rate)
    cpu_ms = 0.0 if args.no_cpu_stage else _num(idle["probe_gateway_cpu_ms_per_request"])
    if args.fold_client and not args.no_cpu_stage:
        cpu_ms += _num(idle["probe_client_cpu_ms_per_request"])
    stage = CpuStage(cpu_ms * args.cpu_before / 1e3, cpu_ms * (1 - args.cpu_before) / 1e3)
    # A call's overhead on the device (the Python backend's IPC, the stub's
    # wake-up): Triton's compute time a request in the calibration run (batches
    # of one) less the cost the fast server was configured with; the fallback
    # of ``overheads``, which reads the measured run.
    fast_seen: dict[str, float] = idle["servers"]["fast"]  # type: ignore[index]
    measured_ms = max(0.0, fast_seen["compute_ms"] - fleet.fast[0] - fleet.fast[1])
    triton_ms = measured_ms if args.device_ms is None else args.device_ms
    idle_learnt: dict[str, float] = idle["learnt_service_ms"]  # type: ignore[assignment]
    fast_ms = idle_learnt.get("fast", fleet.fast[0] + fleet.fast[1] + triton_ms)
    if args.overhead == "triton":
        fast_ms = fleet.fast[0] + fleet.fast[1] + triton_ms
    path_ms = [max(0.0, x - fast_ms - cpu_ms) for x in idle["latencies_ms"]]  # type: ignore[attr-defined]
    load_before = os.getloadavg()[0]  # the machine is shared: how busy it was
    real = real_run(args.rate, args.duration, fleet, deadline_s=deadline_s, poisson_seed=args.seed)
    sent_at_s: list[float] = real.pop("sent_at_s")  # type: ignore[assignment]
    device_ms = overheads(fleet, real, triton_ms, args.overhead)
    span_s = args.calibrate_s if args.path_noise == "in-order" else None
    sim = simulated_run(
        sent_at_s, fleet, device_ms, path_ms, stage, deadline_s, args.path_before, span_s
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
        f"idle run, less the fast server's learnt service time {fast_ms:.1f} ms and the "
        f"gateway CPU). Each device call's overhead in the simulator ({args.overhead}): "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in device_ms.items())
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
