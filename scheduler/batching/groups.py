"""The batch queue's index: items grouped by key, and which group is due, in O(log n).

``BatchQueue`` (queue.py) states the rules; this module finds, without
scanning the queue, the first group in queue order that a rule makes due.

Each group (one ``key``) keeps its live items in a ``SortedRun`` of entries
``(level, rank, deadline or inf, seq, rows, item)``: exactly the queue's order,
so a group's first entry is its most urgent item (its *head*) and the groups
in queue order are the groups ordered by head.

A group is *full* when its items' rows reach ``max_batch_size``: then its
candidates fill a batch or one of them does not fit, which is the ``full``
rule, so a full group is due whatever else is true of it. Its rows are kept
as items come and go, so that needs no scan. For the other groups (fewer rows
than a batch, so all their items are candidates) the rules read cached facts
— the longest preferred-size prefix, the earliest deadline, the oldest
enqueue time — recounted when the group changes. A full group's facts are
recounted only when asked for (``extremes``); an arrival that lands behind the
head of a full group changes nothing the heaps are keyed on and costs O(log n).

Due-ness has two kinds of cause. *Complete* (full, preferred) depends on
membership only: a min-heap by head holds the complete groups. *Timed*
(deadline, delay, idle) turns true as ``now`` grows past a threshold that
depends on one cached number: the earliest deadline (deadline rule) or the
oldest enqueue (delay and idle rules), and each rule is monotone in that
number, so the due groups under a timed rule are a prefix of the groups
ordered by it. Min-heaps hold the groups by that number ("waiting"); a query
moves the prefix that became due into a heap ordered by head ("due"), and the
answer is the smallest head among the complete heap and the due heaps. The
thresholds also move with values that can go down (the service estimate, the
idle flag), so an entry at the front of a due heap is checked again and sent
back to waiting if it no longer holds. The idle rule's other half — every
group is due once arrivals paused for the quiet time — makes the first group
in queue order the answer.

All heaps delete lazily: an entry carries the group's version (or, for the
wake-up heaps, its facts' stamp) at push, and the group gets a new one
whenever the entry's key may have changed; stale entries are dropped when
they surface, and the heaps are rebuilt when stale entries outnumber live
ones. Every check uses the same floating-point expression as the rules in
``BatchQueue``'s docstring, so the index and a straightforward scan agree to
the last bit (``tests/unit/test_batch_queue_model.py``).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Hashable, Iterable, Iterator
from itertools import accumulate
from typing import Any, Generic, Literal, TypeVar

from scheduler.batching.item import ENTRY_ROWS, Entry, Moment, QueueItem, Trigger, entry_of
from scheduler.batching.sorted_run import SortedRun

T = TypeVar("T")
_INF = math.inf


class Group(Generic[T]):
    """One key's items and the cached facts about its candidates."""

    __slots__ = (
        "count",
        "counted",
        "cut",
        "earliest_deadline",
        "full",
        "head",
        "items",
        "key",
        "oldest",
        "stamp",
        "total",
        "version",
    )

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.items: SortedRun[Entry] = SortedRun()
        self.version = -1  # of the entries keyed by head, and of the waiting ones
        self.stamp = -1  # of the wake-up entries (the facts below)
        self.total = 0  # rows of every item: kept as items come and go
        self.full = False
        self.counted = False  # count, cut, earliest_deadline, oldest are current
        self.count = self.cut = 0
        self.earliest_deadline = self.oldest = _INF
        self.head: Entry | None = None

    @property
    def complete(self) -> bool:
        return self.full or self.cut > 0

    def entries(self) -> Iterator[Entry]:
        return iter(self.items)


_Keyed = tuple[float, int, Group[Any]]
_Ordered = tuple[Entry, int, Group[Any]]


