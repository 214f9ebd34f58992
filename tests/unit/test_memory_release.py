"""gateway.memory.MemoryRelease: when it collects and trims (not how much it frees:
tests/integration/test_memory_return.py measures that on a real gateway)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from gateway.memory import MemoryRelease


def test_release_waits_for_enough_bytes_and_for_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda: collections.append(1) or 0)

    async def scenario() -> None:
        memory = MemoryRelease(after_bytes=100, min_interval_s=0.0)
        memory.passed(60, idle=True)  # idle, but too few bytes so far
        memory.passed(60, idle=False)  # enough bytes, but a request is in flight
        await asyncio.sleep(0.1)
        assert not collections
        memory.passed(1, idle=True)  # now both: one release, a moment later
        memory.passed(200, idle=True)  # already scheduled: not twice
        assert not collections
        await asyncio.sleep(0.2)
        assert len(collections) == 1
        memory.passed(99, idle=True)  # the count starts again after a release
        await asyncio.sleep(0.2)
        assert len(collections) == 1

    asyncio.run(scenario())


def test_releases_are_spaced_by_the_minimum_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    collections: list[float] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        monkeypatch.setattr(gc, "collect", lambda: collections.append(loop.time()) or 0)
        memory = MemoryRelease(after_bytes=1, min_interval_s=0.5)
        memory.passed(1, idle=True)
        await asyncio.sleep(0.2)
        memory.passed(1, idle=True)
        await asyncio.sleep(0.8)
        assert len(collections) == 2
        assert collections[1] - collections[0] >= 0.5

    asyncio.run(scenario())


def test_a_release_that_found_garbage_looks_again_a_bounded_number_of_times(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = [5, 5, 5, 5]  # every look finds garbage: the follow-ups still stop

    async def scenario() -> None:
        monkeypatch.setattr(gc, "collect", lambda: found.pop() if found else 0)
        memory = MemoryRelease(after_bytes=1, min_interval_s=0.05)
        memory.passed(1, idle=True)
        await asyncio.sleep(0.6)
        assert len(found) == 4 - 1 - MemoryRelease.FOLLOW_UPS
        found[:] = [0]  # a look that finds nothing ends the follow-ups at once
        memory.passed(1, idle=True)
        await asyncio.sleep(0.3)
        assert found == []

    asyncio.run(scenario())
