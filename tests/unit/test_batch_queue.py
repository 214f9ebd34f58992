"""scheduler.batching.queue and .policy: the pure batching decisions, on a hand-stepped clock."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from scheduler.batching.merge import shape_key
from scheduler.batching.policy import BatchingPolicy, QueuePolicy, policy_from_triton_config
from scheduler.batching.queue import IDLE_QUIET_S, BatchQueue, QueueItem
from scheduler.clock import ManualClock
from scheduler.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

KEY = "fp32x4"


def policy(**kw: object) -> BatchingPolicy:
    base = BatchingPolicy(max_batch_size=8, max_queue_delay_us=10_000)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def item(name: str, rows: int = 1, **kw: object) -> QueueItem[str]:
    return QueueItem(name, rows=rows, key=kw.pop("key", KEY), **kw)  # type: ignore[arg-type]


def names(batch: object) -> list[str]:
    assert batch is not None
    return [i.payload for i in batch.items]  # type: ignore[attr-defined]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(100.0)


def test_full_batch_leaves_at_once(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy())
    q.push(item("a", 3), clock.now())
    assert q.pop_batch(clock.now(), idle_capacity=False) is None
    q.push(item("b", 5), clock.now())
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "full" and batch.rows == 8
    assert names(batch) == ["a", "b"] and len(q) == 0


def test_next_item_that_cannot_fit_makes_the_batch_full(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy())
    q.push(item("a", 3), clock.now())
    q.push(item("b", 6), clock.now())
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "full" and names(batch) == ["a"]
    assert len(q) == 1


def test_preferred_size_cuts_the_longest_prefix(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(preferred_batch_sizes=(2, 4)))
    q.push(item("a"), clock.now())
    assert q.pop_batch(clock.now(), idle_capacity=False) is None
    for n in "bcd":
        q.push(item(n), clock.now())
    q.push(item("e", 3), clock.now())  # 1+1+1+1+3 = 7: longest preferred prefix is 4
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "preferred"
    assert names(batch) == ["a", "b", "c", "d"]


def test_delay_expiry_sends_what_is_queued(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy())
    q.push(item("a"), clock.now())
    clock.advance(0.004)
    q.push(item("b"), clock.now())
    assert q.next_wakeup(clock.now()) == pytest.approx(100.010)
    clock.advance(0.005)
    assert q.pop_batch(clock.now(), idle_capacity=False) is None
    clock.advance(0.001)
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "delay" and names(batch) == ["a", "b"]
    assert q.next_wakeup(clock.now()) is None


def test_deadline_trigger_uses_the_service_estimate(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(max_queue_delay_us=1_000_000))
    q.record_service(0.020)
    q.push(item("a", deadline=clock.now() + 0.050), clock.now())
    assert q.pop_batch(clock.now(), idle_capacity=False) is None
    assert q.next_wakeup(clock.now()) == pytest.approx(100.030)
    clock.advance(0.030)
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "deadline"


def test_idle_capacity_sends_once_arrivals_pause_not_after_the_delay(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(max_queue_delay_us=1_000_000))
    q.push(item("a"), clock.now())
    assert q.pop_batch(clock.now(), idle_capacity=False) is None
    # An idle backend waits only for the burst to end (IDLE_QUIET_S), not 1 s.
    assert q.pop_batch(clock.now(), idle_capacity=True) is None
    assert q.next_wakeup(clock.now(), idle=True) == pytest.approx(100.0 + IDLE_QUIET_S)
    clock.advance(IDLE_QUIET_S / 2)
    q.push(item("b"), clock.now())  # still arriving: keep gathering
    clock.advance(IDLE_QUIET_S * 0.75)
    assert q.pop_batch(clock.now(), idle_capacity=True) is None
    clock.advance(IDLE_QUIET_S * 0.3)
    batch = q.pop_batch(clock.now(), idle_capacity=True)
    assert batch is not None and batch.trigger == "idle" and names(batch) == ["a", "b"]


def test_without_a_delay_an_idle_backend_takes_work_at_once(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(max_queue_delay_us=0))
    q.push(item("a"), clock.now())
    batch = q.pop_batch(clock.now(), idle_capacity=True)
    assert batch is not None and names(batch) == ["a"]


def test_beyond_capacity_only_complete_batches_go_ahead(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(max_batch_size=2, max_queue_delay_us=0))
    q.push(item("a"), clock.now())
    assert q.pop_batch(clock.now(), idle_capacity=False, complete_only=True) is None
    q.push(item("b"), clock.now())
    batch = q.pop_batch(clock.now(), idle_capacity=False, complete_only=True)
    assert batch is not None and batch.trigger == "full" and names(batch) == ["a", "b"]


def test_priority_levels_then_earliest_deadline_first(clock: ManualClock) -> None:
    p = policy(priority_levels=3, default_priority_level=2, max_batch_size=1)
    q: BatchQueue[str] = BatchQueue(p)
    now = clock.now()
    q.push(item("default-late", deadline=now + 9), now)  # priority 0: level 2
    q.push(item("low", priority=3), now)  # no deadline: after every deadline of its level
    q.push(item("low-early", priority=3, deadline=now + 1), now)
    q.push(item("high-none", priority=1), now)
    q.push(item("default-early", priority=2, deadline=now + 5), now)
    q.push(item("out-of-range", priority=7, deadline=now + 7), now)  # -> default level
    q.push(item("high-soon", priority=1, deadline=now + 3), now)
    assert q.depth() == {1: 2, 2: 3, 3: 2}
    order = []
    while (batch := q.pop_batch(now, idle_capacity=True)) is not None:
        order += names(batch)
    assert order == [
        "high-soon",
        "high-none",
        "default-early",
        "out-of-range",
        "default-late",
        "low-early",
        "low",
    ]


def test_queue_full_sheds_with_a_retry_hint(clock: ManualClock) -> None:
    p = policy(default_queue_policy=QueuePolicy(max_queue_size=3))
    q: BatchQueue[str] = BatchQueue(p)
    for n in "abc":
        q.push(item(n), clock.now())
    with pytest.raises(ResourceExhausted) as caught:
        q.push(item("d"), clock.now())
    assert caught.value.retry_after_ms is not None and caught.value.retry_after_ms > 0
    q.record_service(2.0)  # slow batches: a longer hint
    with pytest.raises(ResourceExhausted) as slower:
        q.push(item("d"), clock.now())
    assert slower.value.retry_after_ms == 2000
    assert len(q) == 3


def test_rows_over_max_batch_size_are_refused(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy())
    with pytest.raises(InvalidArgument):
        q.push(item("huge", 9), clock.now())


def test_timeout_reject_vs_delay(clock: ManualClock) -> None:
    reject = QueuePolicy(default_timeout_us=5_000, allow_timeout_override=False)
    delay = dataclasses.replace(reject, timeout_action="delay")
    p = policy(
        priority_levels=2,
        max_queue_delay_us=1_000_000,
        level_queue_policies={1: reject, 2: delay},
    )
    q: BatchQueue[str] = BatchQueue(p)
    q.push(item("rejected", priority=1), clock.now())
    q.push(item("demoted", priority=2), clock.now())
    clock.advance(0.003)
    q.push(item("fresh", priority=2), clock.now())
    assert q.next_wakeup(clock.now()) == pytest.approx(100.005)
    clock.advance(0.002)
    expired = q.expire(clock.now())
    assert [(i.payload, type(e)) for i, e in expired] == [("rejected", DeadlineExceeded)]
    assert "queue policy of priority level 1" in str(expired[0][1])
    # "demoted" timed out with action delay: it waits on, behind "fresh".
    assert q.depth() == {1: 0, 2: 2}
    batch = q.pop_batch(clock.now(), idle_capacity=True)
    assert names(batch) == ["fresh", "demoted"]


def test_own_deadline_overrides_the_default_timeout_when_allowed(clock: ManualClock) -> None:
    p = policy(default_queue_policy=QueuePolicy(default_timeout_us=1_000))
    q: BatchQueue[str] = BatchQueue(p)
    q.push(item("own", deadline=clock.now() + 0.5), clock.now())
    q.push(item("default"), clock.now())
    clock.advance(0.002)
    assert [i.payload for i, _ in q.expire(clock.now())] == ["default"]
    clock.advance(0.5)
    assert [i.payload for i, _ in q.expire(clock.now())] == ["own"]


def test_cancelled_items_leave_before_dispatch(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy())
    a, b, c = item("a"), item("b"), item("c")
    for i in (a, b, c):
        q.push(i, clock.now())
    b.cancelled = True
    assert [i.payload for i in q.remove_cancelled()] == ["b"]
    assert q.remove(c) and not q.remove(c)
    clock.advance(IDLE_QUIET_S)
    batch = q.pop_batch(clock.now(), idle_capacity=True)
    assert names(batch) == ["a"] and len(q) == 0


def test_incompatible_shapes_are_never_merged(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(max_queue_delay_us=0))
    four = shape_key({"X": np.zeros((1, 4), np.float32)})
    five = shape_key({"X": np.zeros((2, 5), np.float32)})
    fp64 = shape_key({"X": np.zeros((1, 4), np.float64)})
    text = shape_key({"X": np.array([[b"a", b"bcd"]], dtype=object)})
    text2 = shape_key({"X": np.array([[b"xyzzy", b""]], dtype=object)})
    assert four != five and four != fp64 and text == text2 and text != four
    for name, key in [("f4a", four), ("f5", five), ("f4b", four), ("t1", text), ("d", fp64)]:
        q.push(item(name, key=key), clock.now())
    q.push(item("t2", key=text2), clock.now())
    batches = []
    while (batch := q.pop_batch(clock.now(), idle_capacity=False)) is not None:
        batches.append(names(batch))
    assert batches == [["f4a", "f4b"], ["f5"], ["t1", "t2"], ["d"]]


def test_a_due_group_is_not_held_behind_one_that_is_not(clock: ManualClock) -> None:
    q: BatchQueue[str] = BatchQueue(policy(preferred_batch_sizes=(2,)))
    q.push(item("head", key="A"), clock.now())
    q.push(item("b1", key="B"), clock.now())
    q.push(item("b2", key="B"), clock.now())
    batch = q.pop_batch(clock.now(), idle_capacity=False)
    assert batch is not None and batch.trigger == "preferred" and names(batch) == ["b1", "b2"]


TRITON_CONFIG = {
    "name": "gpu_sim",
    "platform": "",
    "backend": "python",
    "max_batch_size": 16,
    "input": [{"name": "INPUT", "data_type": "TYPE_FP32", "dims": ["4"]}],
    "dynamic_batching": {
        "preferred_batch_size": [4, 8, 32],
        "max_queue_delay_microseconds": "2500",
        "preserve_ordering": False,
        "priority_levels": "3",
        "default_priority_level": "2",
        "default_queue_policy": {
            "timeout_action": "REJECT",
            "default_timeout_microseconds": "0",
            "allow_timeout_override": False,
            "max_queue_size": "0",
        },
        "priority_queue_policy": {
            "1": {
                "timeout_action": "DELAY",
                "default_timeout_microseconds": "100000",
                "allow_timeout_override": True,
                "max_queue_size": "64",
            }
        },
    },
}


def test_policy_from_a_triton_config() -> None:
    p = policy_from_triton_config(TRITON_CONFIG, 16)
    assert p.enabled and p.max_batch_size == 16
    assert p.preferred_batch_sizes == (4, 8)  # 32 > max_batch_size is dropped
    assert p.max_queue_delay_us == 2500 and p.max_queue_delay_s == pytest.approx(0.0025)
    assert (p.priority_levels, p.default_priority_level) == (3, 2)
    assert p.level_of(0) == 2 and p.level_of(1) == 1 and p.level_of(4) == 2
    # Triton's max_queue_size 0 ("unbounded") keeps the gateway's finite bound.
    assert p.queue_policy(2) == QueuePolicy(
        max_queue_size=1024,
        default_timeout_us=0,
        timeout_action="reject",
        allow_timeout_override=False,
    )
    assert p.queue_policy(1) == QueuePolicy(
        max_queue_size=64,
        default_timeout_us=100_000,
        timeout_action="delay",
        allow_timeout_override=True,
    )


def test_policy_from_configs_without_dynamic_batching() -> None:
    plain = policy_from_triton_config({"name": "m", "max_batch_size": 8}, 8)
    assert plain.enabled and plain.max_queue_delay_us == 0 and plain.priority_levels == 1
    assert not policy_from_triton_config(TRITON_CONFIG, 0).enabled
    assert not policy_from_triton_config(TRITON_CONFIG, 16, layer="backend").enabled
    camel = policy_from_triton_config(
        {"dynamicBatching": {"maxQueueDelayMicroseconds": "7", "preferredBatchSize": [2]}}, 4
    )
    assert camel.max_queue_delay_us == 7 and camel.preferred_batch_sizes == (2,)


def test_bad_policies_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="preferred"):
        BatchingPolicy(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match="default_priority_level"):
        BatchingPolicy(priority_levels=2, default_priority_level=3)
    with pytest.raises(ValueError, match="max_queue_size"):
        QueuePolicy(max_queue_size=0)
