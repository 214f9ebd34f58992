"""scheduler.sim: tiny scenarios through the real scheduler parts on virtual time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.routing import ROUTERS
from scheduler.sim.__main__ import main
from scheduler.sim.devices import DeviceSpec, Failure
from scheduler.sim.engine import Simulation
from scheduler.sim.report import measure
from scheduler.sim.scenarios import FAST, SLOW, build
from scheduler.sim.workload import ModelLoad, generate, read_trace, write_trace


@pytest.mark.parametrize("router", ROUTERS)
def test_every_request_ends_under_every_policy(router: str) -> None:
    scenario = build(gpus=4, duration_s=0.5, scale=1.0)
    requests = Simulation(scenario, router).run()
    assert len(requests) == len(scenario.arrivals) > 100
    assert {r.outcome for r in requests} <= {"ok", "expired", "refused", "failed", "shed"}
    result = measure(Simulation(scenario, router), [], 0.0)  # empty runs measure too
    assert result.requests == 0


def test_the_same_seed_gives_the_same_run() -> None:
    scenario = build(gpus=4, duration_s=0.5)
    a, b = (Simulation(scenario, "power_of_two").run() for _ in range(2))
    assert [(r.backend, r.finished_at) for r in a] == [(r.backend, r.finished_at) for r in b]


def test_predicted_finish_time_prefers_the_fast_gpu() -> None:
    scenario = build(gpus=2, duration_s=1.0, scale=0.5)
    sim = Simulation(scenario, "predicted_finish_time")
    result = measure(sim, sim.run(), 0.0)
    assert result.share["gpu0000"] > 0.8  # FAST; gpu0001 is SLOW
    assert (scenario.devices[0].type, scenario.devices[1].type) == (FAST, SLOW)


def test_a_dead_gpu_is_ejected_and_its_work_retried_elsewhere() -> None:
    scenario = build(gpus=2, duration_s=1.0, scale=0.5)
    dead = DeviceSpec("gpu0000", FAST, failures=(Failure("dead", 0.0, 10.0),))
    scenario = type(scenario)(**{**scenario.__dict__, "devices": [dead, *scenario.devices[1:]]})
    sim = Simulation(scenario, "round_robin")
    requests = sim.run()
    assert all(r.backend != "gpu0000" for r in requests)
    assert sum(r.outcome == "ok" for r in requests) / len(requests) > 0.95
    assert sim.replicas[0].fleet.get("gpu0000").breaker.state.value != "closed"  # type: ignore[union-attr]


def test_replicas_share_the_arrivals() -> None:
    scenario = build(gpus=4, duration_s=0.5, replicas=2, telemetry_lag_s=0.1)
    sim = Simulation(scenario, "least_outstanding")
    requests = sim.run()
    assert sum(r.decisions for r in sim.replicas) > 0
    assert all(r.decisions > 0 for r in sim.replicas)
    assert len(requests) == len(scenario.arrivals)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_a_trace_replays_what_was_recorded(tmp_path: Path, suffix: str) -> None:
    loads = [ModelLoad("vision", 200, 0.1), ModelLoad("text", 100, 0.06, shape="bursty")]
    arrivals = generate(loads, 1.0, seed=3)
    path = tmp_path / f"trace{suffix}"
    write_trace(path, arrivals)
    again = read_trace(path)
    assert [(a.model, a.rows) for a in again] == [(a.model, a.rows) for a in arrivals]
    assert [a.at_s for a in again] == pytest.approx([a.at_s for a in arrivals], abs=1e-6)
    scenario = build(gpus=2, trace=path)
    assert len(Simulation(scenario, "round_robin").run()) == len(arrivals)


def test_the_command_line_writes_table_numbers_and_plot(tmp_path: Path) -> None:
    options = ["--gpus", "2", "--duration", "0.3", "--sweep", "0.5", "1", "--out", str(tmp_path)]
    code = main([*options, "--policy", "predicted_finish_time", "--policy", "round_robin"])
    assert code == 0
    assert "| default | 0.50 | predicted_finish_time |" in (tmp_path / "sim_default.md").read_text()
    assert len(json.loads((tmp_path / "sim_default.json").read_text())) == 4
    assert (tmp_path / "sim_default.png").stat().st_size > 1000
