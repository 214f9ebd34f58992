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
15% (shares: 15% of the larger, or 2 points for shares under 10%).

    .venv/bin/python -m loadtests.sim_vs_real [--rate 60] [--duration 20] [--deadline-ms 125]

The default fleet is slow enough (tens of ms a batch) that the devices'
queueing and batching, not the shared machine's CPU noise, decide latency,
and the deadline makes the policy spread work: the fast server takes most,
the slow one what would wait too long on the fast one, and the CPU tier what
no accelerator can finish in time (spillover). Writes
``loadtests/results/sim_vs_real.md`` and ``.json``. Not a CI test: it
measures timing on a shared machine.

The gateway's own CPU is modelled as the simulator's ``CpuStage``: during
the calibration run the gateway process's utime + stime (``/proc/PID/stat``)
is read around the load, less what it burns idle over the same time (read
over a quiet window first), and divided by the requests served — CPU seconds
per proxied request. ``--cpu-before`` of it is spent ahead of the batch
queue, the rest ahead of the reply. The load generator's own CPU (this
process's ``time.process_time``) is measured too; ``--fold-client`` adds it
to the stage (one more serial process on the same cores), else it is only
reported. What the stage accounts for is taken off the path noise drawn
from the idle run, so it is not counted twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families

from loadtests.loadgen import fp32_inputs, run_load
from scheduler.placement import Tier
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import DeviceSpec, DeviceType
from scheduler.sim.engine import Scenario, SimModel, Simulation
from scheduler.sim.report import measure
from scheduler.sim.workload import Arrival
from tests.support.gateway import start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton


@dataclass(frozen=True)
class FleetMs:
    """Each device's cost per batch, ``fixed + per_row * rows`` ms; the CPU pool's threads."""

    fast: tuple[float, float] = (40.0, 1.0)
    slow: tuple[float, float] = (80.0, 2.0)
    cpu: tuple[float, float] = (50.0, 4.0)
    cpu_workers: int = 2

    def describe(self) -> str:
        return (
            f"tritonserver fast ({self.fast[0]:g} ms + {self.fast[1]:g} ms/row), tritonserver "
            f"slow ({self.slow[0]:g} ms + {self.slow[1]:g} ms/row), gateway CPU pool "
            f"({self.cpu[0]:g} ms + {self.cpu[1]:g} ms/row, {self.cpu_workers} threads)"
        )


RESULTS = Path(__file__).parent / "results"


def _env(fixed_ms: float, row_ms: float, prefix: str) -> dict[str, str]:
    return {f"{prefix}_FIXED_MS": str(fixed_ms), f"{prefix}_PER_ITEM_MS": str(row_ms)}


def _stats(url: str) -> tuple[int, int, float, float]:
    """The server's counts so far: rows, executions, queue and compute seconds
    summed over its requests (each request of a batch counts the batch's)."""
    model = grpcclient.InferenceServerClient(url).get_inference_statistics("gpu_sim")
    m = model.model_stats[0]
    s = m.inference_stats
    compute = s.compute_input.ns + s.compute_infer.ns + s.compute_output.ns
    return int(m.inference_count), int(m.execution_count), s.queue.ns / 1e9, compute / 1e9


def _server_view(url: str, before: tuple[int, int, float, float]) -> dict[str, float]:
    """What a server saw since ``before``: rows a batch, queue and compute ms a request."""
    rows, runs, queue_s, compute_s = (a - b for a, b in zip(_stats(url), before, strict=True))
    return {
        "rows_per_batch": rows / max(1, runs),
        "queue_ms": queue_s / max(1, rows) * 1e3,
        "compute_ms": compute_s / max(1, rows) * 1e3,
    }


