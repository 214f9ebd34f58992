"""The candidate tables lend their own arrays to a decision (``Candidates``):
``queued_s`` is written in place by the next hook or decision rather than
copied per decision, and stays exact for the decision that reads it; the
telemetry's ``sampled_at`` is the table's until the next telemetry epoch
(no age column is made per decision)."""

from __future__ import annotations

from scheduler.candidates import CandidateTables
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.estimator import ServiceTimeEstimator
from scheduler.fleet import Fleet
from scheduler.placement import Tier
from scheduler.registry import ModelRegistry
from tests.unit.test_candidates_model import UrlBackend


def test_a_decisions_queued_and_sampled_at_columns_are_borrowed_and_current() -> None:
    backends = [UrlBackend(i, "10.0.0.9", 1) for i in range(3)]
    fleet = Fleet(list(backends), clock=ManualClock(0.0), tier_of=lambda b: Tier.ACCELERATOR)
    for state in fleet:
        state.discovered = True
    registry = ModelRegistry()
    registry.rebuild(fleet.backends())
    tables = CandidateTables(
        SchedulerConfig(), fleet, registry, ServiceTimeEstimator(), lambda: None
    )
    first = tables.gather("double", 1, 1.0)
    assert first.queued_s.tolist() == [0.0, 0.0, 0.0]
    next(iter(fleet)).load.start("double", 0.25)  # a call placed: the hook writes the row
    second = tables.gather("double", 1, 2.0)
    assert second.queued_s.tolist() == [0.25, 0.0, 0.0]
    # The same arrays, written in place: no copy per decision.
    assert second.queued_s is first.queued_s
    assert second.sampled_at is first.sampled_at
