"""Rounds of load over every route, CPU per request from /proc, medians of the rounds.

A round sends every route its load once, at each of its concurrency levels; the
route order rotates by one each round, so that no path always runs first (on a
fresh machine) or last (on a warm, maybe throttled one), and slow drifts of the
machine touch every path alike.  The figure for a path is the median over rounds.

CPU per request is read around each run of a fixed number of requests: the CPU
time of the front process's tree and of the Triton's tree before and after (see
``procs.tree_cpu_s``), divided by the requests (stream messages) that succeeded.
It includes what the process does in the background meanwhile (health probes,
telemetry polls): that is part of what a server costs, and ``idle`` records it
separately, in ms of CPU per second with no load, for each process.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from loadtests.suite.load import LoadError, LoadRunner, Shot
from loadtests.suite.procs import tree_cpu_s
from loadtests.suite.servers import Route

__all__ = ["Cell", "Plan", "Summary", "idle_cpu", "run_rounds", "summarise"]


@dataclass(frozen=True)
class Plan:
    """How much load: rounds, requests per run by concurrency, and bounds."""

    rounds: int
    requests_c1: int  # runs at concurrency 1 (latency)
    requests: int  # runs at higher concurrency (throughput, CPU)
    warmup: int
    max_s: float  # no single run lasts longer


@dataclass
class Cell:
    """One route at one concurrency in one round."""

    route: str
    concurrency: int
    round: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    front_cpu_us: float | None = None  # per successful request (message)
    triton_cpu_us: float | None = None
    client_cpu_us: float | None = None
    requests: int = 0
    failed: int = 0
    error: str | None = None


@dataclass
class Summary:
    """Medians over rounds for one route at one concurrency."""

    route: str
    concurrency: int
    rounds: int
    rps: float | None
    p50_ms: float | None
    p99_ms: float | None
    front_cpu_us: float | None
    triton_cpu_us: float | None
    client_cpu_us: float | None
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def _total(route: Route, concurrency: int, plan: Plan) -> int:
    """Calls to send: streams carry ``stream_messages`` requests each."""
    requests = plan.requests_c1 if concurrency == 1 else plan.requests
    if route.stream_messages:
        return max(concurrency, requests // route.stream_messages)
    return requests


def _per_request_us(cpu_s: float, requests: int) -> float | None:
    return cpu_s / requests * 1e6 if requests else None


def measure(route: Route, concurrency: int, total: int, load: LoadRunner, max_s: float) -> Cell:
    """One load run against ``route``, with the CPU its processes spent on it."""
    cell = Cell(route.key, concurrency, 0)
    pids = [route.front_pid] + ([route.triton_pid] if route.triton_pid else [])
    before = tree_cpu_s(pids)
    try:
        shot: Shot | None = load.run(
            route.target,
            route.payload,
            concurrency=concurrency,
            total=total,
            max_s=max_s,
            stream_messages=route.stream_messages,
            connections=route.connections,
        )
    except LoadError as error:
        cell.error = str(error)[:300]
        return cell
    after = tree_cpu_s(pids)
    if shot is None:
        cell.error = f"{load.name} cannot drive this route"
        return cell
    if after[route.front_pid] == 0.0:
        cell.error = f"{route.front} (pid {route.front_pid}) is gone"
        return cell
    cell.requests, cell.failed = shot.messages, shot.calls_failed * shot.messages_per_call
    cell.rps, cell.p50_ms, cell.p99_ms = shot.rps, shot.p50_ms, shot.p99_ms
    cell.front_cpu_us = _per_request_us(
        after[route.front_pid] - before[route.front_pid], shot.messages
    )
    if route.triton_pid:
        spent = after[route.triton_pid] - before[route.triton_pid]
        cell.triton_cpu_us = _per_request_us(spent, shot.messages)
    if shot.client_cpu_s is not None:
        cell.client_cpu_us = _per_request_us(shot.client_cpu_s, shot.messages)
    if shot.calls_failed:
        cell.error = f"{shot.calls_failed} calls failed: {shot.errors}"[:300]
    return cell


def idle_cpu(pids: Sequence[int], seconds: float = 2.0) -> dict[int, float]:
    """Milliseconds of CPU per second each process tree spends with no load."""
    before = tree_cpu_s(pids)
    time.sleep(seconds)
    after = tree_cpu_s(pids)
    return {pid: (after[pid] - before[pid]) / seconds * 1e3 for pid in pids}


def run_rounds(
    routes: Sequence[Route],
    load: LoadRunner,
    plan: Plan,
    progress: Callable[[str], None] = print,
) -> list[Cell]:
    """Warm every route up, then run ``plan.rounds`` rounds; return every cell."""
    start = time.monotonic()
    for route in routes:
        warm = min(max(route.levels), 64)
        progress(f"{time.monotonic() - start:6.1f} s  warm-up  {route.label}")
        measure(route, warm, max(warm, _total(route, warm, plan) // 4), load, plan.max_s)
    cells: list[Cell] = []
    for number in range(plan.rounds):
        shift = number % len(routes)
        for route in [*routes[shift:], *routes[:shift]]:
            for concurrency in route.levels:
                cell = measure(
                    route, concurrency, _total(route, concurrency, plan), load, plan.max_s
                )
                cell.round = number + 1
                cells.append(cell)
                progress(f"{time.monotonic() - start:6.1f} s  {_line(route, cell)}")
    return cells


def _line(route: Route, cell: Cell) -> str:
    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    text = (
        f"round {cell.round}  {route.label:<52.52} c={cell.concurrency:<4d}"
        f"{num(cell.rps, '9.0f')} req/s  p50 {num(cell.p50_ms, '7.2f')} ms  "
        f"{route.front} {num(cell.front_cpu_us, '6.0f')} us/req"
    )
    if route.triton_pid:
        text += f"  Triton {num(cell.triton_cpu_us, '6.0f')} us/req"
    return text + (f"  ERROR {cell.error}" if cell.error else "")


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarise(cells: Sequence[Cell]) -> dict[str, dict[int, Summary]]:
    """Median of each figure over the rounds, by route and concurrency."""
    grouped: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        grouped.setdefault((cell.route, cell.concurrency), []).append(cell)
    summaries: dict[str, dict[int, Summary]] = {}
    for (route, concurrency), group in grouped.items():
        good = [cell for cell in group if cell.rps is not None]
        summaries.setdefault(route, {})[concurrency] = Summary(
            route=route,
            concurrency=concurrency,
            rounds=len(good),
            rps=_median([c.rps for c in good]),
            p50_ms=_median([c.p50_ms for c in good]),
            p99_ms=_median([c.p99_ms for c in good]),
            front_cpu_us=_median([c.front_cpu_us for c in good]),
            triton_cpu_us=_median([c.triton_cpu_us for c in good]),
            client_cpu_us=_median([c.client_cpu_us for c in good]),
            failed=sum(cell.failed for cell in group),
            errors=sorted({cell.error for cell in group if cell.error}),
        )
    return summaries
