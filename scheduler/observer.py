"""Hooks through which the scheduler reports what it does, for metrics and the admin view.

The scheduler calls an observer at three points of a batch's life; the gateway
implements it with Prometheus counters and histograms and a decision log. The
default does nothing, so the scheduler (and the simulator, and unit tests) need
no metrics library. Calls happen on the event loop and must not block.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from scheduler.placement import Decision


class SchedulerObserver(Protocol):
    """Receives one call per batch, per placement decision and per backend call."""

    def batch_started(
        self, model: str, rows: int, trigger: str, queue_waits_s: Sequence[float]
    ) -> None:
        """A batch cut from the queue goes to placement (a request that ran on
        its own is no batch, and not reported). ``queue_waits_s`` holds each
        member's wait in the queue, empty for a re-run half of a split."""
        ...

    def placed(self, model: str, rows: int, decision: Decision) -> None:
        """A placement decision, whatever its verdict."""
        ...

    def backend_called(self, model: str, backend_id: str, seconds: float, code: str) -> None:
        """A backend call ended: ``code`` is "OK" or the error's status code name."""
        ...


class NullObserver:
    """Observes nothing."""

    def batch_started(
        self, model: str, rows: int, trigger: str, queue_waits_s: Sequence[float]
    ) -> None:
        return None

    def placed(self, model: str, rows: int, decision: Decision) -> None:
        return None

    def backend_called(self, model: str, backend_id: str, seconds: float, code: str) -> None:
        return None
