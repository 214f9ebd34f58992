"""scheduler.sim: tiny scenarios through the real scheduler parts on virtual time."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from scheduler.routing import ROUTERS
from scheduler.sim.__main__ import main
from scheduler.sim.cpu import CpuStage, ProcessCpu
from scheduler.sim.devices import DeviceSpec, DeviceType, Failure
from scheduler.sim.engine import Scenario, SimModel, Simulation
from scheduler.sim.report import measure
from scheduler.sim.scenarios import FAST, SLOW, build
from scheduler.sim.workload import Arrival, ModelLoad, generate, read_trace, write_trace


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


def test_events_run_in_time_order_and_one_time_in_the_order_scheduled() -> None:
    scenario = dataclasses.replace(build(gpus=1, duration_s=0.01), arrivals=())
    sim = Simulation(scenario, "predicted_finish_time")
    ran: list[str] = []

    def event(name: str, *more: tuple[float, str]) -> None:
        ran.append(name)
        for when, follower in more:  # scheduled while a time's events run
            sim.at(when, event, follower)

    sim.at(0.002, event, "c")
    sim.at(0.001, event, "a", (0.001, "b2"), (0.003, "d"))
    sim.at(0.001, event, "b1")
    sim.at(0.003, event, "e", (0.003, "f"))
    sim.run()
    assert ran == ["a", "b1", "b2", "c", "e", "d", "f"]  # e was scheduled before d


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


def test_process_cpu_is_a_fifo_server() -> None:
    cpu = ProcessCpu()
    assert cpu.serve(0.0, 1.0) == 1.0
    assert cpu.serve(0.5, 1.0) == 2.0  # queued behind the first for 0.5 s
    assert cpu.serve(5.0, 1.0) == 6.0  # idle in between: no wait
    assert (cpu.busy_s, cpu.waited_s, cpu.jobs) == (3.0, 0.5, 3)


def test_process_cpu_matches_the_m_d_1_queue() -> None:
    # Poisson arrivals at rate lam, fixed service d: the mean wait in queue is
    # rho * d / (2 * (1 - rho)) (Pollaczek-Khinchine), utilisation rho = lam * d.
    lam, d, n = 800.0, 0.001, 200_000
    arrivals = np.cumsum(np.random.default_rng(7).exponential(1 / lam, n))
    cpu = ProcessCpu()
    for t in arrivals.tolist():
        cpu.serve(t, d)
    rho = lam * d
    assert cpu.utilisation(float(arrivals[-1])) == pytest.approx(rho, rel=0.02)
    assert cpu.waited_s / n == pytest.approx(rho * d / (2 * (1 - rho)), rel=0.1)


def test_the_gateway_cpu_stage_adds_its_work_and_its_queueing() -> None:
    fast = DeviceSpec("fast", FAST)
    model = SimModel("m", max_batch_size=8)

    def latencies(stage: CpuStage, gap_s: float) -> list[float]:
        arrivals = [Arrival(i * gap_s, "m", 1, 10.0) for i in range(200)]
        scenario = Scenario(
            "cpu", [fast], [model], arrivals, 200 * gap_s, noise_sigma=0.0, gateway_cpu=stage
        )
        sim = Simulation(scenario, "predicted_finish_time")
        done = sim.run()
        assert all(r.outcome == "ok" for r in done)
        return [r.finished_at - r.arrived_at for r in sorted(done, key=lambda r: r.arrived_at)]

    # Light load, nothing queues anywhere: exactly the stage's work is added.
    base = latencies(CpuStage(), 0.05)
    staged = latencies(CpuStage(0.002, 0.001), 0.05)
    assert staged == pytest.approx([x + 0.003 for x in base], abs=1e-9)
    # Arrivals every 1 ms, 2 ms of CPU each: the CPU is the bottleneck, so the
    # n-th request (arriving at n ms) leaves the CPU at 2 ms * (n + 1): at least (n + 2) ms.
    queued = latencies(CpuStage(0.002, 0.0), 0.001)
    assert all(x >= (n + 2) * 1e-3 - 1e-9 for n, x in enumerate(queued))
    assert queued[-1] < 0.201 + 0.05  # and the GPU behind it adds little


def _late_share(sweep: bool) -> float:
    """gpu0000's share of the answers that arrived 20 s or more into a run
    where it stalled from 2 s to 6 s."""
    # Eight GPUs: on four, the others are busy enough that the slowed GPU's
    # honest estimate (eight times its usual) still wins some placements, and
    # it earns its way back without the sweep.
    sim = Simulation(
        build("stall", gpus=8, stall=True, duration_s=30.0, stale_sweep=sweep),
        "predicted_finish_time",
    )
    late = [r for r in sim.run() if r.arrived_at >= 20.0 and r.outcome == "ok"]
    return sum(r.backend == "gpu0000" for r in late) / len(late)


def test_the_stale_sweep_gives_a_recovered_gpu_its_work_back() -> None:
    # Without the sweep the estimate learnt in the stall bars the GPU for
    # good; the live dispatcher's sweep, run on the virtual clock, relaxes it.
    # (A trickle without it: a burst that finds the others busy still goes there.)
    assert _late_share(sweep=False) < 0.02
    assert _late_share(sweep=True) > 0.1


def test_sweeps_fall_at_whole_periods_from_the_live_schedulers_start() -> None:
    swept: list[float] = []
    sim = Simulation(build(duration_s=25.0, requests=10), "predicted_finish_time")
    sim.scenario = dataclasses.replace(sim.scenario, duration_s=25.0, sweep_phase_s=3.0)
    sim._sweep = lambda: swept.append(sim.clock.now())  # type: ignore[method-assign]
    sim.run()
    assert swept == [7.0, 17.0]


def test_a_device_runs_no_more_calls_of_a_model_at_once_than_its_instances() -> None:
    # A call the replica sends on hearing an answer used to start on the
    # instance that answer freed, beside the call that was waiting for it.
    scenario = build(gpus=2, duration_s=0.5, scale=1.0)
    sim = Simulation(scenario, "predicted_finish_time")
    start, over = sim._start, []

    def checked(device, call, replica, now):  # type: ignore[no-untyped-def]
        start(device, call, replica, now)
        if device.running[call.model] > device.spec.instances:
            over.append(call)

    sim._start = checked  # type: ignore[method-assign]
    sim.run()
    assert sim.devices["gpu0000"].calls > 100 and not over


def test_a_reply_on_its_way_back_leaves_the_device_free() -> None:
    """Two calls sent together to one device (the second waits in its FIFO,
    as a call sent ahead waits in Triton's queue): the device runs them back
    to back, and each answer reaches the gateway ``reply_s`` after the device
    is done with it, not a device turn later."""
    gpu = DeviceType("gpu", fixed_s=0.0096, per_row_s=0.0004)  # 10 ms a row
    model = SimModel("m", max_batch_size=1)
    arrivals = [Arrival(0.0, "m", 1, 10.0), Arrival(0.0, "m", 1, 10.0)]

    def run(reply_s: float) -> tuple[list[float], float]:
        spec = DeviceSpec("gpu", gpu, reply_s=reply_s)
        sim = Simulation(
            Scenario("reply", [spec], [model], arrivals, 0.1, noise_sigma=0.0), "round_robin"
        )
        done = sorted(r.finished_at for r in sim.run())
        return done, sim.devices["gpu"].occupied_s

    assert run(0.0) == (pytest.approx([0.010, 0.020]), pytest.approx(0.020))
    assert run(0.003) == (pytest.approx([0.013, 0.023]), pytest.approx(0.020))
