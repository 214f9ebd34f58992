"""The placement policy, the service-time estimator and the circuit breaker:
pure functions of their inputs and the clock."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.estimator import ServiceTimeEstimator, bucket_of
from scheduler.health import BreakerConfig, BreakerState, CircuitBreaker
from scheduler.placement import Candidates, Tier, Verdict, place


def table(**columns: list) -> Candidates:  # type: ignore[type-arg]
    n = len(columns["ids"])
    return Candidates(
        backend_ids=tuple(columns["ids"]),
        tier=np.array(columns.get("tier", [Tier.ACCELERATOR] * n), np.int8),
        available=np.array(columns.get("available", [True] * n)),
        memory_ok=np.array(columns.get("memory_ok", [True] * n)),
        load_ok=np.array(columns.get("load_ok", [True] * n)),
        queued_s=np.array(columns.get("queued_s", [0.0] * n), np.float64),
        service_s=np.array(columns.get("service_s", [0.01] * n), np.float64),
        sampled_at=np.array(columns.get("sampled_at", [-0.5] * n), np.float64),
    )


def test_memory_full_gpu_is_avoided() -> None:
    c = table(ids=["gpu0", "gpu1"], service_s=[0.001, 0.005], memory_ok=[False, True])
    decision = place(c, now=0.0, deadline=None)
    assert decision.backend_id == "gpu1"
    assert decision.verdict is Verdict.PLACED


def test_faster_device_preferred_until_its_queue_makes_it_slower() -> None:
    fast_idle = table(ids=["fast", "slow"], service_s=[0.002, 0.006], queued_s=[0.0, 0.0])
    assert place(fast_idle, now=0, deadline=None).backend_id == "fast"
    fast_busy = table(ids=["fast", "slow"], service_s=[0.002, 0.006], queued_s=[0.005, 0.0])
    decision = place(fast_busy, now=0, deadline=None)
    assert decision.backend_id == "slow"
    assert decision.runner_up == "fast"
    assert decision.predicted_s == pytest.approx(0.006)
    assert decision.reason == "slow predicted 6.00 ms, runner-up fast 7.00 ms"
    assert decision.note == ""  # worded when read


def test_spill_to_cpu_only_when_the_deadline_demands_it() -> None:
    tiers = [Tier.ACCELERATOR, Tier.CPU]
    # The CPU would finish first, but the GPU meets the deadline: stay on the GPU.
    c = table(ids=["gpu", "cpu"], tier=tiers, service_s=[0.004, 0.003], queued_s=[0.02, 0.0])
    assert place(c, now=10.0, deadline=10.05).backend_id == "gpu"
    # The GPU's queue would miss the deadline; the CPU makes it: spill.
    decision = place(c, now=10.0, deadline=10.01)
    assert (decision.backend_id, decision.verdict) == ("cpu", Verdict.SPILLED)
    assert decision.reason.startswith("spill: accelerators predicted 24.00 ms > 10.00 ms left")
    # Nothing can make it: fail fast, saying by how much.
    late = place(c, now=10.0, deadline=10.002)
    assert (late.backend_id, late.verdict) == (None, Verdict.TOO_LATE)
    assert "fastest cpu predicted 3.00 ms, 2.00 ms left" in late.reason


def test_no_capacity_names_the_reasons() -> None:
    c = table(
        ids=["a", "b", "c"],
        available=[False, True, True],
        memory_ok=[True, False, True],
        load_ok=[True, True, False],
    )
    decision = place(c, now=0, deadline=None)
    assert decision.verdict is Verdict.NO_CAPACITY
    assert decision.reason == (
        "no backend can take it now (unavailable: a; short of memory: b; over load limits: c)"
    )


def test_unknown_service_time_uses_the_given_prior() -> None:
    c = table(ids=["new", "known"], service_s=[np.nan, 0.004])
    assert place(c, now=0, deadline=None, unknown_service_s=0.0).backend_id == "new"
    assert place(c, now=0, deadline=None, unknown_service_s=0.01).backend_id == "known"


def test_estimator_learns_and_interpolates() -> None:
    est = ServiceTimeEstimator(alpha=0.5)
    assert est.predict("b", "m", 4) is None
    est.seed("b", "m", 1, 0.5)
    assert est.predict("b", "m", 1) == 0.5
    est.observe("b", "m", 1, 0.010)  # the first observation replaces the seed
    assert est.predict("b", "m", 1) == pytest.approx(0.010)
    est.observe("b", "m", 1, 0.020)
    assert est.predict("b", "m", 1) == pytest.approx(0.015)
    # One bucket known: mostly fixed cost, each further multiple adds an eighth.
    assert est.predict("b", "m", 4) == pytest.approx(0.015 * (1 + 3 / 8))
    est.observe("b", "m", 8, 0.022)
    # two buckets: fixed + per-row through (1, 15 ms) and (8, 22 ms) -> 1 ms per row
    assert est.predict("b", "m", 4) == pytest.approx(0.018)
    assert est.predict("b", "m", 30) == pytest.approx(0.015 + 0.001 * 31)
    assert [bucket_of(r) for r in (0, 1, 2, 3, 5, 64, 65)] == [1, 1, 2, 4, 8, 64, 128]
    est.forget("b")
    assert est.predict("b", "m", 1) is None


def test_single_row_samples_do_not_scale_linearly_to_a_full_batch() -> None:
    """Issue 9 item 3: 800 ms seen for one row must not predict 51 s for 64."""
    est = ServiceTimeEstimator()
    est.observe("b", "slow", 1, 0.8)
    assert not est.knows("b", "other") and est.knows("b", "slow")
    predicted = est.predict("b", "slow", 64)
    assert predicted is not None and predicted < 0.8 * 10  # linear would be 51.2 s
    assert predicted >= 0.8  # never below what one row took
    assert est.predict("b", "slow", 1) == pytest.approx(0.8)


def test_breaker_ejects_then_probes_then_readmits() -> None:
    breaker = CircuitBreaker(
        BreakerConfig(failure_threshold=3, base_backoff_s=1.0, max_backoff_s=4.0)
    )
    for _ in range(2):
        breaker.record_failure(0.0, "timeout")
    assert breaker.state is BreakerState.CLOSED and breaker.allows(0.0)
    breaker.record_failure(0.0, "timeout")
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allows(0.5) and not breaker.available(0.5)
    assert breaker.available(1.0)
    assert breaker.allows(1.0)  # the one trial
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allows(1.0)  # only one at a time
    breaker.record_failure(1.1, "still broken")
    assert breaker.state is BreakerState.OPEN and breaker.backoff_s == 2.0
    assert not breaker.allows(2.0) and breaker.allows(3.1)
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED and breaker.backoff_s == 1.0


def test_breaker_opens_at_once_when_fatal_and_caps_backoff() -> None:
    breaker = CircuitBreaker(BreakerConfig(base_backoff_s=1.0, max_backoff_s=3.0))
    breaker.record_failure(0.0, "connection refused", fatal=True)
    assert breaker.state is BreakerState.OPEN
    now = 0.0
    for _ in range(4):
        now += breaker.backoff_s
        assert breaker.allows(now)
        breaker.record_failure(now, "refused")
    assert breaker.backoff_s == 3.0


def test_learned_service_time_does_not_absorb_backend_queueing() -> None:
    from scheduler.load import service_sample as _service_s

    # Alone: the whole latency is service.
    assert _service_s(0.020, 0.0, 0, 0.020) == pytest.approx(0.020)
    # Behind 3 calls predicted at 60 ms of work: 80 ms latency is 20 ms of service.
    assert _service_s(0.080, 0.060, 3, 0.080) == pytest.approx(0.020)
    # A wait overestimated at dispatch cannot push the sample below a fair share.
    assert _service_s(0.080, 0.079, 3, 0.080) == pytest.approx(0.020)
