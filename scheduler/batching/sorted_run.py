"""A sorted sequence with cheap insertion, removal and removal of a prefix.

The batch queue keeps each group's items in queue order and mostly does four
things to it: insert anywhere (EDF), remove one item (a caller went away),
read the first few items, and remove the first few (a batch leaves). A
Python list does the last in one ``del`` but pays O(n) to insert; a heap
cannot give its first k items in order. ``SortedRun`` splits the sequence
into sorted chunks of at most ``2 * LOAD`` entries with their maxima in a
separate list (the layout of ``sortedcontainers.SortedList``, written here
without the positional index the queue does not need):

- ``add`` / ``remove``: bisect the maxima, then bisect and edit one chunk:
  O(log n + LOAD), the list edit being a memmove of at most ``2 * LOAD``
  pointers; a chunk that grows past ``2 * LOAD`` is split in two;
- ``take(k)``: whole leading chunks are dropped, and one slice of the next:
  O(k + n / LOAD) pointer moves, with no per-entry bookkeeping.

Entries must be totally ordered and distinct (the queue's carry a unique
sequence number before the item, so items are never compared).
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator
from typing import Any, Generic, Protocol, TypeVar


class _Ordered(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


E = TypeVar("E", bound=_Ordered)

#: Entries per chunk, halved and doubled as chunks split and empty.
LOAD = 256


class SortedRun(Generic[E]):
    """Distinct entries in ascending order (see the module docstring)."""

    __slots__ = ("_chunks", "_len", "_maxes")

    def __init__(self) -> None:
        self._chunks: list[list[E]] = []
        self._maxes: list[E] = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[E]:
        return itertools.chain.from_iterable(self._chunks)

    def first(self) -> E:
        return self._chunks[0][0]

    def head(self, count: int) -> list[E]:
        """The first ``count`` entries (fewer if there are not as many), left in place."""
        chunks = self._chunks
        if chunks and len(chunks[0]) >= count:
            return chunks[0][:count]  # one slice: the usual case, chunks hold up to 2 * LOAD
        return list(itertools.islice(self, count))

    def add(self, entry: E) -> None:
        chunks, maxes = self._chunks, self._maxes
        self._len += 1
        if not chunks:
            chunks.append([entry])
            maxes.append(entry)
            return
        at = bisect.bisect_left(maxes, entry)
        if at == len(maxes):  # past every maximum: the last chunk's new end
            at -= 1
            chunks[at].append(entry)
            maxes[at] = entry
        else:
            bisect.insort(chunks[at], entry)
        chunk = chunks[at]
        if len(chunk) > 2 * LOAD:
            tail = chunk[LOAD:]
            del chunk[LOAD:]
            chunks.insert(at + 1, tail)
            maxes[at] = chunk[-1]
            maxes.insert(at + 1, tail[-1])

    def remove(self, entry: E) -> None:
        """Remove ``entry``; ValueError if it is not here."""
        chunks, maxes = self._chunks, self._maxes
        at = bisect.bisect_left(maxes, entry)
        if at < len(chunks):
            chunk = chunks[at]
            where = bisect.bisect_left(chunk, entry)
            if where < len(chunk) and chunk[where] == entry:
                del chunk[where]
                self._len -= 1
                if not chunk:
                    del chunks[at]
                    del maxes[at]
                elif where == len(chunk):
                    maxes[at] = chunk[-1]
                return
        raise ValueError(f"{entry!r} is not in the run")

    def take(self, count: int) -> list[E]:
        """Remove and return the first ``count`` entries."""
        chunks, maxes = self._chunks, self._maxes
        taken: list[E] = []
        while count > 0 and chunks:
            chunk = chunks[0]
            if len(chunk) <= count:
                taken += chunk
                count -= len(chunk)
                del chunks[0]
                del maxes[0]
            else:
                taken += chunk[:count]
                del chunk[:count]
                count = 0
        self._len -= len(taken)
        return taken
