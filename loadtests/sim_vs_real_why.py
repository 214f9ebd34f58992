"""Why the simulator and the real runs differ: the runs of a
``sim_vs_real_dist`` results file, simulated again under two models, with
what the simulations did counted.

    .venv/bin/python -m loadtests.sim_vs_real_why [loadtests/results/sim_vs_real_dist.json]

Per run and model (``reply``: each device held for its compute, the rest of
a call its reply, as ``sim_vs_real_dist`` simulates now; ``held``: that rest
held on the device, as it simulated before): the requests refused at the
door, the CPU tier's share, p99, the fast server's call as the gateway times
it and its queue, next to the real run's; the call starts that put a call on
a device already running as many as it has instances (``overlaps``: 0
since ``Simulation._finish`` starts the call queued on the device before it
tells the replica; before that, a call the replica sent in that step started
beside the queued one, which is how this tool found it); and the median of the batch queue's average
batch time when each call was sent (what admission compares with half the
time left). Reads the file only: no real run, a few seconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.sim_vs_real_live import FleetMs
from loadtests.sim_vs_real_model import overheads, replies, simulated_run
from scheduler.sim.cpu import CpuStage
from scheduler.sim.devices import Call, SimDevice
from scheduler.sim.engine import Scenario, Simulation
from scheduler.sim.replica import Replica


class CountingSimulation(Simulation):
    """A simulation that counts call starts past a device's instances and
    reads the batch queue's average batch time at each send."""

    def __init__(self, scenario: Scenario, router: str) -> None:
        super().__init__(scenario, router)
        self.overlaps = 0
        self.batch_ms: list[float] = []

    def send(self, device_id: str, call: Call, replica: Replica) -> None:
        average = replica.queues[call.model].service_estimate_s
        if average is not None:
            self.batch_ms.append(average * 1e3)
        super().send(device_id, call, replica)

    def _start(self, device: SimDevice, call: Call, replica: Replica, now: float) -> None:
        super()._start(device, call, replica, now)
        if device.running[call.model] > device.spec.instances:
            self.overlaps += 1


def _keeping(made: list[CountingSimulation]) -> Callable[[Scenario, str], Simulation]:
    """A maker of counting simulations that keeps each one it makes in ``made``."""

    def make(scenario: Scenario, router: str) -> Simulation:
        made.append(CountingSimulation(scenario, router))
        return made[-1]

    return make


def diagnose(raw: dict[str, Any]) -> list[dict[str, object]]:
    """Each run of a ``sim_vs_real_dist`` file, real and under both models."""
    calibration = raw["calibration"]
    half = calibration["probe_gateway_cpu_ms_per_request"] / 2e3
    fleet, rows = FleetMs(), []
    for run in raw["runs"]:
        real = run["real"]
        row: dict[str, object] = {
            "seed": run["seed"],
            "real": {
                "refused": real["statuses"].get("RESOURCE_EXHAUSTED", 0),
                "cpu": real["share"]["cpu"],
                "p99_ms": real["p99_ms"],
                "call_ms": real["call_ms"]["fast"],
                "queue_ms": real["servers"]["fast"]["queue_ms"],
            },
        }
        for name, how in (("reply", "split"), ("held", "measured")):
            made: list[CountingSimulation] = []
            sim: dict[str, Any] = simulated_run(
                real["sent_at_s"],
                fleet,
                overheads(fleet, real, 0.0, how),
                calibration["path_ms"],
                CpuStage(half, half),
                0.16,
                0.5,
                10.0,
                sweep_phase_s=real["gateway_up_s"],
                estimates=real["learnt_at_start_ms"],
                reply_ms=replies(fleet, real) if how == "split" else None,
                simulation=_keeping(made),
            )
            row[name] = {
                "refused": sim["outcomes"].get("shed", 0),
                "cpu": sim["share"]["cpu"],
                "p99_ms": sim["p99_ms"],
                "call_ms": sim["call_ms"]["fast"],
                "queue_ms": sim["servers"]["fast"]["queue_ms"],
                "overlaps": made[0].overlaps,
                "batch_ms": statistics.median(made[0].batch_ms),
            }
        rows.append(row)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "results", nargs="?", default=str(Path(__file__).parent / "results/sim_vs_real_dist.json")
    )
    args = parser.parse_args()
    rows = diagnose(json.loads(Path(args.results).read_text()))
    print(
        "| seed | model | refused | CPU share | p99 ms | fast call ms | fast queue ms "
        "| overlaps | batch time ms (median) |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        for model in ("real", "reply", "held"):
            v: dict[str, Any] = row[model]  # type: ignore[assignment]
            extra = f"{v['overlaps']} | {v['batch_ms']:.1f}" if "overlaps" in v else " | "
            print(
                f"| {row['seed']} | {model} | {v['refused']} | {v['cpu']:.1%} | "
                f"{v['p99_ms']:.1f} | {v['call_ms']:.1f} | {v['queue_ms']:.1f} | {extra} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
