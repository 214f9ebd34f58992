"""What the gateway holds at its front door: requests in flight, their bytes,
and whether it still takes new ones.

``FrontDoor.enter`` admits an inference request before it is decoded, and
``leave`` ends it: the gateway holds at most ``max_bytes_in_flight`` bytes of
requests (queued or running; past it, RESOURCE_EXHAUSTED with a hint), and
once ``close`` was called every new request is UNAVAILABLE, which callers may
retry elsewhere, while ``close`` waits for those inside to finish. The
servicer's streams register their wake-up events here so that ``close`` can
end them too (``streams``). Each request that leaves is counted by
``memory`` (``gateway.memory``), which gives large requests' memory back
once the gateway is idle.
"""

from __future__ import annotations

import asyncio
import contextlib

from gateway.memory import MemoryRelease
from scheduler.errors import ResourceExhausted, Unavailable

SHUTTING_DOWN = "the gateway is shutting down; retry, and another instance will serve"


class FrontDoor:
    """In-flight requests and bytes, and the closing state (see the module docstring)."""

    __slots__ = (
        "_idle",
        "bytes_in_flight",
        "closing",
        "in_flight",
        "max_bytes",
        "memory",
        "streams",
    )

    def __init__(
        self, max_bytes_in_flight: int = 1 << 30, memory: MemoryRelease | None = None
    ) -> None:
        self.max_bytes = max_bytes_in_flight
        self.memory = memory or MemoryRelease()
        self.bytes_in_flight = 0
        self.in_flight = 0
        #: Set by ``close``: new inference requests are answered UNAVAILABLE.
        self.closing = False
        #: The wake-up event of each open stream, so ``close`` can end them.
        self.streams: set[asyncio.Event] = set()
        self._idle = asyncio.Event()

    def enter(self, size: int) -> None:
        """Admit a request of ``size`` bytes, or raise why not."""
        if self.closing:
            raise Unavailable(SHUTTING_DOWN)
        held = self.bytes_in_flight
        if held + size > self.max_bytes and self.in_flight:
            raise ResourceExhausted(
                f"the gateway holds {held >> 20} MiB of requests, its limit; retry later",
                retry_after_ms=50,
            )
        self.bytes_in_flight = held + size
        self.in_flight += 1

    def leave(self, size: int) -> None:
        self.bytes_in_flight -= size
        self.in_flight -= 1
        self.memory.passed(size, idle=not self.in_flight)
        if not self.in_flight:
            self._idle.set()

    async def close(self, grace_s: float) -> None:
        """Refuse new requests and wait up to ``grace_s`` for those inside."""
        self.closing = True
        for wake in self.streams:  # open streams end UNAVAILABLE once idle
            wake.set()
        if self.in_flight:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