def _cpu_s(pid: int) -> float:
    """A process's utime + stime so far, seconds (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_probe(address: str, pid: int, rate: float, idle_cpu_per_s: float) -> tuple[float, float]:
    """Gateway and load-generator CPU ms per request over a 3 s load at ``rate``."""
    inputs = fp32_inputs("INPUT", (1, 8))
    began, gw0, me0 = time.perf_counter(), _cpu_s(pid), time.process_time()
    result = asyncio.run(
        run_load(address, "gpu_sim", inputs, concurrency=256, duration_s=3.0, rate=rate)
    )
    took = time.perf_counter() - began
    count = max(1, result.count)
    gateway = max(0.0, _cpu_s(pid) - gw0 - idle_cpu_per_s * took)
    return gateway / count * 1e3, (time.process_time() - me0) / count * 1e3


def _served_by_backend(metrics_url: str, model: str) -> dict[str, float]:
    """Requests the gateway answered OK so far, by backend (``gateway_requests_total``)."""
    with urllib.request.urlopen(metrics_url, timeout=5) as reply:
        text = reply.read().decode()
    served: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "gateway_requests_total"
                and labels.get("model") == model
                and labels.get("code") == "OK"
            ):
                backend = labels.get("backend", "")
                served[backend] = served.get(backend, 0.0) + sample.value
    return served


def real_run(
    rate: float,
    duration_s: float,
    fleet: FleetMs,
    *,
    deadline_s: float = 10.0,
    poisson_seed: int | None = None,
    cpu_probe_rate: float = 0.0,
) -> dict[str, object]:
    """Gateway and servers up, a warm-up, then ``rate`` req/s for ``duration_s``
    (Poisson with ``poisson_seed``, each call with ``deadline_s``); with
    ``cpu_probe_rate``, then a 3 s load at that rate to measure CPU per request."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            start_triton(MODEL_REPOSITORY, work / "fast", env=_env(*fleet.fast, "GPU_SIM")) as fast,
            start_triton(MODEL_REPOSITORY, work / "slow", env=_env(*fleet.slow, "GPU_SIM")) as slow,
        ):
            metrics = {t.grpc_url: t.metrics_url for t in (fast, slow)}
            port_file = work / "metrics.port"
            with start_gateway(
                work / "gw",
                args=[
                    *("--triton", fast.grpc_url, "--triton", slow.grpc_url),
                    *("--cpu-model", "tests.support.cpu_sim:gpu_sim"),
                ],
                env={
                    **_env(*fleet.cpu, "CPU_SIM"),
                    "GATEWAY_CPU_WORKERS": str(fleet.cpu_workers),
                    "GATEWAY_TRITON_METRICS_URLS": json.dumps(metrics),
                    "GATEWAY_METRICS_PORT": "0",
                    "GATEWAY_METRICS_PORT_FILE": str(port_file),
                },
            ) as gateway:
                while not port_file.exists() or not port_file.read_text().strip():
                    time.sleep(0.05)  # written as the metrics server starts
                metrics_url = f"http://127.0.0.1:{int(port_file.read_text())}/metrics"
                names = {f"triton@{fast.grpc_url}": "fast", f"triton@{slow.grpc_url}": "slow"}
                inputs = fp32_inputs("INPUT", (1, 8))
                quiet_from, quiet_cpu = time.perf_counter(), _cpu_s(gateway.pid)
                time.sleep(2.0)  # what the gateway burns with no requests (telemetry, timers)
                idle_cpu_per_s = (_cpu_s(gateway.pid) - quiet_cpu) / (
                    time.perf_counter() - quiet_from
                )
                # Warm-up: the gateway learns service times, as the simulator's seeds say.
                asyncio.run(
                    run_load(gateway.address, "gpu_sim", inputs, concurrency=4, duration_s=2)
                )
                before = _served_by_backend(metrics_url, "gpu_sim")
                counts = {"fast": _stats(fast.grpc_url), "slow": _stats(slow.grpc_url)}
                began, gw0, me0 = time.perf_counter(), _cpu_s(gateway.pid), time.process_time()
                result = asyncio.run(
                    run_load(
                        gateway.address,
                        "gpu_sim",
                        inputs,
                        concurrency=256,
                        duration_s=duration_s,
                        rate=rate,
                        timeout_s=deadline_s,
                        poisson_seed=poisson_seed,
                    )
                )
                took = time.perf_counter() - began
                gateway_cpu = _cpu_s(gateway.pid) - gw0 - idle_cpu_per_s * took
                client_cpu = time.process_time() - me0
                after = _served_by_backend(metrics_url, "gpu_sim")
                served = {"fast": 0.0, "slow": 0.0, "cpu": 0.0}
                for backend, value in after.items():
                    name = names.get(backend, "cpu")  # the gateway's CPU pool otherwise
                    served[name] += value - before.get(backend, 0.0)
                servers = {
                    "fast": _server_view(fast.grpc_url, counts["fast"]),
                    "slow": _server_view(slow.grpc_url, counts["slow"]),
                }
                probe = (math.nan, math.nan)
                if cpu_probe_rate > 0:
                    probe = _cpu_probe(gateway.address, gateway.pid, cpu_probe_rate, idle_cpu_per_s)
    total = max(1.0, sum(served.values()))
    return {
        "requests": result.count,
        "ok": result.ok,
        "statuses": dict(result.statuses),
        "p50_ms": result.percentile_ms(50),
        "p99_ms": result.percentile_ms(99),
        "share": {k: v / total for k, v in served.items()},
        "gateway_cpu_ms_per_request": max(0.0, gateway_cpu) / max(1, result.count) * 1e3,
        "client_cpu_ms_per_request": client_cpu / max(1, result.count) * 1e3,
        "gateway_idle_cpu_per_s": idle_cpu_per_s,
        "servers": servers,
        "probe_rate": cpu_probe_rate,
        "probe_gateway_cpu_ms_per_request": probe[0],
        "probe_client_cpu_ms_per_request": probe[1],
        "latencies_ms": [x * 1e3 for x in result.latencies_s],
        "sent_at_s": result.sent_at_s,
    }


