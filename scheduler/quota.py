"""Per-tenant admission: a rate and a concurrency quota for each caller.

Pure: no clock of its own and no I/O; ``now`` is passed in, so the live
gateway and a simulator share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scheduler.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class QuotaLimits:
    """One tenant's share: ``rate_per_s`` requests a second on average with
    bursts of ``burst`` (None: no rate limit), and at most ``max_concurrent``
    requests in the gateway at once (None: no limit)."""

    rate_per_s: float | None = None
    burst: int = 1
    max_concurrent: int | None = None


class TenantQuota:
    """A token bucket and an in-flight count for one tenant.

    The bucket holds up to ``burst`` tokens and refills at ``rate_per_s``; a
    request takes one, or is refused RESOURCE_EXHAUSTED with the time until
    the next token as its retry hint. A tenant that sends ten times its share
    is refused at the door, at no cost to the others: its excess never reaches
    the queues the other tenants wait in, so their latency does not grow with
    it. ``release`` ends a request admitted by ``acquire``.
    """

    __slots__ = ("_limits", "_name", "_tokens", "_updated_at", "in_flight")

    def __init__(self, name: str, limits: QuotaLimits, now: float) -> None:
        self._name = name
        self._limits = limits
        self._tokens = float(max(limits.burst, 1))
        self._updated_at = now
        self.in_flight = 0

    def acquire(self, now: float) -> None:
        limits = self._limits
        if limits.max_concurrent is not None and self.in_flight >= limits.max_concurrent:
            raise ResourceExhausted(
                f"tenant '{self._name}' has {self.in_flight} requests in flight, its limit; "
                "retry when one has finished",
                retry_after_ms=10,
            )
        rate = limits.rate_per_s
        if rate is not None:
            capacity = float(max(limits.burst, 1))
            tokens = min(capacity, self._tokens + (now - self._updated_at) * rate)
            self._updated_at = now
            if tokens < 1.0:
                self._tokens = tokens
                wait_ms = math.ceil((1.0 - tokens) / rate * 1000) if rate > 0 else 1000
                raise ResourceExhausted(
                    f"tenant '{self._name}' is over its rate of {rate:g} requests/s; retry later",
                    retry_after_ms=max(1, wait_ms),
                )
            self._tokens = tokens - 1.0
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
