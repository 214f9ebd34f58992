"""The admin gRPC service (``gateway.admin.v1.AdminService``) and its own server.

It serves on a port of its own (``admin_host``:``admin_port``, loopback by
default) so that network policy can keep it apart from the inference API.
With ``admin_token`` or tenants set, a call needs the token or the identity
(API key or mTLS client certificate) of a tenant with ``admin = true``:
UNAUTHENTICATED without credentials, PERMISSION_DENIED for a tenant that is
not an admin (``gateway.admin_guard``).

The views are read from the scheduler's live state at call time; nothing is
copied in the background. Draining flips ``BackendState.drained`` through
``Scheduler.set_drained``: placement skips the backend from the next batch on,
while calls already running there finish.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc

from gateway import reflection
from gateway.admin_guard import AdminGuard
from gateway.api.gateway.admin.v1 import admin_pb2 as pb
from gateway.api.gateway.admin.v1 import admin_pb2_grpc as pb_grpc
from gateway.config import ConfigError
from gateway.metrics import GatewayMetrics
from gateway.security import Authenticator
from scheduler.clock import Clock
from scheduler.dispatcher import Scheduler
from scheduler.fleet import BackendState

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]

ADMIN_SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name


class AdminServicer(pb_grpc.AdminServiceServicer):
    """Answers the admin rpcs from the scheduler and the metrics' decision log."""

    def __init__(self, scheduler: Scheduler, metrics: GatewayMetrics, clock: Clock) -> None:
        self._scheduler = scheduler
        self._metrics = metrics
        self._clock = clock

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> pb.ListDevicesResponse:
        monitor = self._scheduler.monitor
        response = pb.ListDevicesResponse()
        if monitor is None:
            return response
        now = self._clock.now()
        for device in sorted(monitor.snapshot().devices.values(), key=lambda d: d.device_id):
            item = response.devices.add(
                id=device.device_id,
                kind=device.kind,
                source=device.source,
                host=device.host,
                name=device.name,
                telemetry_age_seconds=device.age_s(now),
            )
            for field in ("memory_total_bytes", "memory_used_bytes", "memory_free_bytes"):
                if (value := getattr(device, field)) is not None:
                    setattr(item, field, value)
            if device.utilization is not None:
                item.utilization = device.utilization
        return response

    async def ListBackends(
        self, request: pb.ListBackendsRequest, context: Context
    ) -> pb.ListBackendsResponse:
        return pb.ListBackendsResponse(backends=[self._backend(s) for s in self._scheduler.fleet])

    async def ListQueues(
        self, request: pb.ListQueuesRequest, context: Context
    ) -> pb.ListQueuesResponse:
        response = pb.ListQueuesResponse()
        for spec in self._scheduler.models():
            batcher = self._scheduler.batcher(spec.name)
            if batcher is None:
                continue
            for level, depth in sorted(batcher.queue_depth().items()):
                response.queues.add(
                    model=spec.name,
                    priority=level,
                    depth=depth,
                    batches_in_flight=batcher.in_flight,
                )
        return response

    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: Context
    ) -> pb.ListDecisionsResponse:
        records = list(self._metrics.recent_decisions)
        records.reverse()
        if request.limit > 0:
            records = records[: request.limit]
        now = self._clock.now()
        response = pb.ListDecisionsResponse()
        for record in records:
            d = record.decision
            response.decisions.add(
                model=record.model,
                batch_size=record.rows,
                verdict=d.verdict.value,
                backend_id=d.backend_id or "",
                predicted_seconds=d.predicted_s,
                runner_up=d.runner_up or "",
                runner_up_seconds=d.runner_up_s,
                reason=d.reason,
                telemetry_age_seconds=d.telemetry_age_s,
                age_seconds=max(0.0, now - d.decided_at),
                trace_id=record.trace_id,
            )
        return response

    async def DrainBackend(
        self, request: pb.DrainBackendRequest, context: Context
    ) -> pb.DrainBackendResponse:
        state = await self._set_drained(request.backend_id, True, context)
        return pb.DrainBackendResponse(backend=self._backend(state))

    async def UndrainBackend(
        self, request: pb.UndrainBackendRequest, context: Context
    ) -> pb.UndrainBackendResponse:
        state = await self._set_drained(request.backend_id, False, context)
        return pb.UndrainBackendResponse(backend=self._backend(state))

    async def _set_drained(self, backend_id: str, drained: bool, context: Context) -> BackendState:
        try:
            state = self._scheduler.set_drained(backend_id, drained)
        except KeyError:
            known = ", ".join(s.id for s in self._scheduler.fleet) or "none"
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"no backend {backend_id!r}; backends: {known}"
            )
            raise AssertionError("unreachable") from None  # pragma: no cover
        action = "drained" if drained else "undrained"
        log.warning("backend %s %s by an operator", backend_id, action)
        return state

    def _backend(self, state: BackendState) -> pb.Backend:
        now = self._clock.now()
        item = pb.Backend(
            id=state.id,
            tier=state.tier.name.lower(),
            endpoint=state.backend.endpoint,
            models=sorted(state.backend.models()),
            usable=state.usable(now),
            drained=state.drained,
            breaker_state=state.breaker.state.value,
            last_error=state.breaker.last_error,
            in_flight=state.in_flight,
            origin=f"dns:{state.group}" if state.group else "static",
        )
        for model, buckets in self._scheduler.estimator.snapshot().get(state.id, {}).items():
            for bucket, seconds in sorted(buckets.items()):
                if math.isfinite(seconds):
                    item.service_times.add(model=model, batch_bucket=bucket, seconds=seconds)
        return item


class AdminServer:
    """The admin service's own grpc.aio server (with reflection, for grpcurl).

    ``address`` is ``host:port`` (port 0: any free one) or ``unix:PATH``.
    """

    def __init__(
        self,
        servicer: pb_grpc.AdminServiceServicer,
        *,
        address: str,
        token: str | None,
        auth: Authenticator | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        # With a token or tenants, only the token or an admin tenant's
        # identity gets in; with neither (the default, on loopback), anyone.
        guarded = token is not None or auth is not None
        interceptors = [AdminGuard(token, auth)] if guarded else []
        self._credentials = credentials
        self.server = grpc.aio.server(interceptors=interceptors)
        pb_grpc.add_AdminServiceServicer_to_server(servicer, self.server)  # type: ignore[no-untyped-call]
        reflection.enable(self.server, [ADMIN_SERVICE])
        self._address = address
        self.port = 0

    async def start(self) -> int:
        try:
            if self._credentials is not None and not self._address.startswith("unix:"):
                self.port = self.server.add_secure_port(self._address, self._credentials)
            else:
                self.port = self.server.add_insecure_port(self._address)
        except RuntimeError as exc:
            raise ConfigError(f"admin: cannot listen on {self._address}: {exc}") from None
        await self.server.start()
        return self.port

    async def stop(self, grace_s: float) -> None:
        await self.server.stop(grace_s)