def simulated_run(
    sent_at_s: list[float],
    fleet: FleetMs,
    device_ms: float,
    path_ms: list[float],
    cpu: CpuStage | None = None,
    deadline_s: float = 10.0,
    path_before: float = 0.5,
) -> dict[str, object]:
    """The same fleet in the simulator, fed the real run's arrivals
    (``sent_at_s``) with the same deadline. ``device_ms`` (the Python
    backend's IPC, the thread hand-off) is added to each device's fixed cost,
    where it occupies the device; each request also gets a draw from
    ``path_ms``, what the path (client, gRPC, the gateway, a shared machine's
    scheduling noise) added to requests that queued nowhere. ``path_before``
    of that draw delays the request's arrival at the batch queue while its
    deadline stays anchored at the send time (the client's deadline runs
    from the send: time lost on the way in is time the policy no longer has,
    which decides spills to the CPU tier), and the rest of a second, separate
    draw is added to its reply."""
    extra = device_ms / 1e3

    def kind(name: str, cost: tuple[float, float], tier: Tier) -> DeviceType:
        return DeviceType(name, cost[0] / 1e3 + extra, cost[1] / 1e3, tier=tier)

    devices = [
        DeviceSpec("fast", kind("fast", fleet.fast, Tier.ACCELERATOR)),
        DeviceSpec("slow", kind("slow", fleet.slow, Tier.ACCELERATOR)),
        DeviceSpec("cpu", kind("cpu", fleet.cpu, Tier.CPU), instances=fleet.cpu_workers),
    ]
    rng = np.random.default_rng(0)
    path_s = rng.choice(np.array(path_ms), size=len(sent_at_s)) / 1e3
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
    latency_ms = np.array(
        [(r.finished_at - (r.deadline - deadline_s)) * 1e3 for r in requests if r.outcome == "ok"]
    )
    after_s = rng.choice(np.array(path_ms), size=latency_ms.size) / 1e3 * (1 - path_before)
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


