"""Per-model inference statistics, in the shape of Triton's ModelStatistics."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    """A count and a total in nanoseconds, like Triton's StatisticDuration."""

    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += int(seconds * 1e9)


@dataclass(slots=True)
class ModelStats:
    """What the gateway observed for one model (all backends together).

    ``success``/``fail`` cover the whole request in the gateway; ``queue`` is
    time spent before a backend call started; ``compute_infer`` the backend
    calls themselves. ``last_inference_ms`` is wall-clock milliseconds since
    the epoch because that is what the protocol reports; durations are
    measured on the monotonic clock.
    """

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)

    def record(
        self, *, ok: bool, total_s: float, queue_s: float, compute_s: float, rows: int
    ) -> None:
        (self.success if ok else self.fail).add(total_s)
        if ok:
            self.inference_count += rows
            self.execution_count += 1
            self.queue.add(queue_s)
            self.compute_infer.add(compute_s)
        self.last_inference_ms = int(time.time() * 1000)
