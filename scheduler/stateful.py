"""The two request paths that are not placed by load alone: a sequence's
requests, pinned to the backend that holds its state, and a decoupled
model's request, streamed from a backend chosen by its open streams."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping, Set

from scheduler.batching import BatchInfo
from scheduler.candidates import CandidateTables
from scheduler.clock import Clock
from scheduler.errors import SequenceLost, Unavailable
from scheduler.health import BreakerState
from scheduler.request import InferRequest, Outputs
from scheduler.runner import BatchRunner
from scheduler.sequences import SequenceId, SequenceTable, sequence_of
from scheduler.spec import ModelSpec, Tensor
from scheduler.streams import OpenStreams

log = logging.getLogger(__name__)


class StatefulRunner:
    """Runs sequence and decoupled requests through the shared ``BatchRunner``.

    ``run_sequence`` asks the ``SequenceTable`` for the sequence's backend
    (over the model's backends: those that take new work for a start, those
    still alive, drained or not, for the rest) and runs the request there
    only; when that backend fails with UNAVAILABLE the sequence is marked
    lost, and this and every later request of it end with ``SequenceLost``.
    ``stream`` relays a decoupled request's responses, counting the stream
    as open on its backend while it lasts; a model that is both decoupled
    and sequence-batched has its streams pinned the same way.
    """

    def __init__(self, runner: BatchRunner, candidates: CandidateTables, clock: Clock) -> None:
        self._runner = runner
        self._candidates = candidates
        self._clock = clock
        self.sequences = SequenceTable()
        self.streams = OpenStreams()

    def _route(
        self, spec: ModelSpec, sequence_id: SequenceId, start: bool, failed: Set[str] = frozenset()
    ) -> str:
        now = self._clock.now()
        states = [s for s in self._candidates.table(spec.name).states if s.id not in failed]
        usable = [s for s in states if s.usable(now)]
        # A new sequence goes to a backend known to be well (breaker closed),
        # not to one on probation, while there is one.
        closed = {s.id for s in usable if s.breaker.state is BreakerState.CLOSED}
        return self.sequences.route(
            spec.name,
            sequence_id,
            start,
            serving=[s.id for s in states],
            takes_new=closed or {s.id for s in usable},
            # Drained or not: a drained backend finishes the sequences it holds.
            alive={s.id for s in states if s.discovered and s.breaker.state is BreakerState.CLOSED},
            idle_s=spec.max_sequence_idle_s,
            now=now,
        )

    def _lost(
        self, spec: ModelSpec, sequence_id: SequenceId, backend_id: str, error: Unavailable
    ) -> SequenceLost:
        log.warning(
            "sequence %r of model %s lost: backend %s failed: %s",
            sequence_id,
            spec.name,
            backend_id,
            error.message,
        )
        return self.sequences.lose(spec.name, sequence_id, "the backend that held its state failed")

    async def run_sequence(
        self,
        sequence_id: SequenceId,
        start: bool,
        end: bool,
        spec: ModelSpec,
        inputs: dict[str, Tensor],
        info: BatchInfo,
    ) -> Outputs | Mapping[str, Tensor]:
        """One request of a sequence, on the backend that holds the sequence.
        A start holds no state yet: if its backend is down, it is tried on
        the next backend in rendezvous order (``_route`` raises Unavailable
        when none is left)."""
        failed: set[str] = set()
        try:
            while True:
                backend_id = self._route(spec, sequence_id, start, failed)
                try:
                    return await self._runner.run_pinned(backend_id, spec, inputs, info)
                except Unavailable as exc:
                    if not start:
                        raise self._lost(spec, sequence_id, backend_id, exc) from exc
                    log.info("sequence %r start: %s; trying another backend", sequence_id, exc)
                    failed.add(backend_id)
        finally:
            if end:
                self.sequences.finished(spec.name, sequence_id)

    async def stream(self, request: InferRequest, spec: ModelSpec) -> AsyncIterator[bytes]:
        """A decoupled request's responses, as the backend sends them; on the
        sequence's backend when the model is also a sequence model (streaming
        speech recognition is both)."""
        info = BatchInfo(
            model_name=spec.name,
            model_version=request.model_version,
            size=1,
            request_ids=(request.id,),
            deadline=request.deadline,
            trigger="solo",
            outputs=request.requested_outputs,
            priority=request.priority,
            parameters=request.parameters,
            trace_contexts=(),
            wire=request.wire,
            caller_context=request.trace_context,
        )
        sequence = sequence_of(request.parameters) if spec.sequence else None
        backend_id = None if sequence is None else self._route(spec, sequence[0], sequence[1])
        try:
            async for message in self._runner.open_stream(spec, info, self.streams, backend_id):
                yield message
        except Unavailable as exc:
            if sequence is None or backend_id is None or sequence[1]:
                raise  # a start held no state yet: nothing is lost
            raise self._lost(spec, sequence[0], backend_id, exc) from exc
        finally:
            request.served_by = info.served_by[-1] if info.served_by else ""
            if sequence is not None and sequence[2]:
                self.sequences.finished(spec.name, sequence[0])
