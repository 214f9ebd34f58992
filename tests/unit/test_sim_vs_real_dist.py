"""The distribution check's arithmetic: the real runs' spread next to the
simulator's error, and a share's sampling noise."""

from __future__ import annotations

import math

import pytest

from loadtests.sim_vs_real_dist import summary
from loadtests.sim_vs_real_model import share_noise
from loadtests.sim_vs_real_why import CountingSimulation
from scheduler.sim.devices import DeviceSpec, DeviceType
from scheduler.sim.engine import Scenario, SimModel
from scheduler.sim.workload import Arrival


def _record(p50: float, cpu: float, ok: int = 500) -> dict[str, object]:
    share = {"fast": 0.7 - cpu, "slow": 0.3, "cpu": cpu}
    return {"p50_ms": p50, "p99_ms": 2 * p50, "share": share, "ok": ok}


def test_summary_sets_each_error_next_to_the_spread_between_real_runs() -> None:
    runs: list[dict[str, object]] = [
        {"real": _record(90.0, 0.02), "sim": _record(93.0, 0.01)},
        {"real": _record(100.0, 0.10), "sim": _record(97.0, 0.07)},
        {"real": _record(110.0, 0.06), "sim": _record(110.0, 0.06)},
    ]
    rows = {row["measure"]: row for row in summary(runs)}
    p50 = rows["p50_ms"]
    assert p50["real_mean"] == pytest.approx(100.0)
    assert p50["real_sd"] == pytest.approx(10.0)
    assert p50["real_range"] == pytest.approx(20.0)
    assert p50["mean_error"] == pytest.approx(0.0)
    assert p50["mean_abs_error"] == pytest.approx(2.0)
    assert p50["passed"] == 3
    assert p50["sampling_se"] is None
    cpu = rows["cpu"]
    assert cpu["mean_abs_error"] == pytest.approx((0.01 + 0.03 + 0.0) / 3)
    assert cpu["passed"] == 2  # 10% against 7%: over 2 points and over 15%
    assert cpu["sampling_se"] == pytest.approx(
        (share_noise(0.02, 500) + share_noise(0.10, 500) + share_noise(0.06, 500)) / 3
    )


def test_a_small_shares_sampling_noise_is_about_a_point() -> None:
    assert share_noise(0.05, 550) == pytest.approx(math.sqrt(0.05 * 0.95 / 550))
    assert 0.008 < share_noise(0.05, 550) < 0.01
    assert share_noise(0.0, 550) == 0.0


def _overlapping_run() -> tuple[int, list[float]]:
    """One 10 ms one-instance device; two calls at 0 (the second sent ahead,
    queued on the device) and a third at 1 ms, held in the batch queue until
    a slot frees: sent as the first call ends. Overlaps counted, finish times."""
    gpu = DeviceType("gpu", fixed_s=0.0096, per_row_s=0.0004)
    arrivals = [Arrival(t, "m", 1, 10.0) for t in (0.0, 0.0, 0.001)]
    scenario = Scenario(
        "overlap", [DeviceSpec("gpu", gpu)], [SimModel("m", 1)], arrivals, 0.1, noise_sigma=0.0
    )
    sim = CountingSimulation(scenario, "round_robin")
    done = sorted(r.finished_at for r in sim.run())
    return sim.overlaps, done


def test_a_call_sent_as_one_ends_queues_behind_the_one_waiting() -> None:
    # The engine starts the queued call before it tells the replica: the
    # third call, sent then, waits for the second (it used to start beside
    # it and end with it, [0.010, 0.020, 0.020], one overlap counted).
    assert _overlapping_run() == (0, pytest.approx([0.010, 0.020, 0.030]))
