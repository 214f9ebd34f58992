"""scheduler.shared_view: the leader's probes and telemetry reach the followers."""

from __future__ import annotations

from pathlib import Path

import pytest

from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.health import BreakerState
from scheduler.shared_view import SharedTelemetryProvider, SharedView
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.simulated import SimulatedGpu, SimulatedProvider
from tests.unit.test_scheduler import DOUBLE, TRIPLE, FakeBackend

CONFIG = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)


def _pair(tmp_path: Path) -> tuple[SharedView, SharedView]:
    path = tmp_path / "fleet.json"
    return SharedView(path, "leader"), SharedView(path, "follower")


async def test_the_followers_eject_and_readmit_as_the_leader_does(tmp_path: Path) -> None:
    clock = ManualClock()
    leader_view, follower_view = _pair(tmp_path)
    theirs, ours = FakeBackend("t", DOUBLE, clock=clock), FakeBackend("t", DOUBLE, clock=clock)
    leader = Scheduler([theirs], clock=clock, config=CONFIG, shared=leader_view)
    follower = Scheduler([ours], clock=clock, config=CONFIG, shared=follower_view)
    await leader.start()
    await follower.start()
    try:
        state = follower.fleet.get("t")
        assert state is not None and state.breaker.state is BreakerState.CLOSED
        starts = ours.starts

        theirs.up = False
        await leader.fleet.probe()  # the leader alone probes: it finds the backend down
        await leader._publish()
        await follower._follow()
        assert state.breaker.state is BreakerState.OPEN
        assert "the leader ejected it" in state.breaker.last_error
        assert ours.starts == starts  # the follower did not probe it itself

        theirs.up = True
        clock.advance(60)  # past the leader's backoff
        await leader.fleet.probe()
        await leader._publish()
        await follower._follow()
        assert state.breaker.state is BreakerState.CLOSED
        assert ours.starts == starts + 1  # re-read its models once, on readmission

        await follower._follow()  # nothing new published: nothing done
        assert ours.starts == starts + 1
    finally:
        await leader.aclose()
        await follower.aclose()


async def test_a_model_change_seen_by_the_leader_is_read_once_by_the_followers(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    leader_view, follower_view = _pair(tmp_path)
    theirs, ours = FakeBackend("t", DOUBLE, clock=clock), FakeBackend("t", DOUBLE, clock=clock)
    leader = Scheduler([theirs], clock=clock, config=CONFIG, shared=leader_view)
    follower = Scheduler([ours], clock=clock, config=CONFIG, shared=follower_view)
    await leader.start()
    await follower.start()
    try:
        starts = ours.starts
        await follower._follow()
        assert ours.starts == starts  # the same models as it read itself: nothing to do
        theirs.specs["triple"] = ours.specs["triple"] = TRIPLE  # loaded on the server
        await leader.fleet.rediscover()
        await leader._publish()
        await follower._follow()
        assert ours.starts == starts + 1
        assert [s.name for s in follower.models()] == ["double", "triple"]
    finally:
        await leader.aclose()
        await follower.aclose()


async def test_followers_see_the_leaders_telemetry_with_its_sample_times(tmp_path: Path) -> None:
    clock = ManualClock()
    leader_view, follower_view = _pair(tmp_path)
    gpu = SimulatedGpu("gpu0", memory_total_bytes=16 << 30, base_memory_used_bytes=3 << 30)
    monitor = DeviceMonitor([SimulatedProvider([gpu])], clock=clock, interval_s=3600)
    backend = FakeBackend("t", DOUBLE, clock=clock)
    leader = Scheduler([backend], clock=clock, config=CONFIG, monitor=monitor, shared=leader_view)
    await leader.start()
    try:
        clock.advance(2.5)
        await leader._publish()
        provider = SharedTelemetryProvider(follower_view)
        sample = provider.sample(clock.now())
    finally:
        await leader.aclose()
    (theirs,) = monitor.snapshot().devices.values()
    (shared,) = sample.devices
    assert shared == theirs  # every field, the original sampled_at included
    assert shared.age_s(clock.now()) == 2.5


def test_nothing_published_yet_is_an_error_the_monitor_keeps_as_unknown(tmp_path: Path) -> None:
    _, follower_view = _pair(tmp_path)
    with pytest.raises(RuntimeError, match="has not published"):
        SharedTelemetryProvider(follower_view).sample(0.0)
