"""Microbenchmark: one batcher step with ~1,024 requests queued (target: <= 20 µs).

    python -m loadtests.queue_bench [--queued 1024] [--repeats 7]

A step is what ``Batcher._step`` asks of its queue each time it wakes:
``BatchQueue.step`` = expire, drop cancelled callers, cut every batch that is
due, and compute the next wake-up. (The batcher then fails the expired
futures and starts one task per batch; those are not the queue's cost.)

The queue holds ``--queued`` requests of a model with max_batch_size 32,
preferred sizes 8/16/32, a 2 ms delay, three priority levels and a 500 ms
queue timeout; requests are 1-4 rows, of four shapes (keys), 70% with their
own deadline. Between timed steps the requests a step took out are replaced
(untimed), so every step sees the same depth; the clock moves 10 µs a step.
Scenarios:

- *busy*: every backend busy (4 of 4 batches running): only a batch that
  cannot grow may go ahead (one, ``queue_ahead``), then timeouts-only wake-up;
- *a backend frees up*: 3 of 4 running: a batch leaves for the idle backend,
  and one more goes ahead;
- *nothing to send*: 5 running (capacity + ahead): expire and wake-up only;
- *push* and *cancel*: one request in, one caller gone (``cancelled`` + ``remove``).

``--before`` also times the previous implementation (kept in the test suite
as the reference model, ``tests/unit/batch_queue_reference.py``) on the same
workload. Wall-clock median per call over each repeat; the table gives the
median of the repeats' medians (lowest-highest in brackets). Writes
loadtests/results/queue.md.

Wall-clock times on a shared virtual machine vary by 2x from run to run;
instruction counts do not. ``--callgrind N`` runs N busy steps, each inside
``functools.reduce`` and nothing else timed, for::

    valgrind --tool=callgrind --collect-atstart=no --toggle-collect=functools_reduce \
        python -m loadtests.queue_bench --callgrind 300

(the instructions collected, divided by N, are one step's; add ``--before``
for the old queue's).
"""

from __future__ import annotations

import argparse
import functools
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from loadtests.placement_bench import StealMeter, machine
from scheduler.batching.policy import BatchingPolicy, QueuePolicy
from scheduler.batching.queue import BatchQueue, QueueItem

RESULTS = Path(__file__).parent / "results"
CAPACITY = 4
AHEAD = 1
POLICY = BatchingPolicy(
    max_batch_size=32,
    preferred_batch_sizes=(8, 16, 32),
    max_queue_delay_us=2_000,
    priority_levels=3,
    default_priority_level=2,
    default_queue_policy=QueuePolicy(
        max_queue_size=4_096, default_timeout_us=500_000, allow_timeout_override=True
    ),
)
KEYS = ("fp32x4", "fp32x8", "fp16x4", "int64x2")
SCENARIOS = {"busy": CAPACITY, "a backend frees up": CAPACITY - 1, "nothing to send": 5}


class Workload:
    """A queue kept at a fixed depth, new or old implementation alike."""

    def __init__(self, queue: Any, item: Callable[..., Any], queued: int) -> None:
        self.queue = queue
        self._item = item
        self._rng = random.Random(3)
        self.now = 100.0
        self._serial = 0
        for _ in range(queued):
            self.push()

    def new_item(self) -> Any:
        rng = self._rng
        self._serial += 1
        deadline = self.now + rng.uniform(0.2, 2.0) if rng.random() < 0.7 else None
        return self._item(
            self._serial,
            rows=rng.choice((1, 1, 1, 2, 4)),
            key=rng.choice(KEYS),
            priority=rng.choice((1, 2, 2, 3)),
            deadline=deadline,
        )

    def push(self) -> Any:
        item = self.new_item()
        self.queue.push(item, self.now)
        return item


def step_of(queue: Any) -> Callable[[float, int], list[Any]]:
    """What one batcher step asks of ``queue``: BatchQueue.step, or the same
    four calls on the old implementation."""
    if isinstance(queue, BatchQueue):
        return lambda now, in_flight: (
            queue.step(now, in_flight=in_flight, capacity=CAPACITY, ahead=AHEAD).batches
        )

    def old_step(now: float, in_flight: int) -> list[Any]:
        queue.expire(now)
        queue.remove_cancelled()
        batches: list[Any] = []
        while in_flight + len(batches) < CAPACITY + AHEAD:
            idle = in_flight + len(batches) < CAPACITY
            batch = queue.pop_batch(now, idle_capacity=idle, complete_only=not idle)
            if batch is None:
                break
            batches.append(batch)
        idle = in_flight + len(batches) < CAPACITY
        queue.next_wakeup(now, triggers=idle, idle=idle)
        return batches

    return old_step


