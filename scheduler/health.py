"""Per-backend circuit breakers: eject a failing backend, probe it, readmit it;
and how long a call may run before it counts as an outlier."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"  # healthy: takes traffic
    OPEN = "open"  # ejected: takes none until its backoff has passed
    HALF_OPEN = "half_open"  # on probation: one trial call at a time


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures (outlier timeouts included) that eject
    base_backoff_s: float = 1.0
    max_backoff_s: float = 30.0


class CircuitBreaker:
    """Outlier ejection for one backend, driven by outcomes and the clock.

    CLOSED counts consecutive failures; at ``failure_threshold`` (or at once
    for a failure that proves the backend unreachable) it opens. OPEN admits
    nothing until ``backoff`` has passed since it opened; then the next
    ``allows`` moves it to HALF_OPEN and admits exactly one trial (a real
    call, or the active health probe). A trial that succeeds closes it and
    resets the backoff; one that fails reopens it with the backoff doubled,
    up to ``max_backoff_s``. Pure: time is always passed in.

    Whether it admits work is a single threshold, ``available_from()``: the
    placement tables keep it in an array and compare the whole fleet against
    ``now`` in one vector operation, so ``on_change`` (when set) is called
    whenever that threshold moves — and only then, since a success on a closed
    breaker happens on every call.
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.backoff_s = self.config.base_backoff_s
        #: When an open breaker admits its trial: ``opened_at + backoff_s``,
        #: computed once so the scalar and the vector checks cannot disagree.
        self.retry_at = 0.0
        self._trial_in_flight = False
        self.last_error = ""
        self.on_change: Callable[[], None] | None = None

    def available_from(self) -> float:
        """The earliest ``now`` at which ``available(now)`` holds, were nothing
        else to happen: -inf when it admits work, +inf while a trial runs."""
        if self.state is BreakerState.CLOSED:
            return -math.inf
        if self.state is BreakerState.OPEN:
            return self.retry_at
        return math.inf if self._trial_in_flight else -math.inf

    def allows(self, now: float) -> bool:
        """Whether a call may go to this backend now (claims the trial if half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now < self.retry_at:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        self._changed()
        return True

    def available(self, now: float) -> bool:
        """Like ``allows`` but without claiming a trial: for scoring candidates."""
        return now >= self.available_from()

    def record_success(self) -> None:
        if self.state is BreakerState.CLOSED and not self.consecutive_failures:
            return  # the common case: nothing changes
        was = self.available_from()
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.backoff_s = self.config.base_backoff_s
        self._trial_in_flight = False
        if self.available_from() != was:
            self._changed()

    def record_failure(self, now: float, error: str, *, fatal: bool = False) -> None:
        """A failed call. ``fatal`` (backend unreachable) opens at once."""
        self.last_error = error
        self.consecutive_failures += 1
        if self.state is BreakerState.HALF_OPEN:
            self.backoff_s = min(self.backoff_s * 2, self.config.max_backoff_s)
            self._open(now)
        elif fatal or self.consecutive_failures >= self.config.failure_threshold:
            self._open(now)

    def _open(self, now: float) -> None:
        self.state = BreakerState.OPEN
        self.opened_at = now
        self.retry_at = now + self.backoff_s
        self._trial_in_flight = False
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def outlier_needs_s(predicted_s: float, wait_s: float, row_bytes: float, usual: float) -> float:
    """What a call is expected to need: its service time predicted by rows,
    scaled up by how much larger its rows are than the ones the prediction
    was learnt from (``usual`` bytes per row; 0: none learnt), plus the wait
    ahead of it. Linear in bytes, an upper bound for models whose time is
    partly fixed: a call that is slow only because it is large (long
    sequences, big images, in variable dimensions) must not count as an
    outlier, and a smaller one is never held to less than its rows predict.
    """
    scale = row_bytes / usual if usual > 0 and row_bytes > usual else 1.0
    return predicted_s * scale + wait_s
