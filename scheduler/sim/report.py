"""What a simulated run measured, as numbers, a markdown table and plots.

- SLO attainment: requests answered within their SLO, over all offered;
- goodput: those requests per second of the run;
- p50 / p99: latency of the requests answered (refused and failed ones end
  early and would flatter the percentiles);
- utilization: busy time over capacity, mean over the GPUs and over the CPU
  workers;
- spill rate: answered requests that ran on the CPU tier;
- lost: requests refused, expired in a queue, shed, or failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import compress
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from scheduler.placement import Tier
from scheduler.sim.engine import Simulation, busy_fraction
from scheduler.sim.replica import SimRequest


@dataclass(frozen=True, slots=True)
class Result:
    scenario: str
    router: str
    requests: int
    slo_attainment: float
    goodput_per_s: float
    p50_ms: float
    p99_ms: float
    gpu_utilization: float
    cpu_utilization: float
    spill_rate: float
    lost: float
    wall_s: float
    share: dict[str, float] = field(default_factory=dict)  # answered requests by backend
    scale: float = 1.0


def measure(
    sim: Simulation, requests: Sequence[SimRequest], wall_s: float, scale: float = 1.0
) -> Result:
    duration = sim.scenario.duration_s
    n = len(requests)
    # Columns read through attrgetter, not a Python loop body per request
    # (a million of them at scale).
    ok = _column(requests, "outcome", object) == "ok"
    latency = _column(requests, "finished_at", np.float64) - _column(
        requests, "arrived_at", np.float64
    )
    slo = _column(requests, "slo_s", np.float64)
    met = ok & (latency <= slo)
    answered = latency[ok]
    cpu = (_column(requests, "tier", np.int64) == int(Tier.CPU)) & ok
    util = busy_fraction(sim, max(duration, float(sim.clock.now())))
    gpus = [util[i] for i, d in sim.devices.items() if d.spec.type.tier is Tier.ACCELERATOR]
    cpus = [util[i] for i, d in sim.devices.items() if d.spec.type.tier is Tier.CPU]
    served = Counter(compress(map(attrgetter("backend"), requests), ok.tolist()))
    total_ok = max(1, int(ok.sum()))
    return Result(
        scenario=sim.scenario.name,
        router=sim.router,
        requests=n,
        slo_attainment=float(met.mean()) if n else 0.0,
        goodput_per_s=float(met.sum()) / duration,
        p50_ms=float(np.percentile(answered, 50)) * 1e3 if answered.size else float("nan"),
        p99_ms=float(np.percentile(answered, 99)) * 1e3 if answered.size else float("nan"),
        gpu_utilization=float(np.mean(gpus)) if gpus else 0.0,
        cpu_utilization=float(np.mean(cpus)) if cpus else 0.0,
        spill_rate=float(cpu.sum()) / total_ok,
        lost=float((~ok).mean()) if n else 0.0,
        wall_s=wall_s,
        share={k: v / total_ok for k, v in sorted(served.items())},
        scale=scale,
    )


def _column(requests: Sequence[SimRequest], name: str, dtype: type) -> npt.NDArray[Any]:
    """One field of every request, as an array."""
    if dtype is object:
        return np.array(list(map(attrgetter(name), requests)), object)
    return np.fromiter(map(attrgetter(name), requests), dtype, len(requests))


def table(results: Sequence[Result]) -> str:
    """A markdown table, one row per run."""
    lines = [
        "| scenario | load | policy | requests | SLO met | goodput/s | p50 ms | p99 ms "
        "| GPU util | CPU util | spilled | lost | wall s |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.scenario} | {r.scale:.2f} | {r.router} | {r.requests} "
            f"| {r.slo_attainment:.1%} | {r.goodput_per_s:.0f} | {r.p50_ms:.1f} "
            f"| {r.p99_ms:.1f} | {r.gpu_utilization:.0%} | {r.cpu_utilization:.0%} "
            f"| {r.spill_rate:.1%} | {r.lost:.1%} | {r.wall_s:.1f} |"
        )
    return "\n".join(lines)


def plot_sweep(results: Sequence[Result], path: Path, title: str) -> None:
    """SLO attainment and p99 against offered load, one line per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    routers = sorted({r.router for r in results})
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for router in routers:
        mine = sorted((r for r in results if r.router == router), key=lambda r: r.scale)
        xs = [r.scale for r in mine]
        left.plot(xs, [r.slo_attainment * 100 for r in mine], marker="o", label=router)
        right.plot(xs, [r.p99_ms for r in mine], marker="o", label=router)
    left.set(xlabel="offered load (x base)", ylabel="SLO attainment %", title=title)
    right.set(xlabel="offered load (x base)", ylabel="p99 latency ms", yscale="log")
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
