"""One log line per inference request that failed (and, if asked, a sample of the others).

A line says where the request's time went, as its trace does: in total, in
the batch queue, and in backend calls. Logs correlate with traces through the
trace id each line carries. A failing backend can fail thousands of requests
a second, so lines are rate-limited.
"""

from __future__ import annotations

import logging
import random

from scheduler.clock import Clock

log = logging.getLogger("gateway.requests")


class RequestLog:
    """Writes ``request model=... code=... backend=... took_ms=... queue_ms=...
    backend_ms=... trace_id=...`` lines to the ``gateway.requests`` logger
    (WARNING for errors, INFO for OK).

    Errors are always candidates, OK requests with probability ``ok_sample``
    (0: never, and then an OK request costs one comparison). A token bucket
    bounds the lines: ``rate_per_s`` a second, bursts of ``burst``; a line
    over the limit is dropped and counted, and the next line written says how
    many were dropped since the last one, so nothing disappears silently.
    """

    def __init__(
        self, clock: Clock, *, rate_per_s: float = 10.0, burst: int = 20, ok_sample: float = 0.0
    ) -> None:
        self._clock = clock
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._tokens = float(burst)
        self._filled_at = clock.now()
        self.ok_sample = ok_sample
        self.dropped = 0

    def request_done(
        self,
        model: str,
        code: str,
        backend: str,
        seconds: float,
        trace_id: str,
        message: str = "",
        *,
        queue_s: float = 0.0,
        backend_s: float = 0.0,
    ) -> None:
        if code == "OK" and (not self.ok_sample or random.random() >= self.ok_sample):
            return
        if not self._take():
            self.dropped += 1
            return
        dropped, self.dropped = self.dropped, 0
        level = logging.INFO if code == "OK" else logging.WARNING
        log.log(
            level,
            "request model=%s code=%s backend=%s took_ms=%.3f queue_ms=%.3f backend_ms=%.3f "
            "trace_id=%s%s%s",
            model,
            code,
            backend or "none",
            seconds * 1e3,
            queue_s * 1e3,
            backend_s * 1e3,
            trace_id or "none",
            f" ({dropped} lines dropped by the rate limit before this one)" if dropped else "",
            f": {message}" if message else "",
        )

    def _take(self) -> bool:
        now = self._clock.now()
        self._tokens = min(self._burst, self._tokens + (now - self._filled_at) * self._rate_per_s)
        self._filled_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
