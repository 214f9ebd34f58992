"""Per-backend circuit breakers: eject a failing backend, probe it, readmit it."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"  # healthy: takes traffic
    OPEN = "open"  # ejected: takes none until its backoff has passed
    HALF_OPEN = "half_open"  # on probation: one trial call at a time


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failure_threshold: int = 5  # consecutive failures (timeouts included) that eject
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
    """

    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.opened_at = 0.0
        self.backoff_s = self.config.base_backoff_s
        self._trial_in_flight = False
        self.last_error = ""

    def allows(self, now: float) -> bool:
        """Whether a call may go to this backend now (claims the trial if half-open)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            if now - self.opened_at < self.backoff_s:
                return False
            self.state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def available(self, now: float) -> bool:
        """Like ``allows`` but without claiming a trial: for scoring candidates."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN:
            return now - self.opened_at >= self.backoff_s
        return not self._trial_in_flight

    def record_success(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.backoff_s = self.config.base_backoff_s
        self._trial_in_flight = False

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
        self._trial_in_flight = False
