"""Targets of issue 8 with PASS/FAIL, and the results files: suite.md and suite.json.

Every target compares a gateway figure with the strongest reference measured in the
same run: the bare Python floors for CPU (for streams, the canned floor's own
``ModelStreamInfer``), Triton's own batcher for batched
throughput, direct Triton for added latency, MLServer for CPU-model efficiency.
"Throughput per core" is requests per CPU-second of the serving process tree
(1 / CPU per request), which does not depend on how many cores a run happened to
get.  A target whose figures are missing (a path skipped, or failing) reads
``n/a`` with the reason, never PASS.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loadtests.suite.runner import Cell, Summary
from loadtests.suite.servers import Route

__all__ = ["Target", "evaluate", "machine", "write_json", "write_markdown"]

Medians = Mapping[str, Mapping[int, Summary]]


@dataclass
class Target:
    """One requirement: the gateway's figure, its reference, and the verdict."""

    name: str
    figure: str  # the gateway's figure, in words with its number
    reference: str
    value: float | None  # the compared quantity (a ratio, or ms, or us)
    limit: str  # e.g. "<= 1.1x"
    verdict: str  # PASS, FAIL, n/a (reason), or info


def _get(medians: Medians, route: str, level: int, field: str) -> float | None:
    summary = medians.get(route, {}).get(level)
    value = getattr(summary, field) if summary is not None else None
    return value if isinstance(value, float | int) else None


def _check(
    name: str,
    figure: tuple[str, float | None],
    reference: tuple[str, float | None],
    combine: Callable[[float, float], float],
    limit: str,
    ok: Callable[[float], bool] | None,
    unit: str,
) -> Target:
    (what, mine), (ref_what, theirs) = figure, reference
    shown = f"{what} {mine:.1f} {unit}" if mine is not None else f"{what} n/a"
    ref_shown = f"{ref_what} {theirs:.1f} {unit}" if theirs is not None else f"{ref_what} n/a"
    if mine is None or theirs is None or theirs == 0:
        return Target(name, shown, ref_shown, None, limit, "n/a (not measured)")
    value = combine(mine, theirs)
    verdict = "info" if ok is None else ("PASS" if ok(value) else "FAIL")
    return Target(name, shown, ref_shown, value, limit, verdict)


def evaluate(medians: Medians, *, comparable: bool = True) -> list[Target]:
    """The issue's targets, computed from the medians.

    With ``comparable=False`` (figures from the Python fallback generator) every
    verdict says so: the client's own ceiling decides those figures, not the servers.
    """

    def ratio(a: float, b: float) -> float:
        return a / b

    def cpu(route: str, level: int) -> float | None:
        return _get(medians, route, level, "front_cpu_us")

    def stream_cpu(route: str) -> float | None:  # at the route's one level of streams
        return cpu(route, next(iter(medians.get(route, {})), 0))

    targets = [
        _check(
            "Passthrough: gateway CPU/request vs floor B (c=64)",
            ("gateway", cpu("passthrough", 64)),
            ("floor B", cpu("floor_b", 64)),
            ratio,
            "<= 1.10x",
            lambda r: r <= 1.10,
            "us/req",
        ),
        _check(
            "Passthrough: p50 added over direct Triton (c=1), ms",
            ("gateway", _get(medians, "passthrough", 1, "p50_ms")),
            ("Triton", _get(medians, "triton", 1, "p50_ms")),
            lambda a, b: a - b,
            "<= 0.5 ms",
            lambda d: d <= 0.5,
            "ms",
        ),
        _check(
            "Batching: gateway CPU/request (c=256) vs floor A (c=64)",
            ("gateway", cpu("batching", 256)),
            ("floor A", cpu("floor_a", 64)),
            ratio,
            "<= 1.20x",
            lambda r: r <= 1.20,
            "us/req",
        ),
        _check(
            "Batching: throughput vs Triton's own batcher (c=256)",
            ("gateway", _get(medians, "batching", 256, "rps")),
            ("Triton batcher", _get(medians, "triton_batcher", 256, "rps")),
            ratio,
            ">= 0.60x",
            lambda r: r >= 0.60,
            "req/s",
        ),
        _check(
            "CPU model: requests per CPU-second vs MLServer (c=64)",
            ("gateway CPU", cpu("cpu", 64)),
            ("MLServer CPU", cpu("mlserver", 64)),
            lambda mine, theirs: theirs / mine,
            ">= 2.00x",
            lambda r: r >= 2.0,
            "us/req",
        ),
        _check(
            "Streams: gateway CPU per message, us",
            ("gateway", stream_cpu("stream")),
            ("limit", 150.0),
            lambda mine, _: mine,
            "<= 150 us",
            lambda us: us <= 150,
            "us/msg",
        ),
        _check(
            "Streams: gateway CPU per message vs the stream floor",
            ("gateway", stream_cpu("stream")),
            ("stream floor", stream_cpu("stream_floor")),
            ratio,
            "(what is reachable)",
            None,
            "us/msg",
        ),
        _check(
            "Workers: throughput, --workers 2 vs --workers 1 (c=64)",
            ("2 workers", _get(medians, "workers2", 64, "rps")),
            ("1 worker", _get(medians, "workers1", 64, "rps")),
            ratio,
            "> 1.00x",
            lambda r: r > 1.0,
            "req/s",
        ),
    ]
    if not comparable:
        for target in targets:
            target.verdict += " (Python generator: not comparable)"
    return targets


