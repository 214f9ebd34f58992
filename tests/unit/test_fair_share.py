"""scheduler.batching.fair_share and the batch queue's order between tenants at
one priority level: a tenant's burst does not sit ahead of another tenant."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from gateway.config import TenantSettings
from gateway.security import Authenticator
from scheduler.batching.fair_share import DEMOTED, FairShare, rank_of
from scheduler.batching.policy import BatchingPolicy, QueuePolicy
from scheduler.batching.queue import BatchQueue, QueueItem
from scheduler.clock import MonotonicClock

NOW = 100.0


def _item(
    name: str, tenant: str = "", rows: int = 1, deadline: float | None = None, share: float = 1.0
) -> QueueItem[str]:
    return QueueItem(name, rows=rows, key="k", deadline=deadline, tenant=tenant, share=share)


def _drain(queue: BatchQueue[str], now: float = NOW) -> list[list[str]]:
    batches = []
    while (batch := queue.pop_batch(now, idle_capacity=True)) is not None:
        batches.append([i.payload for i in batch.items])
    return batches


def test_tags_take_turns_a_row_at_a_time() -> None:
    fair = FairShare()
    assert [fair.start_tag("noisy", 1) for _ in range(4)] == [0.0, 1.0, 2.0, 3.0]
    assert fair.start_tag("quiet", 2) == 0.0  # a newcomer starts at V, ahead of the burst
    assert fair.start_tag("quiet", 1) == 2.0
    assert fair.start_tag("", 5) == 0.0  # no tenant: no tag, no state
    fair.served([0.0, 2.0, 1.0])  # a batch's largest tag
    assert fair.virtual == 2.0
    fair.served([1.0])  # V never moves back
    fair.served([DEMOTED + 7])  # nor follows a demoted item
    assert fair.virtual == 2.0
    # An idle tenant gains no credit: it starts at V, not at its old finish tag.
    assert fair.start_tag("idle", 1) == 2.0
    assert rank_of(3.0, False) == 3.0 and rank_of(3.0, True) > rank_of(1e12, False)


def test_a_burst_does_not_sit_ahead_of_another_tenant() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=4))
    for n in range(8):  # noisy's burst arrives first, with the earlier deadlines
        queue.push(_item(f"n{n}", "noisy", deadline=NOW + 5 + n * 0.001), NOW)
    for q in range(2):
        queue.push(_item(f"q{q}", "quiet", deadline=NOW + 5.1), NOW)
    assert _drain(queue) == [["n0", "q0", "n1", "q1"], ["n2", "n3", "n4", "n5"], ["n6", "n7"]]


def test_a_tenant_arriving_behind_a_backlog_starts_at_the_virtual_time() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=2))
    for n in range(6):
        queue.push(_item(f"n{n}", "noisy"), NOW)
    assert _drain_one(queue) == ["n0", "n1"]
    assert _drain_one(queue) == ["n2", "n3"]  # V is now 3, that batch's largest tag
    queue.push(_item("q0", "quiet"), NOW)  # tag 3 (V), ahead of n4 (tag 4)
    queue.push(_item("q1", "quiet"), NOW)  # tag 4: level with n4, behind it by arrival
    assert _drain(queue) == [["q0", "n4"], ["q1", "n5"]]


def test_a_light_tenant_heading_every_batch_does_not_hold_back_virtual_time() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=4))
    for turn in range(10):  # noisy sends 1 a batch, quiet 3: noisy's item heads each
        queue.push(_item(f"n{turn}", "noisy"), NOW)
        for c in range(3):
            queue.push(_item(f"q{turn}.{c}", "quiet"), NOW)
        assert _drain_one(queue)[0] == f"n{turn}"
    # Then a burst of noisy's: its tags start where quiet's are, not 20 rows
    # behind them, so quiet's next request does not wait behind all of it.
    for n in range(8):
        queue.push(_item(f"b{n}", "noisy"), NOW)
    queue.push(_item("q-next", "quiet"), NOW)
    assert "q-next" in _drain_one(queue)


def _drain_one(queue: BatchQueue[str]) -> list[str]:
    batch = queue.pop_batch(NOW, idle_capacity=True)
    assert batch is not None
    return [i.payload for i in batch.items]


def test_rows_count_towards_the_share() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=4))
    queue.push(_item("big0", "a", rows=3), NOW)  # tags 0, 3
    queue.push(_item("big1", "a", rows=3), NOW)
    for q in range(4):  # tags 0, 1, 2, 3
        queue.push(_item(f"s{q}", "b"), NOW)
    # a's 3-row item counts as 3 turns: b's s1 and s2 go before big1.
    assert _drain(queue) == [["big0", "s0"], ["s1", "s2"], ["big1", "s3"]]


def test_backlogged_tenants_get_rows_in_proportion_to_their_shares() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=4))
    for n in range(8):  # the light tenant (share 1) sends its burst first
        queue.push(_item(f"n{n}", "noisy", share=1.0), NOW)
    for n in range(8):  # the tenant with share 3 gets three rows to the other's one
        queue.push(_item(f"q{n}", "quiet", share=3.0), NOW)
    batches = _drain(queue)
    assert [sum(name.startswith("q") for name in batch) for batch in batches[:2]] == [3, 3]
    assert sorted(name for batch in batches for name in batch) == sorted(
        [f"n{n}" for n in range(8)] + [f"q{n}" for n in range(8)]
    )


def test_without_tenants_the_order_is_earliest_deadline_first() -> None:
    queue: BatchQueue[str] = BatchQueue(BatchingPolicy(max_batch_size=2))
    for name, deadline in (("late", NOW + 9), ("none", None), ("soon", NOW + 1), ("mid", NOW + 5)):
        queue.push(_item(name, deadline=deadline), NOW)
    assert _drain(queue) == [["soon", "mid"], ["late", "none"]]


def test_within_one_tenant_equal_tags_keep_deadline_order_and_demoted_go_last() -> None:
    delay = QueuePolicy(timeout_action="delay", default_timeout_us=1000)
    queue: BatchQueue[str] = BatchQueue(
        BatchingPolicy(max_batch_size=8, default_queue_policy=delay)
    )
    queue.push(_item("old", "a"), NOW)  # its queue timeout passes: demoted
    queue.expire(NOW + 0.002)
    queue.push(_item("b-late", "b", deadline=NOW + 9), NOW + 0.002)
    queue.push(_item("c-soon", "c", deadline=NOW + 1), NOW + 0.002)
    # b and c both start at V (0): the earlier deadline first; a's demoted item last.
    assert _drain(queue, NOW + 0.002) == [["c-soon", "b-late", "old"]]


def test_a_tenants_share_comes_from_its_settings() -> None:
    auth = Authenticator(
        {"quiet": TenantSettings(api_keys=["q-key"], share=3), "noisy": TenantSettings()},
        MonotonicClock(),
    )
    assert auth.identify([("x-api-key", "q-key")], {}).share == 3.0
    with pytest.raises(ValidationError, match="share"):
        TenantSettings(share=0)
