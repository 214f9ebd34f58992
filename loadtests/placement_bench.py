"""Microbenchmark: one whole placement decision over N backends, with telemetry.

    python -m loadtests.placement_bench [--backends 4 16 64 256 1000] [--repeats 7]

Targets (issue 8): <= 20 µs at 64 backends, <= 50 µs at 1,000.

A real ``Scheduler`` is started over N fake Triton backends (ids and URLs as DNS
discovery makes them; the last eighth are the CPU tier) with a ``DeviceMonitor``
whose provider reports, for every accelerator, a fresh GPU reading (memory,
utilization) and, for every backend, a Triton queue reading. The model has a
configured memory footprint, so the memory check is live; every backend has
learned service times and some work in flight. Columns:

- *whole decision*: what ``BatchRunner.run`` does per placement —
  ``scheduler.candidates.gather`` (the model's candidates from live state)
  and ``place`` — with the clock moving 1 µs per decision and, before each
  (untimed), one call finishing on a random backend (its queued work changes
  and the estimator learns), so each decision refreshes what changed;
- *place only*: ``place`` on the gathered candidates (what the policy costs);
- *after a new snapshot*: the first decision after the monitor published a new
  snapshot, which re-derives the telemetry columns (once per poll, 1 s by
  default; the other decisions of that second take the first column's time);
- with ``--before``: the previous per-batch builder (kept in the test suite as
  the reference model, ``tests/unit/candidates_reference.py``) and ``place``
  on the same fleet.

Each repeat times every call on its own (``perf_counter_ns``, ~0.1 µs of
timer overhead included) and keeps the median; the table reports the median,
lowest and highest of the repeats' medians, and the share of CPU time the
hypervisor stole during the run (on a shared virtual machine, the main source
of noise). Writes loadtests/results/placement.md.

Instruction counts do not depend on the neighbours: ``--callgrind N`` runs N
whole decisions on the first ``--backends`` size, each inside
``functools.reduce`` and nothing else timed, for::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        python -m loadtests.placement_bench --backends 64 --callgrind 300

(the instructions collected, divided by N, are one decision's; add
``--before`` for the old builder's).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scheduler.backends.base import Device, DeviceKind
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.placement import Tier, place
from scheduler.spec import DataType, ModelSpec, TensorSpec
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.snapshot import BackendLoad, DeviceSnapshot, ProviderSample
from tests.unit.candidates_reference import ReferenceBuilder

RESULTS = Path(__file__).parent / "results"
GIB = 1024**3
ROWS = 8
DEADLINE_S = 0.05
_X = TensorSpec("X", DataType.FP32, (-1, 4))
SPEC = ModelSpec(
    "m",
    (_X,),
    (TensorSpec("Y", DataType.FP32, (-1, 4)),),
    max_batch_size=64,
    config={"instance_group": [{"count": 2}]},
)


class BenchBackend:
    """A Triton-like backend that is never called: placement reads only its identity."""

    def __init__(self, index: int) -> None:
        self.url = f"10.{index // 250}.{index % 250}.1:8001"
        self._id = f"triton@{self.url}"

    @property
    def id(self) -> str:
        return self._id

    @property
    def device(self) -> Device:
        return Device(DeviceKind.GPU, host=self.url)

    @property
    def tier(self) -> Tier:
        return Tier.ACCELERATOR

    @property
    def endpoint(self) -> str:
        return self.url

    @property
    def workers(self) -> int:
        return 1

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return {SPEC.name: SPEC}

    async def start(self) -> None:
        return None

    async def infer(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        raise NotImplementedError("the placement benchmark never runs a batch")

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None:
        return None


class BenchTelemetry:
    """Every accelerator's GPU and every backend's queue, freshly read per poll."""

    name = "bench"

    def __init__(self, backend_ids: list[str], cpu: set[str]) -> None:
        self._ids = backend_ids
        self._cpu = cpu
        self._rng = random.Random(1)

    def sample(self, now: float) -> ProviderSample:
        rng = self._rng
        devices = []
        for backend_id in self._ids:
            if backend_id in self._cpu:
                continue
            used = rng.randint(0, 79) * GIB
            devices.append(
                DeviceSnapshot(
                    f"{backend_id}:GPU-0",
                    "gpu",
                    "triton-metrics",
                    now,
                    memory_total_bytes=80 * GIB,
                    memory_used_bytes=used,
                    memory_free_bytes=80 * GIB - used,
                    utilization=rng.random(),
                )
            )
        loads = [
            BackendLoad(b, now, pending_requests={SPEC.name: rng.randint(0, 5)}) for b in self._ids
        ]
        return ProviderSample(tuple(devices), tuple(loads))

    def close(self) -> None:
        return None


async def start_fleet(n: int) -> tuple[Scheduler, ManualClock, DeviceMonitor]:
    clock = ManualClock(1000.0)
    backends = [BenchBackend(i) for i in range(n)]
    cpu = {b.id for b in backends[-max(1, n // 8) :]}
    config = SchedulerConfig(
        health_interval_s=3600,
        rediscover_interval_s=3600,
        dns_interval_s=3600,
        model_memory_bytes={SPEC.name: 2 * GIB},
    )
    monitor = DeviceMonitor(
        [BenchTelemetry([b.id for b in backends], cpu)], clock=clock, interval_s=3600
    )
    scheduler = Scheduler(
        backends,
        clock=clock,
        config=config,
        monitor=monitor,
        tier_of=lambda b: Tier.CPU if b.id in cpu else Tier.ACCELERATOR,
    )
    await scheduler.start()
    rng = random.Random(2)
    for backend in backends:
        base_s = 0.05 if backend.id in cpu else 0.002
        for rows in (1, 8, 32):
            seconds = base_s * (1 + rows / 16) * rng.uniform(0.8, 1.2)
            scheduler.estimator.observe(backend.id, SPEC.name, rows, seconds)
        state = scheduler.fleet.get(backend.id)
        assert state is not None
        state.load.set(SPEC.name, rng.randint(0, 3), rng.uniform(0.0, 0.02))
    return scheduler, clock, monitor


def per_call_us(
    fn: Callable[[], object],
    clock: ManualClock,
    calls: int,
    between: Callable[[], object] = lambda: None,
) -> float:
    """Median wall-clock µs per call, the clock moving 1 µs and ``between``
    running (untimed) before each call."""
    samples = []
    for _ in range(calls):
        clock.advance(1e-6)
        between()
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1e3


async def measure(n: int, repeats: int, before: bool) -> dict[str, list[float]]:
    scheduler, clock, monitor = await start_fleet(n)
    unknown_s = scheduler.config.unknown_service_s

    def decide() -> None:
        now = clock.now()
        candidates = scheduler.candidates.gather(SPEC.name, ROWS, now)
        place(candidates, now=now, deadline=now + DEADLINE_S, unknown_service_s=unknown_s)

    gathered = scheduler.candidates.gather(SPEC.name, ROWS, clock.now())

    def policy_only() -> None:
        now = clock.now()
        place(gathered, now=now, deadline=now + DEADLINE_S, unknown_service_s=unknown_s)

    old = ReferenceBuilder(scheduler.config)
    rng = random.Random(4)
    states = list(scheduler.fleet)

    def a_call_finishes() -> None:
        # What Scheduler._call does when a call ends, on a random backend: its
        # queued work changes and the estimator learns, so the next decision
        # refreshes that backend's prediction rows, as in steady state.
        state = rng.choice(states)
        state.load.set(SPEC.name, state.load.calls(SPEC.name), rng.uniform(0.0, 0.02))
        scheduler.estimator.observe(state.id, SPEC.name, ROWS, rng.uniform(0.002, 0.004))

    def decide_as_before() -> None:
        # The previous _run_batch: resolve the serving states, rebuild every
        # row (scanning the snapshot per backend), then place.
        now = clock.now()
        states = [s for s in scheduler.fleet if SPEC.name in s.backend.models()]
        candidates = old.build(SPEC, ROWS, states, scheduler.estimator, monitor.snapshot(), now)
        place(candidates, now=now, deadline=now + DEADLINE_S, unknown_service_s=unknown_s)

    decide()
    found: dict[str, list[float]] = {k: [] for k in ("whole", "place", "snapshot", "before")}
    try:
        for _ in range(repeats):
            found["whole"].append(per_call_us(decide, clock, 2000, a_call_finishes))
            found["place"].append(per_call_us(policy_only, clock, 2000))
            firsts = []
            for _ in range(20):
                await monitor.poll_once()
                firsts.append(per_call_us(decide, clock, 1))
            found["snapshot"].append(statistics.median(firsts) / 1e3)
            if before:
                calls = max(5, 20_000 // n)
                found["before"].append(per_call_us(decide_as_before, clock, calls, a_call_finishes))
    finally:
        await scheduler.aclose()
    return found


async def under_callgrind(n: int, decisions: int, *, before: bool) -> None:
    """Whole decisions, each alone inside functools.reduce (module docstring);
    ``before``: with the old builder."""
    scheduler, clock, monitor = await start_fleet(n)
    unknown_s = scheduler.config.unknown_service_s
    rng = random.Random(4)
    states = list(scheduler.fleet)
    old = ReferenceBuilder(scheduler.config)

    def decide(_: object, now: float) -> object:
        if before:
            serving = [s for s in scheduler.fleet if SPEC.name in s.backend.models()]
            snapshot = monitor.snapshot()
            candidates = old.build(SPEC, ROWS, serving, scheduler.estimator, snapshot, now)
        else:
            candidates = scheduler.candidates.gather(SPEC.name, ROWS, now)
        return place(candidates, now=now, deadline=now + DEADLINE_S, unknown_service_s=unknown_s)

    try:
        warmup = 5 if before else 200  # the old builder is slow to run under valgrind
        for warm in range(warmup + decisions):
            clock.advance(1e-6)
            state = rng.choice(states)  # a call finishes somewhere, as in the timed runs
            state.load.set(SPEC.name, state.load.calls(SPEC.name), rng.uniform(0.0, 0.02))
            scheduler.estimator.observe(state.id, SPEC.name, ROWS, rng.uniform(0.002, 0.004))
            if warm < warmup:
                decide(None, clock.now())
            else:
                functools.reduce(decide, [clock.now()], None)
    finally:
        await scheduler.aclose()


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            names = [line.split(":", 1)[1] for line in info if line.startswith("model name")]
        cpu = names[0].strip() if names else cpu
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores (load average {load:.1f} at start), "
        f"Python {platform.python_version()}, numpy {np.__version__}"
    )


class StealMeter:
    """The share of CPU time the hypervisor gave to others during a run (a
    virtual machine's 'steal' in /proc/stat): a sign of how noisy timings are."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(x) for x in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        return (fields[7] if len(fields) > 7 else 0), sum(fields)

    def share(self) -> str:
        end = self._read()
        if self._start is None or end is None or end[1] == self._start[1]:
            return "unknown"
        return f"{(end[0] - self._start[0]) / (end[1] - self._start[1]):.0%}"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=[4, 16, 64, 256, 1000])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--before", action="store_true", help="also time the old builder")
    parser.add_argument("--callgrind", type=int, default=0, help="N decisions for callgrind only")
    args = parser.parse_args()
    if args.callgrind:
        asyncio.run(under_callgrind(args.backends[0], args.callgrind, before=args.before))
        return
    where = machine()
    steal = StealMeter()
    columns = ["whole", "place", "snapshot", *(["before"] if args.before else [])]
    rows = []
    for n in args.backends:
        found = asyncio.run(measure(n, args.repeats, args.before))
        cells = []
        for column in columns:
            values = found[column]
            unit = 2 if column == "snapshot" else 1
            low, mid, high = min(values), statistics.median(values), max(values)
            cells.append(f"{mid:.{unit}f} ({low:.{unit}f}-{high:.{unit}f})")
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    sizes = " ".join(map(str, args.backends))
    flags = f" --backends {sizes} --repeats {args.repeats}" + (" --before" if args.before else "")
    headers = [
        "whole decision (gather + place), µs",
        "place only, µs",
        "first decision after a new snapshot, ms",
        *(["before: old builder + place, µs"] if args.before else []),
    ]
    lines = [
        "# Placement decision time",
        "",
        f"Command: `python -m loadtests.placement_bench{flags}`. Machine: {where}; "
        f"CPU time stolen by the hypervisor during the run: {steal.share()}.",
        "",
        f"A batch of {ROWS} rows, a {DEADLINE_S * 1e3:.0f} ms deadline; every accelerator with a "
        "fresh GPU reading, every backend with a fresh Triton queue reading, the model's memory "
        "footprint configured (see the module docstring). Wall-clock median per decision, the "
        f"median of {args.repeats} repeats (lowest-highest repeat in brackets).",
        "",
        "| backends | " + " | ".join(headers) + " |",
        "|---" * (len(headers) + 1) + "|",
        *rows,
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "placement.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