def machine() -> dict[str, Any]:
    """What ran the suite: CPU model, cores, load before the run, Python."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "arch": platform.machine(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_json(
    path: Path,
    context: dict[str, Any],
    routes: Sequence[Route],
    cells: Sequence[Cell],
    medians: Medians,
    targets: Sequence[Target],
) -> None:
    document = {
        **context,
        "routes": {
            r.key: {
                "label": r.label,
                "front": r.front,
                "model": r.payload.model,
                "levels": list(r.levels),
                "stream_messages": r.stream_messages,
                "behind_triton": r.triton_pid is not None,
            }
            for r in routes
        },
        "medians": {
            key: {str(level): asdict(s) for level, s in by_level.items()}
            for key, by_level in medians.items()
        },
        "targets": [asdict(t) for t in targets],
        "cells": [asdict(c) for c in cells],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _rounds(count: int) -> str:
    return f"{count} round" if count == 1 else f"{count} rounds"


def _n(value: float | None, fmt: str = ".0f") -> str:
    return "—" if value is None else format(value, fmt)


def write_markdown(
    path: Path,
    context: dict[str, Any],
    routes: Sequence[Route],
    medians: Medians,
    targets: Sequence[Target],
) -> None:
    m = context["machine"]
    lines = [
        "# Benchmark suite: the gateway beside its references",
        "",
        f"Command: `{context['command']}` · {context['date']} · {m['cpu']}, {m['cores']} cores "
        f"({m['arch']}, Linux {m['kernel']}, Python {m['python']}), load average at start "
        f"{m['loadavg_start']} · load generator: **{context['load_generator']}** "
        f"({context['load_generator_version']}) · {_rounds(context['plan']['rounds'])} "
        f"alternating between paths (the run took {context['elapsed_min']:.1f} min), "
        f"{context['plan']['requests_c1']} requests per run at c=1 and "
        f"{context['plan']['requests']} at c>1; every figure is the median over the rounds.",
        "",
    ]
    if not context["comparable"]:
        lines += [f"> **{context['warning']}**", ""]
    lines += [
        "## Targets (issue 8)",
        "",
        "| target | gateway | reference | value | target | verdict |",
        "|---|---|---|---|---|---|",
        *(
            f"| {t.name} | {t.figure} | {t.reference} | {_n(t.value, '.2f')} | {t.limit} "
            f"| **{t.verdict}** |"
            for t in targets
        ),
        "",
        "## Every path",
        "",
        "CPU per request is utime+stime from /proc over the process tree (workers and "
        "backend stubs included), read before and after a run of a fixed number of requests "
        "at the throughput concurrency; *front* is the process the path goes through "
        "(gateway, floor, MLServer, or Triton itself when called directly).",
        "",
        "| path | c=1 p50 ms | c=1 p99 ms | conc. | req/s | front | front CPU us/req "
        "| Triton CPU us/req | ghz CPU us/req |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for route in routes:
        by_level = medians.get(route.key, {})
        low = by_level.get(1)
        high_level = max(route.levels)
        high = by_level.get(high_level)
        lines.append(
            f"| {route.label} | {_n(low.p50_ms if low else None, '.3f')} "
            f"| {_n(low.p99_ms if low else None, '.3f')} | {high_level} "
            f"| {_n(high.rps if high else None)} | {route.front} "
            f"| {_n(high.front_cpu_us if high else None)} "
            f"| {_n(high.triton_cpu_us if high else None)} "
            f"| {_n(high.client_cpu_us if high else None)} |"
        )
    lines += ["", "## Notes", ""]
    lines += [f"- {note}" for note in context["notes"]]
    lines += [
        f"- Idle CPU with no load, ms per s: {context['idle_ms_per_s']}",
        f"- Load average at the end: {context['loadavg_end']}. Load generator, Triton and "
        "every server share this machine's cores, with whatever else runs on it (the "
        "development VM is shared with other engineers' tests and benchmarks): a busy "
        "machine lowers every figure; "
        "compare figures within one run, not across runs.",
        "- Per-round figures are in `suite.json` (`cells`).",
        "",
        "![CPU per request](suite_cpu.png)",
        "",
        "![Throughput](suite_throughput.png)",
        "",
    ]
    path.write_text("\n".join(lines))