def within(real: float, sim: float, share: bool = False) -> bool:
    if share and max(real, sim) < 0.10:
        return abs(real - sim) <= 0.02
    return abs(real - sim) <= 0.15 * max(abs(real), abs(sim), 1e-9)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=60.0, help="requests per second (Poisson)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load")
    parser.add_argument(
        "--deadline-ms", type=float, default=125.0, help="each request's deadline (client timeout)"
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
        help="per-call device overhead (default: measured in the calibration run)",
    )
    parser.add_argument(
        "--calibrate-rate", type=float, default=20.0, help="req/s of the run that measures the path"
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
    parser.add_argument("--out", default="sim_vs_real", help="results file stem")
    args = parser.parse_args()
    start = time.perf_counter()
    # The path's own cost (client, gRPC, gateway, Python backend) at a load
    # that queues nothing: the idle p50 less the fast device's service time.
    # The CPU a request costs the gateway, measured at the rate under test
    # (per-request CPU falls with rate as batches amortise the loop's wake-ups).
    fleet = FleetMs()
    if args.fleet_ms is not None:
        f = args.fleet_ms
        fleet = FleetMs((f[0], f[1]), (f[2], f[3]), (f[4], f[5]))
    deadline_s = args.deadline_ms / 1e3
    idle = real_run(args.calibrate_rate, 5.0, fleet, cpu_probe_rate=args.rate)
    cpu_ms = 0.0 if args.no_cpu_stage else _num(idle["probe_gateway_cpu_ms_per_request"])
    if args.fold_client and not args.no_cpu_stage:
        cpu_ms += _num(idle["probe_client_cpu_ms_per_request"])
    stage = CpuStage(cpu_ms * args.cpu_before / 1e3, cpu_ms * (1 - args.cpu_before) / 1e3)
    # A call's overhead on the device (the Python backend's IPC, the stub's
    # wake-up): Triton's compute time a request in the calibration run (batches
    # of one) less the cost the fast server was configured with.
    fast_seen: dict[str, float] = idle["servers"]["fast"]  # type: ignore[index]
    device_ms = args.device_ms
    if device_ms is None:
        device_ms = max(0.0, fast_seen["compute_ms"] - fleet.fast[0] - fleet.fast[1])
    service_ms = fleet.fast[0] + fleet.fast[1] + device_ms + cpu_ms
    path_ms = [max(0.0, x - service_ms) for x in idle["latencies_ms"]]  # type: ignore[attr-defined]
    real = real_run(args.rate, args.duration, fleet, deadline_s=deadline_s, poisson_seed=args.seed)
    sent_at_s: list[float] = real.pop("sent_at_s")  # type: ignore[assignment]
    sim = simulated_run(sent_at_s, fleet, device_ms, path_ms, stage, deadline_s, args.path_before)
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
        f"{len(sent_at_s)} send times. Calibrated at {args.calibrate_rate:.0f} req/s: "
        f"idle p50 {_num(idle['p50_ms']):.1f} ms (p99 {_num(idle['p99_ms']):.1f} ms), so the "
        f"path adds {float(np.median(path_ms)):.1f} ms (median; drawn per request from the "
        f"idle run) and each device call {device_ms:.1f} ms"
        + (
            " (measured there: Triton's compute less the configured cost)."
            if args.device_ms is None
            else "."
        ),
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
        "| measure | real | simulated | within 15% |",
        "|---|---:|---:|---|",
    ]
    ok = True
    for name, r, s, share in rows:
        good = within(float(r), float(s), share)  # type: ignore[arg-type]
        ok = ok and good
        fmt = "{:.1%}" if share else "{:.1f}"
        lines.append(f"| {name} | {fmt.format(r)} | {fmt.format(s)} | {'yes' if good else 'NO'} |")
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
