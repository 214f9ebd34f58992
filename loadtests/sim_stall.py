"""What the estimator's stale sweep gives back after a stall, in the simulator.

``--scenario stall`` (``scheduler.sim.scenarios``): 16 GPUs of the base mix,
the first fast one (gpu0000) eight times slower from 2 s to 6 s, 30 s of
traffic, the project's policy. Run with the sweep (every
``stale_estimate_s``, 10 s, as the live dispatcher runs it) and without, and
for each window of arrival time: gpu0000's share of the answers next to
another fast GPU's (gpu0002), and p99.

    .venv/bin/python -m loadtests.sim_stall

Writes ``loadtests/results/sim_stall.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scheduler.sim.engine import Simulation
from scheduler.sim.scenarios import SCENARIOS, STALL_FACTOR, STALL_S

RESULTS = Path(__file__).parent / "results"
WINDOWS = ((0.0, 2.0), (2.0, 6.0), (6.0, 10.0), (10.0, 20.0), (20.0, 30.0))


def windows(sweep: bool) -> list[tuple[float, float, float, float, float]]:
    """Per window: start, end, gpu0000's share, gpu0002's share, p99 ms."""
    requests = Simulation(SCENARIOS["stall"](stale_sweep=sweep), "predicted_finish_time").run()
    rows = []
    for start, end in WINDOWS:
        done = [r for r in requests if start <= r.arrived_at < end and r.outcome == "ok"]
        latency = np.array([r.finished_at - r.arrived_at for r in done])
        rows.append(
            (
                start,
                end,
                sum(r.backend == "gpu0000" for r in done) / len(done),
                sum(r.backend == "gpu0002" for r in done) / len(done),
                float(np.percentile(latency, 99)) * 1e3,
            )
        )
    return rows


def main() -> int:
    load = os.getloadavg()[0]
    lines = [
        "# A GPU stalls and recovers: the estimator's stale sweep in the simulator",
        "",
        "    .venv/bin/python -m loadtests.sim_stall",
        "",
        f"`--scenario stall`: 16 GPUs of the base mix, gpu0000 (fast) {STALL_FACTOR:g} times "
        f"slower from {STALL_S[0]:g} s to {STALL_S[1]:g} s, 30 s of traffic, "
        "`predicted_finish_time`. The sweep (`relax_stale`, every `stale_estimate_s` = 10 s "
        "of virtual time, as the live dispatcher runs it) moves an estimate no call refreshed "
        "halfway toward the best one of its model and bucket. Shares are of the answered "
        "requests that arrived in the window; gpu0002 is another fast GPU, for scale. "
        f"Deterministic (seed 0); load average when run: {load:.1f}.",
        "",
        "| window (s) | sweep: gpu0000 | sweep: gpu0002 | sweep: p99 ms "
        "| no sweep: gpu0000 | no sweep: gpu0002 | no sweep: p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for on, off in zip(windows(True), windows(False), strict=True):
        lines.append(
            f"| {on[0]:g}-{on[1]:g} | {on[2]:.1%} | {on[3]:.1%} | {on[4]:.1f} "
            f"| {off[2]:.1%} | {off[3]:.1%} | {off[4]:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sim_stall.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
