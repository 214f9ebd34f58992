"""The fleet: every backend with its tier, circuit breaker and in-flight work,
kept healthy by probing and kept current by DNS re-resolution."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterator

from scheduler.backends.base import Backend
from scheduler.clock import Clock
from scheduler.discovery import DnsEndpointGroup
from scheduler.errors import GatewayError
from scheduler.health import BreakerConfig, BreakerState, CircuitBreaker
from scheduler.placement import Tier

log = logging.getLogger(__name__)

#: Status codes that say something about the request or its caller, not the backend.
_NOT_THE_BACKENDS_FAULT = frozenset(
    {"INVALID_ARGUMENT", "NOT_FOUND", "CANCELLED", "UNIMPLEMENTED", "DEADLINE_EXCEEDED"}
)

#: Builds a backend for a target (``host:port``) that DNS discovery found.
BackendFactory = Callable[[str], Backend]


class CallsInFlight:
    """The calls in flight on one backend, and their predicted seconds, per model.

    A missing model reads as 0. ``start`` counts a call in and ``end`` counts
    it out, each with one read and one write per counter and one notification
    to ``watch`` (model, change in calls, seconds in flight now): the
    placement tables mirror both counters into their arrays (queued work per
    row, calls per backend against the cap) as they change, in one hook a
    call placed and one a call ended, so a decision never walks the backends
    to add them up.
    """

    __slots__ = ("_calls", "_seconds", "watch")

    def __init__(self) -> None:
        self._calls: dict[str, int] = {}
        self._seconds: dict[str, float] = {}
        self.watch: Callable[[str, int, float], None] | None = None

    def calls(self, model: str) -> int:
        return self._calls.get(model, 0)

    def seconds(self, model: str) -> float:
        """Predicted seconds of work in flight (for queue estimates)."""
        return self._seconds.get(model, 0.0)

    def total(self) -> int:
        """Calls in flight, all models together."""
        return sum(self._calls.values())

    def start(self, model: str, seconds: float) -> tuple[int, float]:
        """Count in a call predicted to take ``seconds``; the calls and the
        seconds of ``model`` that were in flight here before it."""
        calls = self._calls.get(model, 0)
        busy = self._seconds.get(model, 0.0)
        self._calls[model] = calls + 1
        self._seconds[model] = now = busy + seconds
        if self.watch is not None:
            self.watch(model, 1, now)
        return calls, busy

    def end(self, model: str, seconds: float) -> None:
        """Count out a call that ``start`` counted in with ``seconds``
        (the seconds never go below 0: rounding)."""
        self._calls[model] = self._calls.get(model, 0) - 1
        now = self._seconds.get(model, 0.0) - seconds
        if now < 0.0:
            now = 0.0
        self._seconds[model] = now
        if self.watch is not None:
            self.watch(model, -1, now)

    def set(self, model: str, calls: int, seconds: float) -> None:
        """Put both counters of ``model`` at these values (tests, benchmarks)."""
        change = calls - self._calls.get(model, 0)
        self._calls[model] = calls
        self._seconds[model] = seconds
        if self.watch is not None:
            self.watch(model, change, seconds)

    def __repr__(self) -> str:
        return f"CallsInFlight(calls={self._calls!r}, seconds={self._seconds!r})"


class BackendState:
    """One backend as the scheduler tracks it.

    ``discovered`` and ``drained`` are properties: a change calls ``watch``
    (as the breaker's ``on_change`` does), which keeps the placement tables'
    availability column current without scanning the fleet per decision.
    """

    __slots__ = (
        "_discovered",
        "_drained",
        "backend",
        "breaker",
        "group",
        "id",
        "load",
        "order",
        "tier",
        "watch",
    )

    def __init__(
        self,
        backend: Backend,
        tier: Tier,
        breaker: CircuitBreaker,
        order: int,
        discovered: bool = False,
        drained: bool = False,
        group: str = "",
    ) -> None:
        self.backend = backend
        #: The backend's id, read once: it is fixed for the backend's life (the
        #: fleet is keyed by it), and the hot path reads it several times a call.
        self.id: str = backend.id
        self.tier = tier
        self.breaker = breaker
        self.order = order
        self._discovered = discovered  # discovery succeeded at least once
        self._drained = drained  # an operator took it out of rotation
        #: Calls in flight here, and their predicted seconds, per model.
        self.load = CallsInFlight()
        self.group = group  # the DNS name that brought it, if any
        self.watch: Callable[[BackendState], None] | None = None

    @property
    def discovered(self) -> bool:
        return self._discovered

    @discovered.setter
    def discovered(self, value: bool) -> None:
        self._discovered = value
        self._changed()

    @property
    def drained(self) -> bool:
        return self._drained

    @drained.setter
    def drained(self, value: bool) -> None:
        self._drained = value
        self._changed()

    @property
    def in_flight(self) -> int:
        """Calls in flight here, all models together."""
        return self.load.total()

    def usable(self, now: float) -> bool:
        return now >= self.available_from()

    def available_from(self) -> float:
        """The earliest ``now`` at which this backend takes work (see
        ``CircuitBreaker.available_from``); +inf while undiscovered or drained."""
        if not self._discovered or self._drained:
            return math.inf
        return self.breaker.available_from()

    def _changed(self) -> None:
        if self.watch is not None:
            self.watch(self)


class Fleet:
    """Backends by id, in registration order, with their health.

    Health is passive and active. Call outcomes feed each backend's circuit
    breaker (``record_*``). ``probe`` runs on a timer: it asks each backend
    whose breaker admits a trial (closed, or open with its backoff served),
    all concurrently and each within ``probe_timeout_s``, whether it is
    ready, discovers its models if it never has, and records the result, so
    an ejected backend is readmitted only after it answers. DNS
    groups are re-resolved by ``refresh_dns``; new addresses become backends
    (built by ``factory``), vanished ones are removed.
    """

    def __init__(
        self,
        backends: list[Backend],
        *,
        clock: Clock,
        tier_of: Callable[[Backend], Tier],
        breaker: BreakerConfig | None = None,
        dns_groups: list[DnsEndpointGroup] | None = None,
        factory: BackendFactory | None = None,
        probe_timeout_s: float = 1.0,
    ) -> None:
        self._clock = clock
        self._probe_timeout_s = probe_timeout_s
        self._tier_of = tier_of
        self._breaker_config = breaker or BreakerConfig()
        self._states: dict[str, BackendState] = {}
        self._next_order = 0
        self._dns_groups = dns_groups or []
        self._factory = factory
        self.on_change: list[Callable[[], None]] = []
        self.on_added: list[Callable[[Backend], None]] = []
        self.on_removed: list[Callable[[Backend], None]] = []
        for backend in backends:
            self._add(backend)

    def _add(self, backend: Backend, group: str = "") -> BackendState:
        if backend.id in self._states:
            raise ValueError(f"backend ids must be unique: {backend.id!r} twice")
        state = BackendState(
            backend, self._tier_of(backend), CircuitBreaker(self._breaker_config), self._next_order
        )
        state.group = group
        self._next_order += 1
        self._states[backend.id] = state
        return state

    def __iter__(self) -> Iterator[BackendState]:
        return iter(list(self._states.values()))

    def get(self, backend_id: str) -> BackendState | None:
        return self._states.get(backend_id)

    def backends(self) -> list[Backend]:
        return [s.backend for s in self._states.values()]

    def _changed(self) -> None:
        for callback in self.on_change:
            callback()

    def changed(self) -> None:
        """Tell the listeners that health or models changed (for state applied from outside)."""
        self._changed()

    async def rediscover_one(self, state: BackendState) -> bool:
        """Re-read one backend's models; False (and the breaker open) if it is unreachable."""
        return await self._start(state)

    # -- start, probe, discover ---------------------------------------------
    async def start(self) -> None:
        await self.refresh_dns()
        await asyncio.gather(*(self._start(s) for s in self))
        self._changed()

    async def _start(self, state: BackendState) -> bool:
        try:
            await state.backend.start()
        except GatewayError as exc:
            state.breaker.record_failure(self._clock.now(), exc.message, fatal=True)
            log.warning("backend %s is not available: %s", state.id, exc.message)
            return False
        state.discovered = True
        return True

    async def probe(self) -> None:
        """Probe every backend whose breaker admits a trial, all at once, each
        bounded by ``probe_timeout_s``: one hung backend neither delays the
        verdict on the others nor keeps its own for more than that."""
        outcomes = await asyncio.gather(*(self._probe_one(s) for s in self))
        if any(outcomes):
            self._changed()

    async def _probe_one(self, state: BackendState) -> bool:
        """Probe one backend; whether its availability changed."""
        now = self._clock.now()
        was = state.breaker.state
        if not state.breaker.allows(now):
            return False
        changed = False
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                ok = await state.backend.health()
        except TimeoutError:
            ok = False
        if ok and (not state.discovered or was is not BreakerState.CLOSED):
            ok = await self._start(state)  # models may have changed while away
            changed = ok
        if ok:
            state.breaker.record_success()
            if was is not BreakerState.CLOSED:
                log.info("backend %s is healthy again", state.id)
                changed = True
        else:
            state.breaker.record_failure(self._clock.now(), "health probe failed", fatal=True)
            if was is BreakerState.CLOSED:
                log.warning("backend %s ejected: its health probe failed", state.id)
                changed = True
        return changed

    async def rediscover(self) -> None:
        """Re-read the models of every healthy backend (models load and unload)."""
        for state in self:
            if state.breaker.state is BreakerState.CLOSED and state.discovered:
                await self._start(state)
        self._changed()

    async def refresh_dns(self) -> None:
        if not self._dns_groups or self._factory is None:
            return
        changed = False
        for group in self._dns_groups:
            change = await group.refresh()
            for target in change.added:
                backend = self._factory(target)
                if backend.id in self._states:
                    # Another endpoint (static, or another name) already reaches
                    # this address: one backend, not two, and no failed start.
                    log.warning(
                        "dns:///%s resolves to %s, already a backend; not added twice",
                        group.name,
                        target,
                    )
                    await backend.aclose()
                    continue
                state = self._add(backend, group=group.name)
                for callback in self.on_added:
                    callback(state.backend)
                changed = True
            for target in change.removed:
                for state in [s for s in self if s.group == group.name]:
                    if state.backend.endpoint == target:
                        await self.remove(state.id)
                        changed = True
        if changed:
            # New members are discovered by the next probe, not inline.
            self._changed()

    async def remove(self, backend_id: str) -> None:
        state = self._states.pop(backend_id, None)
        if state is None:
            return
        for callback in self.on_removed:
            callback(state.backend)
        with contextlib.suppress(Exception):
            await state.backend.aclose()
        self._changed()

    async def aclose(self) -> None:
        await asyncio.gather(*(s.backend.aclose() for s in self), return_exceptions=True)

    # -- call outcomes ------------------------------------------------------
    def record_success(self, state: BackendState) -> None:
        if state.breaker.state is not BreakerState.CLOSED:
            log.info("backend %s readmitted after a successful trial call", state.id)
            state.breaker.record_success()
            self._changed()
        else:
            state.breaker.record_success()

    def record_failure(self, state: BackendState, error: GatewayError) -> None:
        """Count a failure against the backend, unless it says nothing about it.

        A caller's own deadline running out is not the backend's fault (a
        short deadline must not eject a healthy server): a backend that is too
        slow is caught by ``record_outlier`` instead, against its own history.
        """
        if error.code in _NOT_THE_BACKENDS_FAULT:
            return
        self._count(state, error, fatal=error.code == "UNAVAILABLE")

    def record_outlier(self, state: BackendState, error: GatewayError) -> None:
        """A call that ran far past its predicted time: a failure, but not a
        fatal one (one slow call may be a pause; several in a row eject)."""
        self._count(state, error, fatal=False)

    def _count(self, state: BackendState, error: GatewayError, *, fatal: bool) -> None:
        was = state.breaker.state
        state.breaker.record_failure(self._clock.now(), error.message, fatal=fatal)
        if was is BreakerState.CLOSED and state.breaker.state is BreakerState.OPEN:
            log.warning("backend %s ejected: %s", state.id, error.message)
            self._changed()
