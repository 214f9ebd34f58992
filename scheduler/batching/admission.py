"""Admission by predicted wait: refuse at the door what the queue would make late.

Pure: the queue's state and ``now`` are passed in, no clock or I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from scheduler.batching.queue import BatchQueue
from scheduler.errors import ResourceExhausted


class Admittable(Protocol):
    """What admission reads of a request (an ``InferRequest``, or the simulator's)."""

    @property
    def deadline(self) -> float | None: ...

    @property
    def priority(self) -> int: ...


@dataclass(frozen=True, slots=True)
class AdmissionPolicy:
    """``fraction``: the share of the time to its deadline the work ahead of a
    request may take; ``default_slo_s``: the deadline assumed, for admission
    only, for a request that has none (None: such requests are always queued)."""

    fraction: float = 1.0
    default_slo_s: float | None = None


def admit_by_deadline(
    queue: BatchQueue[Any],
    request: Admittable,
    rows: int,
    now: float,
    parallel: Callable[[], int],
    policy: AdmissionPolicy,
) -> None:
    """Raise ResourceExhausted for a request that the work queued ahead of it
    would make miss its deadline; return for one that may be queued.

    A refused request would only have waited to fail with DEADLINE_EXCEEDED,
    and its wait would have pushed later requests past theirs too. The
    prediction: the batches ahead at its priority level and above, its own
    included, run ``parallel()`` at a time, each taking the queue's measured
    batch service time (no prediction, no refusal, before one was measured).
    ``parallel`` is called only when the answer depends on it: reading the
    backends' capacity is the costly part, and a request without a deadline
    (or before a batch was measured), or one in time even if the batches
    ahead ran one at a time, needs none.
    It must end within ``policy.fraction`` of the time left: the rest is slack for
    estimation error, which keeps the admitted tail well inside the deadline.
    The retry hint is when the queue ahead will have drained.
    """
    deadline = request.deadline
    if deadline is None and policy.default_slo_s is not None:
        deadline = now + policy.default_slo_s
    per_batch_s = queue.service_estimate_s
    if deadline is None or per_batch_s is None:
        return
    max_batch = queue.policy.max_batch_size
    batches = -(-(queue.rows_ahead(request.priority) + rows) // max_batch)
    budget_s = (deadline - now) * policy.fraction
    if batches * per_batch_s <= budget_s:
        return  # in time even one batch at a time: no need to ask how many run at once
    finish_s = -(-batches // max(parallel(), 1)) * per_batch_s
    left_s = deadline - now
    if finish_s > budget_s:
        raise ResourceExhausted(
            f"the queue ahead would take {finish_s * 1e3:.0f} ms, and the deadline is in "
            f"{left_s * 1e3:.0f} ms; retry later or with a longer deadline",
            retry_after_ms=max(1, math.ceil(finish_s * 1e3)),
        )
