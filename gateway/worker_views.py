"""What the supervisor of several gateway workers shows: their metrics and admin views, joined.

Each worker keeps its own metrics and admin service, on endpoints only the
supervisor uses (metrics on a loopback port, admin on a Unix socket in the
private control directory). The supervisor serves the public ones:

- ``WorkersCollector``: on every scrape, reads each worker's exposition and
  yields every sample with a ``worker`` label added, so counters, histograms
  and live gauges (queue depths, breaker states) all stay per worker and sum
  in PromQL (``sum without (worker) (...)``).
- ``FanOutAdminServicer``: each admin rpc asks every worker and merges the
  answers, marking each backend, queue and decision with its ``worker``;
  devices come from the leader, whose telemetry every worker shares; a drain
  goes to every worker, since each places its own requests.

A worker that does not answer (restarting) is left out of a view, and logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from gateway.api.gateway.admin.v1 import admin_pb2 as pb
from gateway.api.gateway.admin.v1 import admin_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_Response = TypeVar("_Response")

#: How long the supervisor waits for one worker's view.
WORKER_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """Which of ``count`` workers a gateway process is, and the supervisor's
    private directory (mode 0700) where the workers meet it and each other."""

    index: int
    count: int
    control_dir: Path

    @property
    def leader(self) -> bool:
        """Worker 0 probes the backends and polls telemetry for all."""
        return self.index == 0

    @property
    def admin_target(self) -> str:
        return f"unix:{self.control_dir / f'admin-{self.index}.sock'}"

    @property
    def ready_file(self) -> Path:
        return self.control_dir / f"worker-{self.index}.json"

    @property
    def shared_view_file(self) -> Path:
        return self.control_dir / "fleet.json"

    @property
    def drained_file(self) -> Path:
        """Backends an operator drained: a worker that (re)starts drains them too."""
        return self.control_dir / "drained.json"

    def drained(self) -> list[str]:
        try:
            return list(json.loads(self.drained_file.read_text()))
        except (OSError, ValueError):
            return []

    def announce(self, *, pid: int, metrics_port: int | None) -> None:
        """Tell the supervisor this worker serves (written last, atomically)."""
        partial = self.ready_file.with_suffix(".partial")
        partial.write_text(json.dumps({"pid": pid, "metrics_port": metrics_port}))
        partial.replace(self.ready_file)

    def endpoints(self) -> WorkerEndpoints | None:
        """Where this worker serves its views, once it announced itself."""
        try:
            ready = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return None
        port = ready.get("metrics_port")
        url = f"http://127.0.0.1:{port}/metrics" if port else None
        return WorkerEndpoints(self.index, url, self.admin_target)


@dataclass(frozen=True, slots=True)
class WorkerEndpoints:
    """Where one worker serves its own metrics and admin views."""

    index: int
    metrics_url: str | None
    admin_target: str


class WorkersCollector(Collector):
    """Every worker's metrics, each sample labelled with its ``worker``."""

    def __init__(self, workers: Callable[[], Sequence[WorkerEndpoints]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker in self._workers():
            if worker.metrics_url is None:
                continue
            try:
                with urllib.request.urlopen(worker.metrics_url, timeout=WORKER_TIMEOUT_S) as reply:
                    text = reply.read().decode()
            except OSError as exc:
                log.warning("metrics of worker %d not read: %s", worker.index, exc)
                continue
            label = str(worker.index)
            for family in text_string_to_metric_families(text):
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.samples.append(
                        sample._replace(labels={**sample.labels, "worker": label})
                    )
        yield from families.values()


class FanOutAdminServicer(pb_grpc.AdminServiceServicer):
    """The admin service of a multi-worker gateway: asks every worker, merges."""

    def __init__(
        self,
        workers: Callable[[], Sequence[WorkerEndpoints]],
        on_drain: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._workers = workers
        self._on_drain = on_drain  # remembers drains for workers that start later
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, worker: WorkerEndpoints) -> pb_grpc.AdminServiceStub:
        channel = self._channels.get(worker.admin_target)
        if channel is None:
            channel = grpc.aio.insecure_channel(worker.admin_target)
            self._channels[worker.admin_target] = channel
        return pb_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]

    async def _ask(self, call: Callable[[pb_grpc.AdminServiceStub], Any]) -> list[tuple[int, Any]]:
        """Every worker's answer, in worker order; those that fail are left out."""
        workers = list(self._workers())

        async def one(worker: WorkerEndpoints) -> Any:
            return await call(self._stub(worker))

        answers = await asyncio.gather(*(one(w) for w in workers), return_exceptions=True)
        found: list[tuple[int, Any]] = []
        for worker, answer in zip(workers, answers, strict=True):
            if isinstance(answer, grpc.aio.AioRpcError) and answer.code() in (
                grpc.StatusCode.NOT_FOUND,
                grpc.StatusCode.INVALID_ARGUMENT,
            ):
                raise answer  # the caller's mistake, the same on every worker
            if isinstance(answer, BaseException):
                log.warning("admin view of worker %d left out: %s", worker.index, answer)
                continue
            found.append((worker.index, answer))
        return found

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        for _, answer in await self._ask(
            lambda s: s.ListDevices(request, timeout=WORKER_TIMEOUT_S)
        ):
            return answer  # type: ignore[no-any-return]  # the leader's, or the first to answer
        return pb.ListDevicesResponse()

    async def ListBackends(
        self, request: pb.ListBackendsRequest, context: Context
    ) -> pb.ListBackendsResponse:
        response = pb.ListBackendsResponse()
        for index, answer in await self._ask(
            lambda s: s.ListBackends(request, timeout=WORKER_TIMEOUT_S)
        ):
            for backend in answer.backends:
                backend.worker = index
                response.backends.append(backend)
        return response

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Context
    ) -> pb.ListQueuesResponse:
        response = pb.ListQueuesResponse()
        for index, answer in await self._ask(
            lambda s: s.ListQueues(request, timeout=WORKER_TIMEOUT_S)
        ):
            for queue in answer.queues:
                queue.worker = index
                response.queues.append(queue)
        return response

    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: Context
    ) -> pb.ListDecisionsResponse:
        decisions = []
        for index, answer in await self._ask(
            lambda s: s.ListDecisions(request, timeout=WORKER_TIMEOUT_S)
        ):
            for decision in answer.decisions:
                decision.worker = index
                decisions.append(decision)
        decisions.sort(key=lambda d: d.age_seconds)  # newest first, across workers
        if request.limit > 0:
            decisions = decisions[: request.limit]
        return pb.ListDecisionsResponse(decisions=decisions)

    async def DrainBackend(
        self, request: pb.DrainBackendRequest, context: Context
    ) -> pb.DrainBackendResponse:
        answer: pb.DrainBackendResponse = await self._drain(
            context,
            request.backend_id,
            True,
            lambda s: s.DrainBackend(request, timeout=WORKER_TIMEOUT_S),
        )
        return answer

    async def UndrainBackend(
        self, request: pb.UndrainBackendRequest, context: Context
    ) -> pb.UndrainBackendResponse:
        answer: pb.UndrainBackendResponse = await self._drain(
            context,
            request.backend_id,
            False,
            lambda s: s.UndrainBackend(request, timeout=WORKER_TIMEOUT_S),
        )
        return answer

    async def _drain(
        self,
        context: Context,
        backend_id: str,
        drained: bool,
        call: Callable[[pb_grpc.AdminServiceStub], Any],
    ) -> Any:
        """Drain or undrain on every worker, and remember it for workers that start later."""
        answer = await self._everywhere(context, call)
        if self._on_drain is not None:
            self._on_drain(backend_id, drained)
        return answer

    async def _everywhere(
        self, context: Context, call: Callable[[pb_grpc.AdminServiceStub], Any]
    ) -> Any:
        """Apply a change on every worker; the first worker's answer stands for all."""
        try:
            answers = await self._ask(call)
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
            raise AssertionError("unreachable") from None  # pragma: no cover
        if not answers:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no gateway worker answered")
        index, answer = answers[0]
        answer.backend.worker = index
        return answer

    async def aclose(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))
        self._channels.clear()
