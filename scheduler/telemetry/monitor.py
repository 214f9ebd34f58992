"""The device monitor: polls telemetry providers in the background into immutable snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from scheduler.clock import Clock
from scheduler.telemetry.providers import TelemetryProvider
from scheduler.telemetry.snapshot import ProviderSample, TelemetrySnapshot

__all__ = ["DeviceMonitor", "ProviderError"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProviderError:
    """The last failure of one provider; ``current`` while its latest poll failed too."""

    provider: str
    message: str
    at: float
    current: bool


class DeviceMonitor:
    """Keeps a current ``TelemetrySnapshot`` of every device the providers can see.

    Every ``interval_s`` (after the previous poll ended) all providers are sampled
    concurrently, each on a worker thread (``asyncio.to_thread``) because NVML,
    HTTP and /proc reads block; ``now`` is read once from ``clock`` per poll and
    stamps every reading. Results are merged into a *new* snapshot that replaces
    the old one in a single assignment, so ``snapshot()`` never returns a
    half-merged state and a snapshot a reader holds never changes.

    Merging, per provider:
    - answered: its readings replace what it reported last time; devices and loads
      it no longer reports (a GPU gone, a backend removed) are dropped;
    - failed or slower than ``sample_timeout_s``: its previous readings stay with
      their old ``sampled_at``, so they age and readers that ask for a
      ``max_age_s`` see them as unknown, never as idle.
    A sample that times out keeps running on its thread (a thread cannot be
    killed); that provider is skipped until it returns, so a hung driver ties up
    one thread, not one per poll. Failures are logged when a provider starts and
    stops failing, not on every poll; ``errors()`` holds the last one per provider.
    """

    def __init__(
        self,
        providers: Sequence[TelemetryProvider],
        *,
        clock: Clock,
        interval_s: float = 1.0,
        sample_timeout_s: float = 2.0,
    ) -> None:
        names = [provider.name for provider in providers]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
        if interval_s <= 0 or sample_timeout_s <= 0:
            raise ValueError("interval_s and sample_timeout_s must be > 0")
        self._providers = tuple(providers)
        self._clock = clock
        self._interval_s = interval_s
        self._sample_timeout_s = sample_timeout_s
        self._snapshot = TelemetrySnapshot(taken_at=clock.now())
        self._owned_devices: dict[str, frozenset[str]] = {}
        self._owned_loads: dict[str, frozenset[str]] = {}
        self._errors: dict[str, ProviderError] = {}
        self._in_flight: dict[str, asyncio.Task[ProviderSample]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._poll_lock = asyncio.Lock()
        self._started = False
        self._closed = False

    def add_provider(self, provider: TelemetryProvider) -> None:
        """Watch one more source (a Triton endpoint discovered at run time)."""
        if any(p.name == provider.name for p in self._providers):
            raise ValueError(f"a provider named {provider.name!r} is already watched")
        self._providers = (*self._providers, provider)

    def remove_provider(self, name: str) -> None:
        """Stop watching a source; its readings leave the next snapshot."""
        kept = tuple(p for p in self._providers if p.name != name)
        for provider in self._providers:
            if provider.name == name:
                provider.close()
        self._providers = kept

    def snapshot(self) -> TelemetrySnapshot:
        """The latest snapshot (immutable; a later poll replaces it, never edits it)."""
        return self._snapshot

    def errors(self) -> Mapping[str, ProviderError]:
        """The last error of every provider that has failed, by provider name."""
        return MappingProxyType(dict(self._errors))

    @property
    def running(self) -> bool:
        return any(not task.done() for task in self._tasks)

    async def start(self) -> None:
        """Take a first snapshot (so readers never start blind), then poll in the background."""
        if self._started or self._closed:
            raise RuntimeError("DeviceMonitor.start() may be called once, before aclose()")
        self._started = True
        await self.poll_once()
        task = asyncio.create_task(self._run(), name="device-monitor")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop polling, abandon samples still running, close every provider. Idempotent."""
        self._closed = True
        tasks = [*self._tasks, *self._in_flight.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._in_flight.clear()
        for provider in self._providers:
            try:
                await asyncio.wait_for(asyncio.to_thread(provider.close), self._sample_timeout_s)
            except Exception as exc:  # closing: report and carry on with the others
                log.warning("telemetry: closing provider %s failed: %s", provider.name, exc)

    async def poll_once(self) -> TelemetrySnapshot:
        """Sample every provider once, publish and return the new snapshot."""
        async with self._poll_lock:
            now = self._clock.now()
            providers = self._providers  # may change while the samples run
            results = await asyncio.gather(*(self._sample(provider, now) for provider in providers))
            devices = dict(self._snapshot.devices)
            loads = dict(self._snapshot.loads)
            current = {provider.name for provider in self._providers}
            for gone in [name for name in self._owned_devices if name not in current]:
                for device_id in self._owned_devices.pop(gone):
                    devices.pop(device_id, None)
                for backend_id in self._owned_loads.pop(gone, ()):
                    loads.pop(backend_id, None)
            for provider, result in zip(providers, results, strict=True):
                if provider.name not in current:
                    continue
                name = provider.name
                if isinstance(result, Exception):
                    self._record_failure(name, result, now)
                    continue
                self._record_success(name)
                for device_id in self._owned_devices.get(name, ()):
                    devices.pop(device_id, None)
                for backend_id in self._owned_loads.get(name, ()):
                    loads.pop(backend_id, None)
                devices.update((device.device_id, device) for device in result.devices)
                loads.update((load.backend_id, load) for load in result.loads)
                self._owned_devices[name] = frozenset(d.device_id for d in result.devices)
                self._owned_loads[name] = frozenset(load.backend_id for load in result.loads)
            self._snapshot = TelemetrySnapshot(devices=devices, loads=loads, taken_at=now)
            return self._snapshot

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.poll_once()
            except Exception:
                # A bug here must not end polling: readers would keep a frozen snapshot.
                log.exception("telemetry: poll failed; keeping the previous snapshot")

    async def _sample(self, provider: TelemetryProvider, now: float) -> ProviderSample | Exception:
        name = provider.name
        previous = self._in_flight.get(name)
        if previous is not None:
            if not previous.done():
                return TimeoutError(
                    f"previous sample still running after {self._sample_timeout_s} s"
                )
            del self._in_flight[name]
        task = asyncio.create_task(asyncio.to_thread(provider.sample, now))
        # Registered before waiting, so aclose() finds it even if this poll is cancelled.
        self._in_flight[name] = task
        done, _ = await asyncio.wait({task}, timeout=self._sample_timeout_s)
        if not done:
            task.add_done_callback(_discard_late_result)
            return TimeoutError(f"sample took longer than {self._sample_timeout_s} s")
        del self._in_flight[name]
        error = task.exception()
        if error is None:
            return task.result()
        if isinstance(error, Exception):
            return error
        raise error

    def _record_failure(self, name: str, error: Exception, now: float) -> None:
        message = str(error) or type(error).__name__
        was_failing = name in self._errors and self._errors[name].current
        self._errors[name] = ProviderError(provider=name, message=message, at=now, current=True)
        if was_failing:
            log.debug("telemetry: provider %s still failing: %s", name, message)
        else:
            stale = len(self._owned_devices.get(name, ()))
            log.warning(
                "telemetry: provider %s failed: %s; its %d device(s) will go stale",
                name,
                message,
                stale,
            )

    def _record_success(self, name: str) -> None:
        last = self._errors.get(name)
        if last is not None and last.current:
            self._errors[name] = ProviderError(last.provider, last.message, last.at, current=False)
            log.info("telemetry: provider %s answering again", name)


def _discard_late_result(task: asyncio.Task[ProviderSample]) -> None:
    # The poll that started this sample gave up on it; fetch the outcome anyway so
    # asyncio does not report "exception was never retrieved".
    if not task.cancelled():
        with contextlib.suppress(BaseException):
            task.exception()
