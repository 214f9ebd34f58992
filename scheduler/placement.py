"""Placement: which backend runs a piece of work. Pure: no I/O, ``now`` passed in.

This first policy is join-the-shortest-queue over healthy backends; the
predicted-finish-time policy (telemetry, learned service times, deadlines)
replaces its scoring without changing the seam: candidates in, Decision out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    """A backend as the policy sees it at one instant."""

    backend_id: str
    healthy: bool
    outstanding: int
    #: Registration order; breaks ties so placement is deterministic.
    order: int = 0


@dataclass(frozen=True, slots=True)
class Decision:
    """The chosen backend, the runner-up, and why, for traces and the admin view."""

    backend_id: str
    runner_up: str | None
    reason: str
    decided_at: float


def choose(candidates: Sequence[Candidate], now: float) -> Decision | None:
    """Pick the healthy candidate with the fewest calls outstanding.

    Returns None when no candidate is healthy; the caller turns that into
    UNAVAILABLE with the list of backends it tried.
    """
    healthy = sorted((c for c in candidates if c.healthy), key=lambda c: (c.outstanding, c.order))
    if not healthy:
        return None
    best = healthy[0]
    runner_up = healthy[1] if len(healthy) > 1 else None
    reason = f"least outstanding: {best.backend_id} has {best.outstanding}"
    if runner_up is not None:
        reason += f", runner-up {runner_up.backend_id} has {runner_up.outstanding}"
    return Decision(
        backend_id=best.backend_id,
        runner_up=runner_up.backend_id if runner_up else None,
        reason=reason,
        decided_at=now,
    )
