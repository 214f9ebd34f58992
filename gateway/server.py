"""Server bootstrap: the grpc.aio server, health, reflection, and a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from importlib import metadata as importlib_metadata

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import reflection
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.config import ConfigError, Settings
from gateway.servicer import InferenceServicer
from scheduler.backends.base import Backend
from scheduler.backends.cpu import CpuBackend
from scheduler.backends.cpu_models import load_cpu_model
from scheduler.backends.triton import TritonBackend
from scheduler.clock import MonotonicClock
from scheduler.dispatcher import Scheduler

log = logging.getLogger(__name__)

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _version() -> str:
    try:
        return importlib_metadata.version("inference-gateway")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def build_backends(settings: Settings) -> list[Backend]:
    """The backends the settings describe: one per Triton endpoint, one CPU pool."""
    backends: list[Backend] = []
    for endpoint in settings.triton_endpoints:
        backends.append(TritonBackend(endpoint, max_message_bytes=settings.max_message_bytes))
    if settings.cpu_models:
        try:
            models = [load_cpu_model(ref) for ref in settings.cpu_models]
        except ValueError as exc:
            raise ConfigError(f"cpu_models: {exc}") from None
        backends.append(CpuBackend(models, workers=settings.cpu_workers))
    if not backends:
        raise ConfigError("nothing to serve: set triton_endpoints and/or cpu_models")
    return backends


class GatewayServer:
    """Owns the gRPC server and the scheduler, and orders their start and stop.

    Start: backends first (discovery), then the port opens, then health says
    SERVING. Stop: health says NOT_SERVING (load balancers drain us), the
    server stops accepting and gives in-flight rpcs ``grace_period_s`` to
    finish, then the scheduler and its backends close.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        clock = MonotonicClock()
        self.scheduler = Scheduler(
            build_backends(settings), clock=clock, health_interval_s=settings.health_interval_s
        )
        self.servicer = InferenceServicer(
            self.scheduler,
            clock=clock,
            server_name="inference-gateway",
            server_version=_version(),
            stream_max_in_flight=settings.stream_max_in_flight,
        )
        self.health = health.aio.HealthServicer()
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self.servicer, self.server)  # type: ignore[no-untyped-call]
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable(self.server, [INFERENCE_SERVICE, health.SERVICE_NAME])
        self.port = 0
        self._sync_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        await self.scheduler.start()
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        await self.server.start()
        self.servicer.ready = True
        await self._sync_health()
        self._sync_task = asyncio.create_task(self._health_sync_loop(), name="health-sync")
        if self.settings.port_file is not None:
            self.settings.port_file.write_text(f"{self.port}\n")
        log.info(
            "serving on %s:%d; models: %s",
            self.settings.host,
            self.port,
            ", ".join(s.name for s in self.scheduler.models()) or "none yet",
        )
        return self.port

    async def _sync_health(self) -> None:
        ready = any(self.scheduler.model_ready(s.name) for s in self.scheduler.models())
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else (health_pb2.HealthCheckResponse.NOT_SERVING)
        )
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(INFERENCE_SERVICE, status)

    async def _health_sync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self._sync_health()

    async def stop(self) -> None:
        log.info("draining: up to %.1f s for in-flight requests", self.settings.grace_period_s)
        self.servicer.ready = False
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period_s)
        await self.scheduler.aclose()
        log.info("stopped")


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    gateway = GatewayServer(settings)
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()