def time_steps(work: Workload, in_flight: int, calls: int) -> float:
    step = step_of(work.queue)
    samples = []
    for _ in range(calls):
        work.now += 1e-5
        start = time.perf_counter_ns()
        batches = step(work.now, in_flight)
        samples.append(time.perf_counter_ns() - start)
        for batch in batches:
            for _ in batch.items:
                work.push()
    return statistics.median(samples) / 1e3


def time_push_cancel(work: Workload, calls: int) -> tuple[float, float]:
    pushes, cancels = [], []
    for _ in range(calls):
        item = work.new_item()
        start = time.perf_counter_ns()
        work.queue.push(item, work.now)
        pushes.append(time.perf_counter_ns() - start)
        start = time.perf_counter_ns()
        item.cancelled = True
        work.queue.remove(item)
        cancels.append(time.perf_counter_ns() - start)
    return statistics.median(pushes) / 1e3, statistics.median(cancels) / 1e3


def under_callgrind(queued: int, steps: int, *, before: bool) -> None:
    """Busy steps, each alone inside functools.reduce (see the module docstring);
    ``before``: of the old queue."""
    if before:
        from tests.unit.batch_queue_reference import ReferenceQueue, RefItem

        work = Workload(ReferenceQueue(POLICY), RefItem, queued)
    else:
        work = Workload(BatchQueue(POLICY), QueueItem, queued)
    step = step_of(work.queue)
    for warm in range(200 + steps):
        work.now += 1e-5
        if warm < 200:  # let the interpreter specialize first
            batches = step(work.now, CAPACITY)
        else:
            batches = functools.reduce(lambda _, now: step(now, CAPACITY), [work.now], [])
        for batch in batches:
            for _ in batch.items:
                work.push()


def measure(make: Callable[[], Workload], repeats: int, calls: int) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {name: [] for name in [*SCENARIOS, "push", "cancel"]}
    for _ in range(repeats):
        for name, in_flight in SCENARIOS.items():
            found[name].append(time_steps(make(), in_flight, calls))
        push, cancel = time_push_cancel(make(), calls)
        found["push"].append(push)
        found["cancel"].append(cancel)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--queued", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--before", action="store_true", help="also time the old queue")
    parser.add_argument("--callgrind", type=int, default=0, help="N steps for callgrind only")
    args = parser.parse_args()
    if args.callgrind:
        under_callgrind(args.queued, args.callgrind, before=args.before)
        return
    where = machine()
    steal = StealMeter()
    columns = {
        "now": measure(
            lambda: Workload(BatchQueue(POLICY), QueueItem, args.queued), args.repeats, args.calls
        )
    }
    if args.before:
        from tests.unit.batch_queue_reference import ReferenceQueue, RefItem

        columns["before"] = measure(
            lambda: Workload(ReferenceQueue(POLICY), RefItem, args.queued),
            args.repeats,
            max(20, args.calls // 20),
        )
    rows = []
    for name in [*SCENARIOS, "push", "cancel"]:
        cells = []
        for values in (c[name] for c in columns.values()):
            cells.append(f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
        print(rows[-1], file=sys.stderr)
    flags = f" --queued {args.queued} --repeats {args.repeats} --calls {args.calls}"
    lines = [
        "# Batch queue: one batcher step",
        "",
        f"Command: `python -m loadtests.queue_bench{flags}{' --before' if args.before else ''}`. "
        f"Machine: {where}; CPU time stolen by the hypervisor during the run: {steal.share()}.",
        "",
        f"{args.queued} requests queued (see the module docstring for the workload). Median µs "
        f"per call over {args.repeats} repeats (lowest-highest repeat median in brackets).",
        "",
        "| operation | µs " + ("| before (old queue) µs " if args.before else "") + "|",
        "|---|---|" + ("---|" if args.before else ""),
        *rows,
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "queue.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
