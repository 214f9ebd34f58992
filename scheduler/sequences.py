"""Sequence affinity: every request of a sequence runs where its first one ran.

A model with Triton's ``sequence_batching`` keeps each sequence's state (a
running sum, a decoder's cache) inside the one server that saw its start. The
gateway therefore routes a sequence's requests by its id, not by load, and
never merges them into batches of its own (Triton's sequence batcher does).
Pure: the clock's ``now`` is passed in, and nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from scheduler.errors import SequenceLost, Unavailable
from scheduler.request import Parameters

log = logging.getLogger(__name__)

#: A sequence id as the caller sent it: Triton takes integers and strings, and
#: 5 and "5" are two different sequences there.
SequenceId = int | str
SequenceKey = tuple[str, SequenceId]


def sequence_of(parameters: Parameters) -> tuple[SequenceId, bool, bool] | None:
    """(id, start, end) of a request that belongs to a sequence; None when it
    does not (no ``sequence_id``, or Triton's "no sequence" values 0 and "")."""
    sequence_id = parameters.get("sequence_id")
    if sequence_id is None or isinstance(sequence_id, bool | float) or not sequence_id:
        return None
    start = parameters.get("sequence_start", False) is True
    end = parameters.get("sequence_end", False) is True
    return sequence_id, start, end


def rendezvous(model: str, sequence_id: SequenceId, backend_ids: Sequence[str]) -> str | None:
    """The backend with the highest hash of (model, sequence id, backend id).

    Highest-random-weight hashing: every gateway worker and replica that sees
    the same backends picks the same one without asking anyone, and adding or
    removing a backend moves only the sequences that rank it first.
    """
    best, best_weight = None, b""
    tag = f"{model}\0{type(sequence_id).__name__}:{sequence_id}\0".encode()
    for backend_id in backend_ids:
        weight = hashlib.blake2b(tag + backend_id.encode(), digest_size=8).digest()
        if best is None or weight > best_weight:
            best, best_weight = backend_id, weight
    return best


@dataclass(slots=True)
class Placement:
    """Where a live sequence runs, when it was last used, and, once its backend
    has gone, why its state is lost (then every later request is refused)."""

    backend_id: str
    last_seen: float
    idle_s: float
    lost: str = ""


class SequenceTable:
    """The placements of the live sequences this gateway has seen.

    ``route`` decides a request's backend:

    - a start picks, by ``rendezvous``, among the backends that take new work
      (not drained, breaker closed), and records the choice;
    - a later request goes where its sequence is recorded, drained or not, as
      long as that backend is alive; when it is not, the sequence is marked
      lost and the request fails with ``SequenceLost``, never rerouted;
    - a later request with no record (its start went through another worker
      or replica, or this gateway restarted) takes the rendezvous choice over
      the same backends, which is where the start went while the set of
      backends is the same. When the set changed in between, the backend
      refuses a sequence it does not know with its own clear error.

    A record ends with its sequence's last request (``finished``) or when
    the sequence has been idle longer than the model's
    ``max_sequence_idle_microseconds`` (the backend forgets it then too). The
    table is kept in least-recently-used order, so expired records are swept
    from its front, and it never holds more than ``max_entries``.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        self._max_entries = max_entries
        self._live: OrderedDict[SequenceKey, Placement] = OrderedDict()

    def __len__(self) -> int:
        return len(self._live)

    def route(
        self,
        model: str,
        sequence_id: SequenceId,
        start: bool,
        *,
        serving: Sequence[str],
        takes_new: Collection[str],
        alive: Collection[str],
        idle_s: float,
        now: float,
    ) -> str:
        """The backend for one request of a sequence (see the class docstring).
        ``serving`` lists the backends that serve the model, in a fixed order."""
        self._sweep(now)
        key = (model, sequence_id)
        record = self._live.get(key)
        if record is not None and now - record.last_seen > record.idle_s:
            del self._live[key]  # idled out here and on its backend alike
            record = None
        if record is not None and not start:
            if not record.lost and record.backend_id not in alive:
                # The backend's id goes to the log, not into the caller's status.
                log.warning(
                    "sequence %r of model %s lost: backend %s is gone",
                    sequence_id,
                    model,
                    record.backend_id,
                )
                record.lost = "the backend that held its state is no longer available"
            if record.lost:
                raise SequenceLost(_lost_message(model, sequence_id, record.lost))
            record.last_seen = now
            self._live.move_to_end(key)
            return record.backend_id
        candidates = [b for b in serving if b in takes_new]
        choice = rendezvous(model, sequence_id, candidates)
        if choice is None:
            raise Unavailable(
                f"model '{model}': no backend can take sequence {sequence_id!r} now "
                f"({len(serving)} serve the model, none takes new sequences)"
            )
        self._live[key] = Placement(choice, now, idle_s)
        self._live.move_to_end(key)
        if len(self._live) > self._max_entries:
            self._live.popitem(last=False)
        return choice

    def finished(self, model: str, sequence_id: SequenceId) -> None:
        """The sequence's last request ran: forget it."""
        self._live.pop((model, sequence_id), None)

    def lose(self, model: str, sequence_id: SequenceId, why: str) -> SequenceLost:
        """The sequence's backend failed under a request: its state is gone."""
        record = self._live.get((model, sequence_id))
        if record is not None:
            record.lost = why
        return SequenceLost(_lost_message(model, sequence_id, why))

    def live_on(self, backend_id: str, now: float) -> int:
        """Live (not ended, not idled out, not lost) sequences on a backend:
        what a drained backend still has to finish before it is empty."""
        return sum(
            1
            for p in self._live.values()
            if p.backend_id == backend_id and not p.lost and now - p.last_seen <= p.idle_s
        )

    def _sweep(self, now: float) -> None:
        live = self._live
        while live:
            key, oldest = next(iter(live.items()))
            if now - oldest.last_seen <= oldest.idle_s:
                return  # a lost one too: its next requests are refused until then
            del live[key]


def _lost_message(model: str, sequence_id: SequenceId, why: str) -> str:
    return (
        f"the state of sequence {sequence_id!r} of model '{model}' is lost: {why}; "
        "start the sequence again (sequence_start) to run it on another backend"
    )
