"""The suite's two pictures: CPU per request against the floors, and throughput.

``suite_cpu.png``: for every path, the front process's CPU per request stacked
with the Triton's behind it, and the two floors drawn across as dashed lines, so a
gateway bar is read against the floor it must reach.  ``suite_throughput.png``:
requests/s per path at its throughput concurrency, and c=1 p50 latency beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from loadtests.suite.runner import Summary
from loadtests.suite.servers import Route

__all__ = ["plot"]


def _high(medians: Mapping[str, Mapping[int, Summary]], route: Route) -> Summary | None:
    return medians.get(route.key, {}).get(max(route.levels))


def _cpu(
    path: Path, routes: Sequence[Route], medians: Mapping[str, Mapping[int, Summary]], title: str
) -> None:
    shown = [r for r in routes if (s := _high(medians, r)) and s.front_cpu_us is not None]
    labels = [f"{r.label} (c={max(r.levels)})" for r in shown]
    front = [_high(medians, r).front_cpu_us or 0.0 for r in shown]  # type: ignore[union-attr]
    triton = [_high(medians, r).triton_cpu_us or 0.0 for r in shown]  # type: ignore[union-attr]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.8))
    y = range(len(shown))
    colours = ["tab:blue" if r.front == "gateway" else "tab:cyan" for r in shown]
    ax.barh(y, front, color=colours, label="front process (blue: gateway; cyan: references)")
    ax.barh(y, triton, left=front, color="tab:gray", alpha=0.6, label="Triton behind it")
    for floor in (r for r in routes if r.key in ("floor_a", "floor_b")):
        summary = _high(medians, floor)
        if summary and summary.front_cpu_us:
            ax.axvline(
                summary.front_cpu_us,
                color="tab:green" if floor.key == "floor_a" else "tab:orange",
                linestyle="--",
                label=f"{floor.front}: {summary.front_cpu_us:.0f} us",
            )
    ax.set_yticks(list(y), labels)
    ax.invert_yaxis()
    ax.set_xlabel("CPU per request (us, utime+stime of the process tree), median of rounds")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _throughput(
    path: Path, routes: Sequence[Route], medians: Mapping[str, Mapping[int, Summary]], title: str
) -> None:
    shown = [r for r in routes if (s := _high(medians, r)) and s.rps is not None]
    labels = [f"{r.label} (c={max(r.levels)})" for r in shown]
    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=(12, 0.45 * len(shown) + 1.8),
        sharey=True,
        gridspec_kw={"width_ratios": [3, 2]},
    )
    y = list(range(len(shown)))
    rps = [_high(medians, r).rps or 0.0 for r in shown]  # type: ignore[union-attr]
    colours = ["tab:blue" if r.front == "gateway" else "tab:gray" for r in shown]
    left.barh(y, rps, color=colours)
    left.set_yticks(y, labels)
    left.invert_yaxis()
    left.set_xlabel("requests/s (stream: messages/s), median of rounds")
    left.grid(True, axis="x", alpha=0.3)
    p50 = [s.p50_ms if (s := medians.get(r.key, {}).get(1)) else 0.0 for r in shown]
    right.barh(y, [v or 0.0 for v in p50], color=colours)
    right.set_xlabel("c=1 p50 latency (ms)")
    right.grid(True, axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot(
    results: Path,
    routes: Sequence[Route],
    medians: Mapping[str, Mapping[int, Summary]],
    subtitle: str,
) -> list[Path]:
    """Write both PNGs into ``results`` and return their paths."""
    cpu, throughput = results / "suite_cpu.png", results / "suite_throughput.png"
    _cpu(cpu, routes, medians, f"CPU per request, by path ({subtitle})")
    _throughput(throughput, routes, medians, f"Throughput and latency, by path ({subtitle})")
    return [cpu, throughput]
