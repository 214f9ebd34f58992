"""Clocks: the one source of "now" for policies, the live service and the simulator.

Policies never read the wall clock; they are handed a ``Clock`` (or a ``now``
value taken from one), so the discrete-event simulator can drive the same code
on virtual time and tests can step time by hand.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds. Only differences between two readings mean anything."""

    def now(self) -> float: ...


class MonotonicClock:
    """The live clock: ``time.monotonic()``."""

    def now(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to; for tests and the simulator."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go backwards")
        self._now += seconds
