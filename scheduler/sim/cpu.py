"""The gateway's own CPU as a simulated stage: one FIFO server per process.

A gateway replica is a single Python process whose one event loop does every
request's work in turn — decoding the gRPC call, queueing, placing, encoding
the call to the backend, and on the way back decoding the backend's answer
and encoding the reply. Under load that CPU time queues. ``ProcessCpu``
models it as a single server with first-in-first-out order: a piece of work
of ``s`` seconds that reaches it at ``t`` ends at ``max(t, free_at) + s``.
Because the simulator hands it work in event (time) order, that formula is
exact for FIFO and needs no events of its own: the caller schedules whatever
follows at the returned time.

``CpuStage`` says how much work each request brings: ``before_s`` on arrival
(ahead of the batch queue) and ``after_s`` when its answer comes back (ahead
of the reply). Both zero — the default — turns the stage off.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CpuStage:
    """Per-request CPU seconds a gateway process spends before and after the backend."""

    before_s: float = 0.0
    after_s: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.before_s > 0.0 or self.after_s > 0.0


class ProcessCpu:
    """One process's CPU: a single FIFO server (see the module docstring).

    ``free_at`` is when the work already accepted will be done; ``busy_s``
    sums the work served, so ``busy_s / span`` is the CPU's utilisation;
    ``waited_s`` sums the time work spent queued behind other work.
    """

    __slots__ = ("busy_s", "free_at", "jobs", "waited_s")

    def __init__(self) -> None:
        self.free_at = 0.0
        self.busy_s = 0.0
        self.waited_s = 0.0
        self.jobs = 0

    def serve(self, now: float, seconds: float) -> float:
        """Accept ``seconds`` of work at ``now``; the time it is done."""
        start = self.free_at if self.free_at > now else now
        self.waited_s += start - now
        self.busy_s += seconds
        self.jobs += 1
        self.free_at = start + seconds
        return self.free_at

    def utilisation(self, span_s: float) -> float:
        return self.busy_s / span_s if span_s > 0 else 0.0


__all__ = ["CpuStage", "ProcessCpu"]
