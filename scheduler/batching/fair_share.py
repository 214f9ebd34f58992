"""Fair share between tenants at one priority level: start-time fair queueing tags.

The batch queue orders a level's items by a *rank* before their deadline
(``item.entry_of``); this module computes the rank. Without tenants every
item's tag is 0, so the order is the queue's plain EDF order.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Added to the rank of an item demoted by its queue timeout (action
#: ``delay``): it goes behind every item of its level that was not demoted,
#: and demoted items keep their fair order among themselves. Tags count rows
#: over shares (a share is at least 0.01, gateway/config.py), so they stay far
#: below this (2^60) for the life of any process, and a float keeps every tag
#: below 2^53 exact.
DEMOTED = float(1 << 60)


class FairShare:
    """Start-time fair queueing (SFQ) over rows, weighted by each tenant's share.

    Each queued item of a tenant gets a start tag ``S = max(V, F[tenant])``
    and moves the tenant's finish tag to ``F[tenant] = S + rows / share``
    (``share``: the tenant's configured weight, 1 by default, so backlogged
    tenants get rows in proportion to their shares); the queue
    serves a level in increasing ``S`` (ties by deadline, then arrival).
    ``V``, the virtual time, is the largest start tag of the items of the
    last batch that left (``served``: every item of a batch is in service at
    once), never moving back. Taking the batch's head instead would let ``V``
    stall whenever a light tenant's item heads every batch, while a heavy
    tenant's tags run ahead of it; a burst of the light tenant would then get
    tags below all of the heavy tenant's queued items and go first, whole.
    A tenant of share 1 that sends a burst of k one-row requests gets tags
    ``V, V+1, ... V+k-1``, while another tenant's request arriving behind that
    burst gets ``V`` (or its own finish tag, if later): backlogged tenants
    take turns, in proportion to their shares, whoever sent first or most. A tenant that was
    idle starts at ``V``, so it gains no credit from its idle time. The price:
    a tenant's own items keep their arrival order (their tags grow), so
    deadlines order only items with equal tags, and one tenant alone in the
    queue is served in arrival order.

    Cost: O(1) per item. The state is one float per tenant seen (tenants are
    configured, so bounded). Items without a tenant ("") all get tag 0.0 and
    do not move ``V``: with no tenants configured the order is exactly EDF.
    Pure: no clock and no I/O.
    """

    __slots__ = ("_finish", "virtual")

    def __init__(self) -> None:
        self._finish: dict[str, float] = {}
        self.virtual = 0.0

    def start_tag(self, tenant: str, rows: int, share: float = 1.0) -> float:
        """The start tag of a new item of ``tenant`` (weight ``share``) with ``rows`` rows."""
        if not tenant:
            return 0.0
        start = self._finish.get(tenant, 0.0)
        if start < self.virtual:
            start = self.virtual
        self._finish[tenant] = start + rows / share
        return start

    def served(self, ranks: Iterable[float]) -> None:
        """A batch whose items had ``ranks`` left the queue: advance ``V``
        (demoted items' ranks do not count). Without tenants every rank is 0
        or ``DEMOTED`` and ``V`` stays 0: ``ranks`` is not read."""
        if not self._finish:  # no tenant was ever seen
            return
        virtual = self.virtual
        for rank in ranks:
            if virtual < rank < DEMOTED:
                virtual = rank
        self.virtual = virtual


def rank_of(tag: float, delayed: bool) -> float:
    """An item's place within its level before deadline order (see ``DEMOTED``)."""
    return tag + DEMOTED if delayed else tag
