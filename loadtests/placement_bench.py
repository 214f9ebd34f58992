"""Microbenchmark: one placement decision over N backends (target: < 20 µs at 64).

    python -m loadtests.placement_bench [--backends 64] [--repeats 7]

Times ``scheduler.placement.place`` on prebuilt candidate arrays (what the
policy itself costs) with timeit, and reports the median over repeats of the
per-call time. Writes loadtests/results/placement.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import timeit
from pathlib import Path

import numpy as np

from scheduler.placement import Candidates, Tier, place

RESULTS = Path(__file__).parent / "results"


def make_candidates(n: int, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    tier = np.full(n, Tier.ACCELERATOR, np.int8)
    tier[-max(1, n // 8) :] = Tier.CPU
    return Candidates(
        backend_ids=tuple(f"triton-{i}" for i in range(n)),
        tier=tier,
        available=rng.random(n) > 0.05,
        memory_ok=rng.random(n) > 0.1,
        load_ok=rng.random(n) > 0.1,
        queued_s=rng.exponential(0.01, n),
        service_s=np.where(tier == Tier.CPU, 0.05, rng.uniform(0.002, 0.01, n)),
        telemetry_age_s=rng.uniform(0, 2, n),
    )


def measure(backends: int, repeats: int, number: int = 20000) -> list[float]:
    candidates = make_candidates(backends)
    deadline = 0.03

    def decide() -> None:
        place(candidates, now=0.0, deadline=deadline)

    decide()
    times = timeit.repeat(decide, number=number, repeat=repeats)
    return [t / number * 1e6 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for n in args.backends:
        per_call = measure(n, args.repeats)
        rows.append((n, statistics.median(per_call), min(per_call), max(per_call)))
    lines = [
        "# Placement decision time",
        "",
        "`python -m loadtests.placement_bench`: `scheduler.placement.place` on prebuilt "
        f"candidate arrays, median of {args.repeats} timeit repeats. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}, numpy {np.__version__}.",
        "",
        "| backends | median µs | min µs | max µs |",
        "|---|---|---|---|",
        *(f"| {n} | {med:.2f} | {lo:.2f} | {hi:.2f} |" for n, med, lo, hi in rows),
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "placement.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
