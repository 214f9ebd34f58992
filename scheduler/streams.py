"""Open response streams (decoupled models) per backend, and what they weigh in placement.

A request to a decoupled model holds its backend for as long as it keeps
answering (a generated text, a transcription), which may be seconds or
minutes: unary in-flight counts and learned service times say nothing about
that. Placement of a new stream therefore adds, to each candidate's queued
work, a weight for every stream open there, growing with the stream's age.
Pure: ``now`` is passed in.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import numpy as np

from scheduler.placement import Candidates

#: Seconds of queued work one fresh open stream stands for.
STREAM_WEIGHT_S = 1.0
#: Age at which a stream's weight has doubled; it grows no further after
#: ``MAX_AGE_S``, so one stuck stream cannot repel new work for ever.
AGE_SCALE_S = 30.0
MAX_AGE_S = 120.0


def stream_load_s(opened_at: Iterable[float], now: float) -> float:
    """The queued work that streams opened at ``opened_at`` stand for.

    A stream that has run for a while is likely a long one (its age is the
    best guess of how much longer it runs), so it weighs more than one just
    opened: ``1 + min(age, MAX_AGE_S) / AGE_SCALE_S`` times ``STREAM_WEIGHT_S``.
    """
    total = 0.0
    for start in opened_at:
        age = min(max(now - start, 0.0), MAX_AGE_S)
        total += 1.0 + age / AGE_SCALE_S
    return total * STREAM_WEIGHT_S


class OpenStreams:
    """The streams open on each backend, each with the time it opened.

    ``open`` returns a token for ``close``; ``count`` and ``load_s`` read them.
    Only the stream path touches this, never the unary request path.
    """

    def __init__(self) -> None:
        self._by_backend: dict[str, dict[int, float]] = {}
        self._tokens = itertools.count()

    def open(self, backend_id: str, now: float) -> int:
        token = next(self._tokens)
        self._by_backend.setdefault(backend_id, {})[token] = now
        return token

    def close(self, backend_id: str, token: int) -> None:
        streams = self._by_backend.get(backend_id)
        if streams is not None:
            streams.pop(token, None)

    def count(self, backend_id: str) -> int:
        return len(self._by_backend.get(backend_id, ()))

    def load_s(self, backend_id: str, now: float) -> float:
        return stream_load_s(self._by_backend.get(backend_id, {}).values(), now)

    def weigh(self, candidates: Candidates, now: float, instances: Iterable[int]) -> Candidates:
        """``candidates`` with each backend's open streams added to its queued
        work (shared among its model instances), for ``place`` to compare."""
        extra = np.array(
            [
                self.load_s(backend_id, now) / max(1, n)
                for backend_id, n in zip(candidates.backend_ids, instances, strict=True)
            ],
            np.float64,
        )
        return candidates._replace(queued_s=candidates.queued_s + extra)