class GroupIndex(Generic[T]):
    """Groups by key, with heaps that find the first due group (module docstring)."""

    def __init__(self, max_batch_size: int, preferred_batch_sizes: Iterable[int]) -> None:
        self._limit = max_batch_size
        self._preferred = frozenset(preferred_batch_sizes)
        self._groups: dict[Hashable, Group[T]] = {}
        self._dirty: dict[Hashable, Group[T]] = {}
        self._uncounted: dict[Hashable, Group[T]] = {}
        self._versions = itertools.count()  # one counter: no two entries tie on it
        self._refreshes = 0  # since the heaps were last rebuilt
        self._by_head: list[_Ordered] = []
        self._complete: list[_Ordered] = []
        self._deadline_waiting: list[_Keyed] = []
        self._deadline_due: list[_Ordered] = []
        self._delay_waiting: list[_Keyed] = []
        self._delay_due: list[_Ordered] = []
        # For next_wakeup: never popped for due-ness, so their fronts are the minima.
        self._earliest: list[_Keyed] = []
        self._oldest: list[_Keyed] = []

    def group(self, key: Hashable) -> Group[T] | None:
        return self._groups.get(key)

    def __iter__(self) -> Iterator[Group[T]]:
        return iter(list(self._groups.values()))

    # -- membership ----------------------------------------------------------
    def add(self, item: QueueItem[T]) -> None:
        item.entry = entry = entry_of(item)
        group = self._groups.get(item.key)
        if group is None:
            group = self._groups[item.key] = Group(item.key)
        group.items.add(entry)
        group.total += item.rows
        if self._quiet(group, entry, group.total):
            self._facts_changed(group)
        else:
            self._dirty[item.key] = group

    def discard(self, item: QueueItem[T]) -> None:
        group = self._groups[item.key]
        entry = item.entry
        assert entry is not None  # set when it was added
        group.items.remove(entry)
        group.total -= item.rows
        if self._quiet(group, entry, group.total):
            self._facts_changed(group)
        else:
            self._dirty[item.key] = group

    def _quiet(self, group: Group[T], entry: Entry, total: int) -> bool:
        """Whether a change behind the head of a full group that stays full:
        it leaves head and completeness, the keys of its heap entries, alone."""
        head = group.head
        return (
            group.full
            and total >= self._limit
            and head is not None
            and entry > head
            and group.key not in self._dirty
        )

    def _facts_changed(self, group: Group[T]) -> None:
        # Its wake-up entries may be stale now; ``extremes`` recounts every
        # uncounted group (with a new stamp) before it reads those heaps.
        group.counted = False
        self._uncounted[group.key] = group

    def pop(self, group: Group[T], m: Moment) -> tuple[list[Entry], Trigger, int] | None:
        """Take out the entries of the group's candidates that leave now, and
        say why and how many rows they hold; None: none do. A full group's
        leave at once."""
        if group.full:
            # Rows are >= 1, so no more than max_batch_size items can fit; the
            # running sums and the cut are computed in C, not per item here.
            sums = list(accumulate(map(ENTRY_ROWS, group.items.head(self._limit))))
            count = bisect.bisect_right(sums, self._limit)
            trigger: Trigger = "full"
        else:
            decision = self.decide(group, m)
            if decision is None:
                return None
            count, trigger = decision
            sums = list(accumulate(map(ENTRY_ROWS, group.items.head(count))))
        rows = sums[count - 1]
        group.total -= rows
        self._dirty[group.key] = group
        return group.items.take(count), trigger, rows

    # -- cached facts ----------------------------------------------------------
    def _refresh(self) -> None:
        """Catch up with the groups that changed since the last query."""
        if not self._dirty:
            return
        for group in self._dirty.values():
            if not group.items:
                del self._groups[group.key]
                self._uncounted.pop(group.key, None)
                group.version = group.stamp = -1  # every entry of it is stale now
                continue
            group.version = version = next(self._versions)
            group.head = group.items.first()
            group.full = group.total >= self._limit
            ordered: _Ordered = (group.head, version, group)
            if group.full:  # complete, and only ever found as such
                group.cut = 0  # the full rule comes first: nothing else is read
                group.counted = False
                self._uncounted[group.key] = group
                heapq.heappush(self._complete, ordered)
            else:
                heapq.heappush(self._by_head, ordered)
                self._count(group)
                if group.cut:
                    heapq.heappush(self._complete, ordered)
                self._push_waiting(group)
        self._refreshes += len(self._dirty)
        self._dirty.clear()
        # Each refresh leaves up to six stale entries behind; rebuild before
        # they outnumber the live ones by much (amortized O(1) per refresh).
        if self._refreshes > 4 * len(self._groups) + 32:
            self._rebuild()

    def _count(self, group: Group[T]) -> None:
        """Count the candidates and their facts, and file the wake-up times."""
        limit, preferred = self._limit, self._preferred
        count = rows = cut = 0
        earliest = oldest = _INF
        for entry in group.items:
            if rows + entry[4] > limit:
                break  # the first item that does not fit ends the candidates
            rows += entry[4]
            count += 1
            if rows in preferred:
                cut = count
            if entry[2] < earliest:  # the deadline, inf for none
                earliest = entry[2]
            if entry[5].enqueued_at < oldest:
                oldest = entry[5].enqueued_at
        group.count, group.earliest_deadline, group.oldest = count, earliest, oldest
        if not group.full:
            group.cut = cut
        group.counted = True
        group.stamp = stamp = next(self._versions)
        self._uncounted.pop(group.key, None)
        if earliest < _INF:
            heapq.heappush(self._earliest, (earliest, stamp, group))
        heapq.heappush(self._oldest, (oldest, stamp, group))

    def _push_waiting(self, group: Group[T]) -> None:
        version = group.version
        if group.earliest_deadline < _INF:
            heapq.heappush(self._deadline_waiting, (group.earliest_deadline, version, group))
        heapq.heappush(self._delay_waiting, (group.oldest, version, group))

    def _rebuild(self) -> None:
        self._refreshes = 0
        for heap in (
            self._by_head,
            self._complete,
            self._deadline_waiting,
            self._deadline_due,
            self._delay_waiting,
            self._delay_due,
            self._earliest,
            self._oldest,
        ):
            heap.clear()
        for group in self._groups.values():
            assert group.head is not None  # every group here was refreshed
            ordered: _Ordered = (group.head, group.version, group)
            if not group.full:
                heapq.heappush(self._by_head, ordered)
            if group.complete:
                heapq.heappush(self._complete, ordered)
            if group.counted:
                stamp = group.stamp
                if group.earliest_deadline < _INF:
                    heapq.heappush(self._earliest, (group.earliest_deadline, stamp, group))
                heapq.heappush(self._oldest, (group.oldest, stamp, group))
            if not group.full:
                self._push_waiting(group)

    # -- queries ------------------------------------------------------------------
    def decide(self, group: Group[T], m: Moment) -> tuple[int, Trigger] | None:
        """How many of a group's candidates leave now, and why; None: wait.
        (Not for a full group: ``pop`` takes its candidates as it counts them.)"""
        if group.cut:
            return group.cut, "preferred"
        if m.deadline_due(group.earliest_deadline):
            return group.count, "deadline"
        if m.delay_due(group.oldest):
            return group.count, "delay"
        if m.idle_due(group.oldest):
            return group.count, "idle"
        return None

    def first_due(self, m: Moment, *, complete_only: bool) -> Group[T] | None:
        """The first group in queue order that a rule makes due now.

        ``complete_only``: only the complete and deadline rules count.
        """
        self._refresh()
        first = _front(self._complete)
        if not complete_only and m.all_idle_due:
            # Every group is due: the first of all (full ones are complete).
            other = _front(self._by_head)
            if other is not None and (first is None or _head(other) < _head(first)):
                first = other
            return first
        due = self._due(self._deadline_waiting, self._deadline_due, m.deadline_due, "deadline")
        if due is not None and (first is None or _head(due) < _head(first)):
            first = due
        if not complete_only:

            def delayed(oldest: float) -> bool:
                return m.delay_due(oldest) or m.idle_due(oldest)

            due = self._due(self._delay_waiting, self._delay_due, delayed, "oldest")
            if due is not None and (first is None or _head(due) < _head(first)):
                first = due
        return first

    def _due(
        self,
        waiting: list[_Keyed],
        due: list[_Ordered],
        holds: Any,
        attribute: Literal["deadline", "oldest"],
    ) -> Group[T] | None:
        # Move the prefix of waiting groups that became due...
        while waiting:
            value, version, group = waiting[0]
            if group.version != version:
                heapq.heappop(waiting)
            elif holds(value):
                heapq.heappop(waiting)
                heapq.heappush(due, (_head(group), version, group))
            else:
                break
        # ...then check the front of the due ones again: a threshold may have
        # moved back (a lower service estimate, no idle backend any more).
        while due:
            _, version, group = due[0]
            if group.version != version:
                heapq.heappop(due)
                continue
            value = group.earliest_deadline if attribute == "deadline" else group.oldest
            if holds(value):
                return group
            heapq.heappop(due)
            heapq.heappush(waiting, (value, version, group))
        return None

    def extremes(self) -> tuple[float, float]:
        """The oldest enqueue time and the earliest deadline over every
        group's candidates (inf where none)."""
        self._refresh()
        for group in list(self._uncounted.values()):
            self._count(group)
        return _front_value(self._oldest), _front_value(self._earliest)


def _head(group: Group[Any]) -> Entry:
    assert group.head is not None  # set when the group was first refreshed
    return group.head


def _front(heap: list[_Ordered]) -> Group[Any] | None:
    while heap:
        _, version, group = heap[0]
        if group.version == version:
            return group
        heapq.heappop(heap)
    return None


def _front_value(heap: list[_Keyed]) -> float:
    while heap:
        value, stamp, group = heap[0]
        if group.stamp == stamp:
            return value
        heapq.heappop(heap)
    return _INF
