"""The indexed BatchQueue against the straightforward reference model, over random
operation sequences (hypothesis): every answer, error message, wake-up time and
depth must be the same, to the last bit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scheduler.batching.policy import BatchingPolicy, QueuePolicy
from scheduler.batching.queue import BatchQueue, QueueItem
from scheduler.errors import GatewayError
from tests.unit.batch_queue_reference import ReferenceQueue, RefItem

KEYS = ("A", "B", "C")


@st.composite
def policies(draw: st.DrawFn) -> BatchingPolicy:
    max_batch = draw(st.integers(1, 8))
    levels = draw(st.integers(1, 3))
    queue_policies = st.builds(
        QueuePolicy,
        max_queue_size=st.sampled_from([1, 3, 8, 64]),
        default_timeout_us=st.sampled_from([0, 0, 1_500, 4_000]),
        timeout_action=st.sampled_from(["reject", "delay"]),
        allow_timeout_override=st.booleans(),
    )
    per_level = draw(st.dictionaries(st.integers(1, levels), queue_policies, max_size=levels))
    return BatchingPolicy(
        max_batch_size=max_batch,
        preferred_batch_sizes=tuple(
            sorted(draw(st.sets(st.integers(1, max_batch), max_size=min(3, max_batch))))
        ),
        max_queue_delay_us=draw(st.sampled_from([0, 700, 2_000, 5_000])),
        priority_levels=levels,
        default_priority_level=draw(st.integers(1, levels)),
        default_queue_policy=draw(queue_policies),
        level_queue_policies=per_level,
    )


@dataclass
class Pair:
    """The same workload, driven through both queues."""

    new: BatchQueue[int]
    ref: ReferenceQueue[int]
    keys: tuple[str, ...]
    now: float = 100.0
    items: list[tuple[QueueItem[int], RefItem[int]]] = field(default_factory=list)

    def outcome(self, call: Any) -> tuple[str, Any]:
        try:
            return "ok", call()
        except GatewayError as exc:
            return type(exc).__name__, (exc.message, getattr(exc, "retry_after_ms", None))


def payloads(batch: Any) -> Any:
    return None if batch is None else ([i.payload for i in batch.items], batch.trigger)


def errors(expired: Any) -> list[tuple[int, str]]:
    return [(item.payload, str(error)) for item, error in expired]


def new_delay(pair: Pair) -> float:
    return pair.ref._policy.max_queue_delay_s


OPS = st.sampled_from(
    [
        "push",
        "push",
        "push",
        "advance",
        "advance",
        "to_wakeup",
        "to_boundary",
        "pop",
        "pop",
        "expire",
        "cancel",
        "uncancel",
        "remove",
        "remove_cancelled",
        "wakeup",
        "service",
        "completion",
        "step",
        "drain",
    ]
)


def apply(pair: Pair, op: str, data: st.DataObject) -> None:
    new, ref = pair.new, pair.ref
    if op == "push":
        rows = data.draw(st.integers(1, 9), label="rows")  # 9 may exceed max_batch_size
        key = data.draw(st.sampled_from(pair.keys), label="key")
        priority = data.draw(st.integers(0, 4), label="priority")
        in_us = data.draw(st.none() | st.integers(-500, 9_000), label="deadline_in_us")
        deadline = None if in_us is None else pair.now + in_us * 1e-6
        payload = len(pair.items)
        a = QueueItem(payload, rows=rows, key=key, priority=priority, deadline=deadline)
        b = RefItem(payload, rows=rows, key=key, priority=priority, deadline=deadline)
        got = pair.outcome(lambda: new.push(a, pair.now))
        assert got == pair.outcome(lambda: ref.push(b, pair.now))
        if got[0] == "ok":
            pair.items.append((a, b))
    elif op == "advance":
        pair.now += data.draw(st.integers(0, 3_000), label="advance_us") * 1e-6
    elif op == "to_wakeup":  # land exactly on a threshold, where rounding would show
        wake = ref.next_wakeup(pair.now, triggers=True, idle=True)
        if wake is not None and wake > pair.now:
            pair.now = wake
    elif op == "to_boundary" and pair.items:
        # An item's deadline, queue timeout or delay expiry, exactly.
        _, b = data.draw(st.sampled_from(pair.items), label="item")
        delay_s = new_delay(pair)
        times = [b.deadline, b.timeout_at, b.enqueued_at + delay_s]
        later = [t for t in times if t is not None and t > pair.now]
        if later:
            pair.now = data.draw(st.sampled_from(later), label="boundary")
    elif op == "pop":
        idle = data.draw(st.booleans(), label="idle")
        complete_only = data.draw(st.booleans(), label="complete_only")
        got = payloads(new.pop_batch(pair.now, idle, complete_only=complete_only))
        assert got == payloads(ref.pop_batch(pair.now, idle, complete_only=complete_only))
    elif op == "expire":
        assert errors(new.expire(pair.now)) == errors(ref.expire(pair.now))
    elif op in ("cancel", "uncancel", "remove") and pair.items:
        a, b = data.draw(st.sampled_from(pair.items), label="item")
        if op == "remove":
            assert new.remove(a) == ref.remove(b)
        else:
            a.cancelled = b.cancelled = op == "cancel"
    elif op == "remove_cancelled":
        got = [i.payload for i in new.remove_cancelled()]
        assert got == [i.payload for i in ref.remove_cancelled()]
    elif op == "wakeup":
        triggers, idle = data.draw(st.booleans()), data.draw(st.booleans())
        got = new.next_wakeup(pair.now, triggers=triggers, idle=idle)
        assert got == ref.next_wakeup(pair.now, triggers=triggers, idle=idle)
    elif op == "service":
        seconds = data.draw(st.integers(0, 6_000), label="service_us") * 1e-6
        new.record_service(seconds)
        ref.record_service(seconds)
    elif op == "completion":
        new.note_completion(pair.now)
        ref.note_completion(pair.now)
    elif op == "step":
        in_flight = data.draw(st.integers(0, 3), label="in_flight")
        capacity = data.draw(st.integers(0, 3), label="capacity")
        step = new.step(pair.now, in_flight=in_flight, capacity=capacity, ahead=1)
        assert errors(step.expired) == errors(ref.expire(pair.now))
        ref.remove_cancelled()
        batches = []
        while in_flight + len(batches) < capacity + 1:
            idle = in_flight + len(batches) < capacity
            batch = ref.pop_batch(pair.now, idle_capacity=idle, complete_only=not idle)
            if batch is None:
                break
            batches.append(batch)
        assert [payloads(b) for b in step.batches] == [payloads(b) for b in batches]
        idle = in_flight + len(batches) < capacity
        assert step.wake_at == ref.next_wakeup(pair.now, triggers=idle, idle=idle)
    elif op == "drain":
        assert [i.payload for i in new.drain()] == [i.payload for i in ref.drain()]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies(), keys=st.integers(1, len(KEYS)), data=st.data())
def test_the_indexed_queue_behaves_as_the_reference_model(
    policy: BatchingPolicy, keys: int, data: st.DataObject
) -> None:
    pair = Pair(BatchQueue(policy), ReferenceQueue(policy), KEYS[:keys])
    for op in data.draw(st.lists(OPS, min_size=40, max_size=120), label="ops"):
        apply(pair, op, data)
        assert len(pair.new) == len(pair.ref)
        assert pair.new.depth() == pair.ref.depth()


@pytest.mark.parametrize("count", [300])
def test_many_items_many_keys_agree(count: int) -> None:
    """A larger, deterministic mix: hundreds of keys, so most groups hold one item."""
    import random

    rng = random.Random(7)
    policy = BatchingPolicy(
        max_batch_size=4,
        preferred_batch_sizes=(2,),
        max_queue_delay_us=2_000,
        priority_levels=2,
        default_queue_policy=QueuePolicy(max_queue_size=10_000, default_timeout_us=3_000),
    )
    pair = Pair(BatchQueue(policy), ReferenceQueue(policy), KEYS)
    for step in range(count * 4):
        pair.now += rng.randint(0, 400) * 1e-6
        if step % 4 != 3:
            key, rows = f"k{rng.randint(0, count)}", rng.randint(1, 3)
            deadline = pair.now + rng.randint(100, 20_000) * 1e-6 if rng.random() < 0.5 else None
            a = QueueItem(step, rows=rows, key=key, priority=rng.randint(0, 2), deadline=deadline)
            b = RefItem(step, rows=rows, key=key, priority=a.priority, deadline=deadline)
            pair.new.push(a, pair.now)
            pair.ref.push(b, pair.now)
        else:
            assert errors(pair.new.expire(pair.now)) == errors(pair.ref.expire(pair.now))
            idle = rng.random() < 0.5
            assert payloads(pair.new.pop_batch(pair.now, idle)) == payloads(
                pair.ref.pop_batch(pair.now, idle)
            )
            assert pair.new.next_wakeup(pair.now, idle=idle) == pair.ref.next_wakeup(
                pair.now, idle=idle
            )
        assert len(pair.new) == len(pair.ref)


def test_a_group_no_longer_due_is_due_again_later() -> None:
    """A group found deadline-due but not taken (a more urgent group went
    first) stops being due when the service estimate drops, and must be due
    again once time catches up: it goes back to waiting, it is not forgotten."""
    policy = BatchingPolicy(max_batch_size=8, max_queue_delay_us=1_000_000, priority_levels=2)
    pair = Pair(BatchQueue(policy), ReferenceQueue(policy), KEYS)
    for q in (pair.new, pair.ref):
        q.record_service(0.040)
    for payload, rows, priority, deadline in [(0, 1, 2, 100.050), (1, 8, 1, None)]:
        pair.new.push(
            QueueItem(payload, rows, "B" if payload == 0 else "C", priority, deadline), 100.0
        )
        pair.ref.push(
            RefItem(payload, rows, "B" if payload == 0 else "C", priority, deadline), 100.0
        )

    def pop(now: float) -> object:
        got = payloads(pair.new.pop_batch(now, False, complete_only=True))
        assert got == payloads(pair.ref.pop_batch(now, False, complete_only=True))
        return got

    assert pop(100.011) == ([1], "full")  # C first; B is deadline-due too, and waits
    for q in (pair.new, pair.ref):
        q.record_service(0.0)  # estimate 32 ms: B is due only from 100.018
    assert pop(100.011) is None
    assert pop(100.050 - 0.032) == ([0], "deadline")


def test_removing_the_head_of_a_full_group_reorders_the_groups() -> None:
    """Group A (full) is first by its head; once that head is cancelled, B,
    whose head is more urgent than A's next item, comes first."""
    policy = BatchingPolicy(max_batch_size=2, max_queue_delay_us=1_000_000)
    pair = Pair(BatchQueue(policy), ReferenceQueue(policy), KEYS)
    now = 100.0
    spec = [("A", 1.0), ("A", 5.0), ("A", 6.0), ("B", 3.0), ("B", 4.0)]
    for payload, (key, in_s) in enumerate(spec):
        a = QueueItem(payload, rows=1, key=key, deadline=now + in_s)
        b = RefItem(payload, rows=1, key=key, deadline=now + in_s)
        pair.new.push(a, now)
        pair.ref.push(b, now)
        pair.items.append((a, b))
    assert pair.new.next_wakeup(now) == pair.ref.next_wakeup(now)
    first_a, first_b = pair.items[0]
    first_a.cancelled = first_b.cancelled = True
    got = payloads(pair.new.pop_batch(now, False))
    assert got == payloads(pair.ref.pop_batch(now, False)) == ([3, 4], "full")
