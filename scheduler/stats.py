"""Per-model inference statistics, in the shape of Triton's ModelStatistics."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
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

    Per request: ``success``/``fail`` (whole time in the gateway) and ``queue``
    (from admission until its backend call started). Per backend call (one
    batch): ``compute_infer`` and ``batch_sizes``, so ``inference_count /
    execution_count`` is the mean batch size, as in Triton.
    ``last_inference_ms`` is wall-clock ms since the epoch because the protocol
    reports that; durations come from the monotonic clock.
    """

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    #: rows -> (calls, total compute seconds), like Triton's batch_stats
    batch_sizes: Counter[int] = field(default_factory=Counter)
    batch_compute_s: dict[int, float] = field(default_factory=dict)

    def record_request(self, *, ok: bool, total_s: float, rows: int, count: int = 1) -> None:
        """``count`` requests (``rows`` rows in all) that each took ``total_s``."""
        duration = self.success if ok else self.fail
        duration.count += count
        duration.ns += int(total_s * 1e9) * count
        if ok:
            self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)

    def record_execution(
        self, *, rows: int, compute_s: float, started: float, enqueued_at: Sequence[float]
    ) -> None:
        """One backend call of ``rows`` rows that started at ``started`` and
        took ``compute_s``; its members joined the queue at ``enqueued_at``
        (the same clock as ``started``), so each waited ``started - t``."""
        self.execution_count += 1
        self.compute_infer.add(compute_s)
        self.batch_sizes[rows] += 1
        self.batch_compute_s[rows] = self.batch_compute_s.get(rows, 0.0) + compute_s
        queue = self.queue  # a batch's members at once: one call, not one per member
        queue.count += len(enqueued_at)
        queue.ns += sum([int((started - t) * 1e9) for t in enqueued_at])
