"""Server bootstrap: the grpc.aio server, health, reflection, and a graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from importlib import metadata as importlib_metadata
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from gateway import reflection, security
from gateway.admin import AdminServer, AdminServicer
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.backends import build_backends, metrics_url, triton_backend
from gateway.codec import TensorLimits
from gateway.config import ConfigError, Settings
from gateway.metrics import build_registry
from gateway.registration import GenericOnly, add_to_server
from gateway.request_log import RequestLog
from gateway.servicer import InferenceServicer
from gateway.telemetry import Tracing, configure_tracing
from gateway.worker_views import WorkerRole
from scheduler.backends.base import Backend
from scheduler.backends.triton import TritonBackend
from scheduler.clock import MonotonicClock
from scheduler.config import SchedulerConfig
from scheduler.discovery import DnsEndpointGroup, parse_dns_endpoint
from scheduler.dispatcher import Scheduler
from scheduler.health import BreakerConfig
from scheduler.shared_view import Role, SharedTelemetryProvider, SharedView
from scheduler.telemetry.cpu import CpuProvider
from scheduler.telemetry.monitor import DeviceMonitor
from scheduler.telemetry.nvml import NvmlProvider
from scheduler.telemetry.providers import TelemetryProvider
from scheduler.telemetry.triton_metrics import TritonMetricsProvider

log = logging.getLogger(__name__)

_QUIET_BEFORE_CLOSE_S = 0.2  # at shutdown: refused callers back off before the listener goes

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


def _version() -> str:
    try:
        return importlib_metadata.version("inference-gateway")
    except importlib_metadata.PackageNotFoundError:
        return "0+unknown"


def scheduler_config(settings: Settings) -> SchedulerConfig:
    return SchedulerConfig(
        health_interval_s=settings.health_interval_s,
        rediscover_interval_s=settings.rediscover_interval_s,
        dns_interval_s=settings.dns_interval_s,
        breaker=BreakerConfig(
            failure_threshold=settings.breaker_failure_threshold,
            base_backoff_s=settings.breaker_base_backoff_s,
            max_backoff_s=settings.breaker_max_backoff_s,
        ),
        telemetry_max_age_s=settings.telemetry_max_age_s,
        memory_headroom_bytes=settings.memory_headroom_bytes,
        model_memory_bytes=dict(settings.model_memory_bytes),
        max_in_flight_per_backend=settings.max_in_flight_per_backend,
        max_gpu_utilization=settings.max_gpu_utilization,
        batching_layer=settings.batching_layer,
        batching_layer_by_model=dict(settings.batching_layer_by_model),
        default_max_queue_delay_us=settings.default_max_queue_delay_us,
        max_message_bytes=settings.max_message_bytes,
        batching_by_model=dict(settings.batching),
        outlier_factor=settings.outlier_factor,
        outlier_min_s=settings.outlier_min_s,
        probe_timeout_s=settings.probe_timeout_s,
        stale_estimate_s=settings.stale_estimate_s,
        admit_fraction=settings.admit_fraction,
        default_slo_s=settings.default_slo_s,
        routing=settings.routing,
        routing_by_model=dict(settings.routing_by_model),
        # Fair share between tenants needs every batch decided here (config.py).
        queue_ahead=0 if settings.tenants else 1,
    )


def build_scheduler(
    settings: Settings, clock: MonotonicClock, worker: WorkerRole | None = None
) -> Scheduler:
    """The scheduler, its backends, DNS groups and device monitor, from settings.

    One of several workers shares the fleet's view (``scheduler.shared_view``):
    the leader polls telemetry and probes; a follower reads what it publishes.
    """
    backends = build_backends(settings)
    shared: SharedView | None = None
    if worker is not None and worker.count > 1:
        role: Role = "leader" if worker.leader else "follower"
        shared = SharedView(worker.shared_view_file, role)
    follower = shared is not None and shared.role == "follower"
    providers: list[TelemetryProvider] = []
    if shared is not None and follower:
        providers.append(SharedTelemetryProvider(shared))
    else:
        providers.append(CpuProvider())
        if settings.nvml:
            providers.append(NvmlProvider())
        for backend in backends:
            if isinstance(backend, TritonBackend) and (url := metrics_url(settings, backend.url)):
                providers.append(TritonMetricsProvider(url, backend.id))
    monitor = DeviceMonitor(providers, clock=clock, interval_s=settings.telemetry_interval_s)
    groups = [
        DnsEndpointGroup(*parsed)
        for endpoint in settings.triton_endpoints
        if (parsed := parse_dns_endpoint(endpoint)) is not None
    ]
    scheduler = Scheduler(
        backends,
        clock=clock,
        config=scheduler_config(settings),
        monitor=monitor,
        dns_groups=groups,
        backend_factory=lambda target: triton_backend(settings, target),
        shared=shared,
    )
    if follower:
        return scheduler  # the leader watches the Tritons' metrics for it

    def watch(backend: Backend) -> None:
        if isinstance(backend, TritonBackend) and (url := metrics_url(settings, backend.url)):
            monitor.add_provider(TritonMetricsProvider(url, backend.id))

    def unwatch(backend: Backend) -> None:
        monitor.remove_provider(f"triton-metrics:{backend.id}")

    scheduler.fleet.on_added.append(watch)
    scheduler.fleet.on_removed.append(unwatch)
    return scheduler


class GatewayServer:
    """Owns the gRPC server and the scheduler, and orders their start and stop.

    Start: backends first (discovery), then the port opens, then health says
    SERVING. Stop: see ``stop`` (NOT_SERVING, a drain delay, UNAVAILABLE for
    late arrivals, in-flight work finished, then the scheduler and listener close).
    """

    def __init__(
        self,
        settings: Settings,
        tracing: Tracing | None = None,
        worker: WorkerRole | None = None,
    ) -> None:
        self.settings = settings
        self.tracing = tracing or Tracing()
        self.worker = worker
        security.check_admin_exposure(settings)
        self.credentials = security.server_credentials(settings)
        clock = MonotonicClock()
        self.auth = security.Authenticator(settings.tenants, clock) if settings.tenants else None
        self.scheduler = build_scheduler(settings, clock, worker)
        # Metrics are always counted (cheap); they are served only with metrics_port.
        self.registry, self.metrics = build_registry(
            self.scheduler, clock, trace_ids=self.tracing.enabled
        )
        self.scheduler.observer = self.metrics
        self.servicer = InferenceServicer(
            self.scheduler,
            clock=clock,
            server_name=settings.server_name,
            server_version=_version(),
            stream_max_in_flight=settings.stream_max_in_flight,
            metrics=self.metrics,
            tracing=self.tracing,
            request_log=RequestLog(
                clock,
                rate_per_s=settings.request_log_rate_per_s,
                burst=max(1, round(settings.request_log_rate_per_s * 2)),
                ok_sample=settings.request_log_ok_sample,
            ),
            limits=TensorLimits(settings.max_tensor_dims, settings.max_tensor_elements),
            auth=self.auth,
            max_bytes_in_flight=settings.max_bytes_in_flight,
        )
        self.admin: AdminServer | None = None
        admin = AdminServicer(self.scheduler, self.metrics, clock)
        if worker is not None:  # for the supervisor only: a socket in its private directory
            self.admin = AdminServer(admin, address=worker.admin_target, token=None)
        elif settings.admin_port is not None:
            self.admin = AdminServer(
                admin,
                address=f"{settings.admin_host}:{settings.admin_port}",
                token=settings.admin_token,
                auth=self.auth,
                credentials=self.credentials,
            )
        self.metrics_port: int | None = None
        self._metrics_http: WSGIServer | None = None
        self.health = health.aio.HealthServicer()
        options = [
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            # Workers of one gateway share its port; otherwise a second gateway
            # started on a port in use must fail, not quietly take half the calls.
            ("grpc.so_reuseport", 1 if worker is not None else 0),
        ]
        refusals = self.metrics.refusals
        # Tracing's interceptor (none when off) is for the rpcs other than
        # ModelInfer, which makes its own SERVER span (``Tracing.traced``):
        # Refusals hands it those, so ModelInfer's calls never enter it.
        refusals.others = next(iter(self.tracing.server_interceptors()), None)
        self.server = grpc.aio.server(
            options=options,
            # Refusals first: it counts what gRPC accepts, before anything else runs.
            interceptors=[refusals],
            # Past this many rpcs at once gRPC itself answers RESOURCE_EXHAUSTED:
            # the last guard against overload growing memory without bound.
            maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
        add_to_server(self.servicer, self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, GenericOnly(self.server))
        reflection.enable(self.server, [INFERENCE_SERVICE, health.SERVICE_NAME])
        self.port = 0
        self._sync_task: asyncio.Task[None] | None = None

    async def start(self) -> int:
        await self.scheduler.start()
        if self.worker is not None:
            for backend_id in self.worker.drained():  # an operator's drains outlive a restart
                with contextlib.suppress(KeyError):
                    self.scheduler.set_drained(backend_id, True)
        address = f"{self.settings.host}:{self.settings.port}"
        try:
            creds = self.credentials
            server = self.server
            self.port = (
                server.add_secure_port(address, creds)
                if creds
                else server.add_insecure_port(address)
            )
        except RuntimeError as exc:
            raise ConfigError(f"cannot listen on {address}: {exc}") from None
        await self.server.start()
        self.servicer.ready = True
        await self._sync_health()
        self._sync_task = asyncio.create_task(self._health_sync_loop(), name="health-sync")
        self._start_metrics()
        if self.admin is not None:
            admin_port = await self.admin.start()
            if self.worker is None:
                _write_port(self.settings.admin_port_file, admin_port)
                log.info("admin service on %s:%d", self.settings.admin_host, admin_port)
        if self.settings.port_file is not None:
            self.settings.port_file.write_text(f"{self.port}\n")
        if self.worker is not None:
            self.worker.announce(pid=os.getpid(), metrics_port=self.metrics_port)
        log.info(
            "serving on %s:%d; models: %s",
            self.settings.host,
            self.port,
            ", ".join(s.name for s in self.scheduler.models()) or "none yet",
        )
        return self.port

    def _start_metrics(self) -> None:
        if self.settings.metrics_port is None:
            return
        # A worker's metrics are read by its supervisor only, on loopback.
        host = "127.0.0.1" if self.worker is not None else self.settings.host
        port = 0 if self.worker is not None else self.settings.metrics_port
        try:
            # A worker's metrics go to its supervisor over loopback only, in plain HTTP.
            tls = security.metrics_tls(self.settings) if self.worker is None else {}
            http, _ = start_http_server(port, addr=host, registry=self.registry, **tls)
        except OSError as exc:
            raise ConfigError(f"metrics: cannot listen on {host}:{port}: {exc}") from None
        self._metrics_http = http
        self.metrics_port = int(http.server_port)
        if self.worker is None:
            _write_port(self.settings.metrics_port_file, self.metrics_port)
            log.info("metrics on http://%s:%d/metrics", host, self.metrics_port)

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
        """Drain without losing a request: NOT_SERVING at once, serve on for
        ``drain_delay_s``, then new rpcs UNAVAILABLE (retryable, not CANCELLED),
        in-flight ones ``grace_period_s``, the rest UNAVAILABLE; listener last."""
        settings = self.settings
        drain = (settings.drain_delay_s, settings.grace_period_s)
        log.info("draining: NOT_SERVING, serving %.1f s more, then %.1f s of grace", *drain)
        self.servicer.ready = False
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await self.health.enter_graceful_shutdown()
        await asyncio.sleep(settings.drain_delay_s)
        await self.servicer.door.close(settings.grace_period_s)
        await self.scheduler.aclose()
        # Callers told UNAVAILABLE back off before retrying; closing only once
        # they have means no call is caught half-accepted by gRPC's own
        # shutdown, which would answer it CANCELLED.
        await asyncio.sleep(min(settings.grace_period_s, _QUIET_BEFORE_CLOSE_S))
        await self.server.stop(min(settings.grace_period_s, 1.0))
        if self.admin is not None:
            await self.admin.stop(0)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        log.info("stopped")
        # Last, so spans of the drained requests are exported.
        await asyncio.to_thread(self.tracing.shutdown)


def _write_port(path: Path | None, port: int) -> None:
    if path is not None:
        path.write_text(f"{port}\n")


async def serve(settings: Settings, worker: WorkerRole | None = None) -> None:
    """Run until SIGTERM or SIGINT, then drain and return."""
    gateway = GatewayServer(settings, configure_tracing(), worker)
    await gateway.start()
    # The objects of start-up (modules, settings, model specs) live for good:
    # keep them out of the collector's way, so its full passes stay short.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()
