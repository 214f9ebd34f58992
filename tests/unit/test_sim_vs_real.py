"""The simulator-vs-real comparison's own logic: device overheads, the
15% rule, and a simulated run fed a handful of send times."""

from __future__ import annotations

import pytest

from loadtests.sim_vs_real import overheads, simulated_run, within
from loadtests.sim_vs_real_live import FleetMs


def test_overhead_is_the_larger_of_learnt_and_triton_compute() -> None:
    fleet = FleetMs()
    got = overheads(
        fleet,
        {"fast": 39.9, "slow": 89.1, "cpu": 57.9},
        {"fast": {"compute_ms": 44.2}, "slow": {"compute_ms": 86.2}},
        2.0,
        "learnt",
    )
    # fast: Triton's 44.2 ms beats the estimator's 39.9 (less its 41 ms configured);
    # slow: the estimator's 89.1 (round trip included) beats Triton's 86.2.
    assert got == pytest.approx({"fast": 3.2, "slow": 7.1, "cpu": 3.9})


def test_overhead_falls_back_for_a_device_never_called_and_when_asked() -> None:
    fleet = FleetMs()
    assert overheads(fleet, {}, {}, 2.5, "learnt") == {"fast": 2.5, "slow": 2.5, "cpu": 2.5}
    learnt = {"fast": 50.0, "slow": 90.0, "cpu": 60.0}
    assert overheads(fleet, learnt, {}, 2.5, "triton") == {"fast": 2.5, "slow": 2.5, "cpu": 2.5}


def test_within_is_relative_to_the_larger_with_two_points_for_small_shares() -> None:
    assert within(100.0, 115.0)
    assert not within(100.0, 118.0)
    assert within(0.25, 0.22, share=True)
    assert not within(0.25, 0.20, share=True)
    assert within(0.05, 0.035, share=True)  # 30% apart, but 1.5 points, both under 10%
    assert not within(0.05, 0.01, share=True)


def test_simulated_run_answers_and_splits_by_backend() -> None:
    sent = [i * 0.05 for i in range(40)]  # 20 req/s for 2 s
    result = simulated_run(
        sent,
        FleetMs(),
        {"fast": 2.0, "slow": 2.0, "cpu": 2.0},
        [1.0, 2.0, 3.0],
        deadline_s=0.16,
    )
    shares = result["share"]
    assert isinstance(shares, dict)
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["fast"] > shares["slow"]  # the fast server finishes soonest most often
    assert result["requests"] == len(sent)
