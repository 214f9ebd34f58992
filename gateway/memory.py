"""Giving the memory of large requests back to the system once the gateway is idle.

After a spike of large requests the gateway's RSS stayed up until enough
new requests ran the collector (figures in
``loadtests/results/reliability.md``). Most of it was not free memory but
garbage in reference cycles: ``gc.get_referrers`` led from the frames of
finished requests (their bytes, their decoded arrays; in the runs examined,
requests that had failed or been retried) to exception tracebacks, kept
alive by other objects of the same cycle. Python's cyclic collector runs
only as new objects are allocated, so an idle gateway never collected them.
What the collector frees then sits in glibc's malloc arenas, which return
memory to the system only when a later free happens to shrink them.

``MemoryRelease`` counts the request bytes that passed through the gateway;
when at least ``after_bytes`` passed since the last release and no request
is in flight, it schedules one full ``gc.collect()`` followed by glibc's
``malloc_trim(0)`` (where the C library has it; elsewhere the collection
alone), at most once per ``min_interval_s``, and up to ``FOLLOW_UPS`` times
again, an interval apart, while a collection still finds garbage. Small requests only add to a
counter: a steady stream of them reaches ``after_bytes`` rarely, and then
costs one full collection per ``after_bytes`` served, at most one a second.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import math
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryRelease:
    """Collect and trim once idle after large traffic (see the module docstring)."""

    __slots__ = (
        "_follow_ups",
        "_last_at",
        "_passed",
        "_pending",
        "_trim",
        "after_bytes",
        "min_interval_s",
    )

    #: Looks again after a release that found garbage, at most this many times.
    FOLLOW_UPS = 2

    def __init__(self, after_bytes: int = 64 << 20, min_interval_s: float = 1.0) -> None:
        self.after_bytes = after_bytes
        self.min_interval_s = min_interval_s
        self._trim = _malloc_trim()
        self._passed = 0
        self._pending = False
        self._follow_ups = 0
        self._last_at = -math.inf

    def passed(self, size: int, idle: bool) -> None:
        """A request of ``size`` bytes ended; ``idle``: none is in flight now."""
        self._passed += size
        if idle and self._passed >= self.after_bytes and not self._pending:
            loop = asyncio.get_running_loop()
            # Later, not here: the last response is still to be sent.
            wait_s = max(0.05, self._last_at + self.min_interval_s - loop.time())
            self._pending = True
            self._follow_ups = self.FOLLOW_UPS
            loop.call_later(wait_s, self.release)

    def release(self) -> None:
        """Collect the cyclic garbage now and give free heap memory back."""
        self._pending = False
        self._passed = 0
        began = time.perf_counter()
        self._last_at = asyncio.get_running_loop().time()
        found = gc.collect()
        if self._trim is not None:
            self._trim(0)
        log.debug(
            "memory released: %d objects collected in %.1f ms",
            found,
            (time.perf_counter() - began) * 1e3,
        )
        if found and self._follow_ups > 0 and not self._pending:
            # What the last answers still held (a response being sent, its
            # request's frames) may become garbage only after this ran, and no
            # new request may come to schedule another: look again, later, a
            # bounded number of times (traffic that makes garbage all along
            # must not keep a full collection running every interval).
            self._follow_ups -= 1
            self._pending = True
            asyncio.get_running_loop().call_later(self.min_interval_s, self.release)
