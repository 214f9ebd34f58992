"""The per-model batch queue: pure decisions about which requests form the next batch.

No asyncio and no clock: every method that needs the time is handed ``now``,
so the live batcher and the discrete-event simulator share this code.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from scheduler.batching import item as fields  # an entry's, read in C
from scheduler.batching.fair_share import FairShare
from scheduler.batching.groups import GroupIndex
from scheduler.batching.item import Batch, Entry, Moment, QueueItem, Step, Trigger, entry_of
from scheduler.batching.policy import BatchingPolicy
from scheduler.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted

__all__ = ["IDLE_QUIET_S", "Batch", "BatchQueue", "QueueItem", "Step", "Trigger"]

T = TypeVar("T")

_INF = math.inf
#: Idle backend: queued requests leave once none arrived for this long (capped by the delay).
IDLE_QUIET_S = 0.001
#: Weight of the newest sample in the service-time moving average.
_SERVICE_SMOOTHING = 0.2


class BatchQueue(Generic[T]):
    """Priority levels of EDF-ordered items, and the rules that cut batches from them.

    Order: level 1 first; within a level, tenants take turns by fair-share tag
    (``fair_share.FairShare``; every tag is 0 without tenants), then earliest deadline first,
    arrival order on ties; items whose queue timeout passed with action ``delay`` go behind the
    rest of their level. Items are grouped by ``key`` in that order; the group of the first item
    is considered first, so the most urgent request decides which shape is batched next, but a
    group further down that is due is not held back by an earlier one that is not.

    For a group, its *candidates* are its items in order while their rows fit in
    ``max_batch_size``; the first that does not fit ends the candidates (skipping it for smaller
    ones behind would starve large requests). The candidates leave as a batch when, checked in
    this order:

    - ``full``: they fill ``max_batch_size``, or the next item cannot fit;
    - ``preferred``: a prefix of them sums to a preferred size (the longest
      such prefix leaves);
    - ``deadline``: the earliest candidate deadline is within the estimated
      batch service time (an EWMA of ``record_service`` samples, 0 until one);
    - ``delay``: the oldest candidate has waited ``max_queue_delay_us``;
    - ``idle``: the caller says a backend has capacity now (work-conserving),
      and arrivals paused (see ``IDLE_QUIET_S`` and ``item.Moment``).

    Each level holds at most its ``max_queue_size`` items (cancelled ones
    count until removed). Cancelled items are never batched.

    How: nothing is rescanned per call. Items live in per-key sorted groups
    (``groups.GroupIndex``), which also finds the first due group; deadlines and queue timeouts
    sit in two min-heaps, so ``expire`` pops only what passed; cancelled items are set aside the
    moment they are marked; counts and rows per level are kept as items come and go. Push,
    remove and cancel cost O(log n); a batch leaving costs O(log n) plus its own items; a group
    with less than a batch of rows is recounted, O(max batch size), once per query after it
    changed. Heaps delete lazily: an entry is live while its item is still here under the same
    ``seq``; the stale ones are dropped as they surface (amortized O(log n) per item) and the
    heaps rebuilt when they hold four times more entries than items."""

    def __init__(self, policy: BatchingPolicy) -> None:
        self._policy = policy
        self._levels = range(1, policy.priority_levels + 1)
        self._count = dict.fromkeys(self._levels, 0)
        self._queue_policies = {n: policy.queue_policy(n) for n in self._levels}  # frozen; per push
        self._total = 0  # the counts summed: read per arrival (``len``) and per look
        self._rows = dict.fromkeys(self._levels, 0)
        self._index: GroupIndex[T] = GroupIndex(policy.max_batch_size, policy.preferred_batch_sizes)
        self._cancelled: dict[int, QueueItem[T]] = {}
        self._deadlines: list[tuple[float, int, QueueItem[T]]] = []
        self._timeouts: list[tuple[float, int, QueueItem[T]]] = []
        self._seq = itertools.count()
        self._fair = FairShare()
        self._delay_s = policy.max_queue_delay_s
        self._quiet_s = min(IDLE_QUIET_S, self._delay_s)
        self._service_s: float | None = None
        #: The last arrival or completion: callers whose batch finished soon send again.
        self._last_event_at = self._last_completion_at = -_INF

    # -- state -------------------------------------------------------------
    def group_rows(self, key: Hashable) -> int:
        """Rows queued under ``key`` (cancelled ones included until removed)."""
        group = self._index.group(key)
        return 0 if group is None else group.total

    def __len__(self) -> int:
        return self._total

    def depth(self) -> dict[int, int]:
        """Queued requests by priority level."""
        return dict(self._count)

    @property
    def policy(self) -> BatchingPolicy:
        return self._policy

    @property
    def service_estimate_s(self) -> float | None:
        return self._service_s

    def note_completion(self, now: float) -> None:
        """A batch finished: its callers may be about to send again (max() uncalled)."""
        self._last_event_at = now if now > self._last_event_at else self._last_event_at
        self._last_completion_at = now

    def record_service(self, seconds: float) -> None:
        """A batch's service time (dispatch to result); feeds deadlines and retry hints."""
        prev = self._service_s
        self._service_s = seconds if prev is None else prev + _SERVICE_SMOOTHING * (seconds - prev)

    def _moment(self, now: float, idle: bool) -> Moment:
        # tuple.__new__: a named tuple's __new__ is Python; one per pop and wake-up.
        return tuple.__new__(
            Moment,
            (
                now,
                idle,
                self._service_s or 0.0,
                self._delay_s,
                self._quiet_s,
                self._last_event_at,
                self._last_completion_at,
            ),
        )

    # -- in and out --------------------------------------------------------
    def push(self, item: QueueItem[T], now: float) -> None:
        """Queue ``item``; ResourceExhausted (with a retry hint) if its level is full."""
        policy = self._policy
        if not 1 <= item.rows <= policy.max_batch_size:
            raise InvalidArgument(
                f"a request of {item.rows} rows cannot be batched: max_batch_size is "
                f"{policy.max_batch_size}"
            )
        level = policy.level_of(item.priority)
        queue_policy = self._queue_policies[level]
        if self._count[level] >= queue_policy.max_queue_size:
            raise ResourceExhausted(
                f"the queue of priority level {level} is full "
                f"({queue_policy.max_queue_size} requests); retry later",
                retry_after_ms=self._retry_after_ms(level),
            )
        item.level = level
        item.enqueued_at = now
        item.seq = seq = next(self._seq)
        item.tag = self._fair.start_tag(item.tenant, item.rows, item.share)
        self._last_event_at = now
        if queue_policy.allow_timeout_override and item.deadline is not None:
            item.timeout_at = None  # the request's own deadline replaces the default
        elif queue_policy.default_timeout_us > 0:
            item.timeout_at = now + queue_policy.default_timeout_us / 1e6
        item._queue = self
        self._count[level] += 1
        self._total += 1
        self._rows[level] += item.rows
        self._file(item)
        if item.deadline is not None:
            heapq.heappush(self._deadlines, (item.deadline, seq, item))
        if item.timeout_at is not None and not item.delayed:
            heapq.heappush(self._timeouts, (item.timeout_at, seq, item))
        if len(self._deadlines) + len(self._timeouts) > 4 * self._total + 64:
            self._compact()

    def _file(self, item: QueueItem[T]) -> None:
        if item.cancelled:
            self._cancelled[item.seq] = item
            item.entry = entry_of(item)
        else:
            self._index.add(item)

    def _unfile(self, item: QueueItem[T]) -> None:
        if item.cancelled:
            del self._cancelled[item.seq]
        else:
            self._index.discard(item)

    def _gone(self, item: QueueItem[T]) -> None:
        """``item`` left (its heap entries go stale with it)."""
        item._queue = None
        item.entry = None  # the entry holds the item: no cycle left for the GC to find
        self._count[item.level] -= 1
        self._total -= 1
        self._rows[item.level] -= item.rows

    def _cancel_changed(self, item: QueueItem[T]) -> None:
        if item.cancelled:  # out of its group into the cancelled set
            self._index.discard(item)
        else:
            del self._cancelled[item.seq]
        self._file(item)

    def _compact(self) -> None:
        live = self._queued()
        self._deadlines = [(i.deadline, i.seq, i) for i in live if i.deadline is not None]
        self._timeouts = [
            (i.timeout_at, i.seq, i) for i in live if i.timeout_at is not None and not i.delayed
        ]
        heapq.heapify(self._deadlines)
        heapq.heapify(self._timeouts)

    def _queued(self) -> list[QueueItem[T]]:
        """Every item, cancelled ones included, in queue order."""
        entries = [e for group in self._index for e in group.entries()]
        entries.extend(i.entry for i in self._cancelled.values() if i.entry is not None)
        entries.sort()
        return [entry[5] for entry in entries]

    def _retry_after_ms(self, level: int) -> int:
        # Time to drain what is ahead at this level, a batch at a time (untimed: the delay).
        rows_ahead = sum(rows for lvl, rows in self._rows.items() if lvl <= level)
        batches = math.ceil(rows_ahead / self._policy.max_batch_size)
        per_batch_s = self._service_s or max(self._policy.max_queue_delay_s, 0.001)
        return max(1, math.ceil(batches * per_batch_s * 1000))

    def rows_ahead(self, priority: int) -> int:
        """Rows queued at ``priority``'s level and above: what a new request waits behind."""
        level, rows = self._policy.level_of(priority), self._rows
        return rows[1] if level == 1 else sum(n for lvl, n in rows.items() if lvl <= level)

    def remove(self, item: QueueItem[T]) -> bool:
        """Take ``item`` out (its caller went away); False if it already left."""
        if item._queue is not self:
            return False
        self._unfile(item)
        self._gone(item)
        return True

    def drain(self) -> list[QueueItem[T]]:
        """Take every item out, in queue order (the batcher is closing)."""
        items = self._queued()
        for item in items:
            self._gone(item)
        policy = self._policy
        self._index = GroupIndex(policy.max_batch_size, policy.preferred_batch_sizes)
        self._cancelled.clear()
        self._deadlines.clear()
        self._timeouts.clear()
        return items

    def remove_cancelled(self) -> list[QueueItem[T]]:
        """Drop every item marked ``cancelled``, before it can be dispatched."""
        if not self._cancelled:
            return []
        gone = sorted(self._cancelled.values(), key=lambda i: i.entry or ())
        self._cancelled.clear()
        for item in gone:
            self._gone(item)
        return gone

    def expire(self, now: float) -> list[tuple[QueueItem[T], DeadlineExceeded]]:
        """Remove items past their deadline or their reject-timeout; demote delay-timeouts."""
        deadlines, timeouts = self._deadlines, self._timeouts
        if (not deadlines or now < deadlines[0][0]) and (not timeouts or now < timeouts[0][0]):
            return []  # the common case: nothing passed since the last look
        out: list[tuple[Entry, QueueItem[T], DeadlineExceeded]] = []
        while deadlines and now >= deadlines[0][0]:
            _, seq, item = heapq.heappop(deadlines)
            if item._queue is self and item.seq == seq:
                waited_ms = (now - item.enqueued_at) * 1000
                error = DeadlineExceeded(
                    f"deadline exceeded after {waited_ms:.1f} ms in the batch queue"
                )
                out.append(self._expired(item, error))
        while timeouts and now >= timeouts[0][0]:
            _, seq, item = heapq.heappop(timeouts)
            if item._queue is not self or item.seq != seq or item.delayed:
                continue
            level = item.level
            policy = self._policy.queue_policy(level)
            if policy.timeout_action == "reject":
                waited_ms = (now - item.enqueued_at) * 1000
                error = DeadlineExceeded(
                    f"timed out after {waited_ms:.1f} ms in the batch queue (queue "
                    f"policy of priority level {level}: "
                    f"{policy.default_timeout_us} µs, action reject)"
                )
                out.append(self._expired(item, error))
            else:  # behind the rest of its level, from now on
                self._unfile(item)
                item.delayed = True
                self._file(item)
        out.sort(key=lambda found: found[0])  # queue order, as they stood
        return [(item, error) for _, item, error in out]

    def _expired(
        self, item: QueueItem[T], error: DeadlineExceeded
    ) -> tuple[Entry, QueueItem[T], DeadlineExceeded]:
        entry = item.entry
        assert entry is not None  # set when it was filed
        self._unfile(item)
        self._gone(item)
        return entry, item, error

    # -- batching decisions ------------------------------------------------
    def pop_batch(
        self, now: float, idle_capacity: bool, *, complete_only: bool = False
    ) -> Batch[T] | None:
        """The next batch to dispatch, removed from the queue, or None if nothing is due.

        ``complete_only``: only a batch that is full, of a preferred size, or
        due by its deadline (not by delay or idleness). Call ``expire(now)``
        first: this does not check timeouts.
        """
        moment = self._moment(now, idle_capacity)
        group = self._index.first_due(moment, complete_only=complete_only)
        if group is None:
            return None
        popped = self._index.pop(group, moment)
        assert popped is not None  # first_due found a rule that holds
        entries, trigger, rows = popped
        self._fair.served(map(fields.ENTRY_RANK, entries))  # read only with tenants
        # What _gone does, for the whole batch: counts and rows by runs of a level, found in C.
        items = list(map(fields.ENTRY_ITEM, entries))
        for item in items:
            item._queue = item.entry = None
        taken, start = len(items), 0
        while start < taken:
            level = entries[start][0]
            end = bisect.bisect_right(entries, level, start, key=fields.ENTRY_LEVEL)
            self._count[level] -= end - start
            if end - start < taken:  # levels mixed (entries are in level order): this run's rows
                rows = sum(map(fields.ENTRY_ROWS, entries[start:end]))
            self._rows[level] -= rows
            start = end
        self._total -= taken
        return tuple.__new__(Batch, (tuple(items), trigger))  # as in _moment

    def next_wakeup(self, now: float, *, triggers: bool = True, idle: bool = False) -> float | None:
        """When a timeout or a trigger next falls due; None if nothing will.

        ``triggers=False`` asks for timeouts only (the caller could not send
        a batch now anyway); ``idle=True`` adds when an idle backend would
        take the queue (see ``item.Moment.idle_release_at``).
        """
        due = self._live_front(self._deadlines)
        if (timeout := self._live_front(self._timeouts, True)) < due:  # min(), uncalled: per look
            due = timeout
        if triggers:
            moment = self._moment(now, idle)
            oldest, earliest = self._index.extremes()
            if oldest < _INF:
                due = min(due, oldest + self._delay_s)
                if idle:
                    due = min(due, moment.idle_release_at(oldest))
            due = min(due, earliest - moment.service_s)
        return None if due == _INF else due

    def _live_front(
        self, heap: list[tuple[float, int, QueueItem[T]]], timeouts: bool = False
    ) -> float:
        """The earliest live time in ``heap``, dropping the stale entries on top
        (a demoted item's queue timeout no longer counts)."""
        while heap:
            at, seq, item = heap[0]
            if item._queue is self and item.seq == seq and not (timeouts and item.delayed):
                return at
            heapq.heappop(heap)
        return _INF

    def step(self, now: float, *, in_flight: int, capacity: int, ahead: int) -> Step[T]:
        """One look at the queue by a batcher with ``in_flight`` batches running
        and room for ``capacity``: expire, drop the cancelled, cut what is due,
        and say when to look again.

        While fewer than ``capacity`` run, a backend is idle and any due batch
        leaves. Beyond that, up to ``ahead`` more may leave, but only batches
        that cannot grow any more (full or preferred size) or must leave for
        their deadline: a partial batch sent into a busy backend's own queue
        would only split the requests still arriving into smaller batches,
        while waiting here lets them join it. Busy, only timeouts can act
        before a batch finishes (which wakes the batcher), so the wake-up
        leaves the delay triggers out: waking for them would spin.
        """
        if not self._total:
            # Nothing queued (common under light load): nothing to expire, cut or wake for.
            return tuple.__new__(Step, ([], [], None))
        expired = self.expire(now)
        self.remove_cancelled()
        batches: list[Batch[T]] = []
        running = in_flight
        while running < capacity + ahead:
            idle = running < capacity
            batch = self.pop_batch(now, idle_capacity=idle, complete_only=not idle)
            if batch is None:
                break
            batches.append(batch)
            running += 1
        idle = running < capacity
        wake_at = self.next_wakeup(now, triggers=idle, idle=idle)
        return tuple.__new__(Step, (expired, batches, wake_at))  # as in _moment
