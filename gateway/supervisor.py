"""Several gateway worker processes on one port: the supervisor that runs them.

One Python process serves as much as one core allows (the gRPC stack holds
the GIL for most of each call), so with ``workers`` > 1 the gateway runs that
many full gateway processes, each with its own event loop, scheduler and
backend connections, all listening on the same port with ``SO_REUSEPORT``:
the kernel spreads incoming connections across them. The supervisor itself
serves no inference. It

- reserves the port (also when it is 0: every worker binds the one it got),
  keeping a socket bound to it that never listens;
- starts the workers (``multiprocessing`` spawn) and waits until each has
  announced itself in the private control directory, then writes the port
  file; a worker that fails during start-up stops the whole gateway with its
  exit status (a configuration error is exit status 2);
- restarts a worker that dies, with a backoff that doubles up to 30 s;
- serves the public metrics and admin endpoints over all workers
  (``gateway.worker_views``), and remembers operator drains for workers that
  start later;
- on SIGTERM or SIGINT sends SIGTERM to every worker, each of which drains as
  a single gateway does, and waits ``grace_period_s`` (plus a margin) before
  killing what is left.

Worker 0 is the leader: it alone probes backends and polls telemetry, and
shares both with the others (``scheduler.shared_view``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from gateway.admin import AdminServer
from gateway.config import ConfigError, Settings
from gateway.security import (
    Authenticator,
    check_admin_exposure,
    metrics_tls,
    server_credentials,
)
from gateway.worker_views import FanOutAdminServicer, WorkerEndpoints, WorkerRole, WorkersCollector
from scheduler.clock import MonotonicClock

log = logging.getLogger(__name__)

#: Longest wait for every worker to serve, at start.
START_TIMEOUT_S = 120.0
#: Beyond ``grace_period_s``, how long workers get to exit before they are killed.
STOP_MARGIN_S = 5.0
_MAX_RESTART_BACKOFF_S = 30.0
_HEALTHY_RUN_S = 60.0  # a worker that ran this long restarts without backoff


def run_worker(values: dict[str, Any], index: int, count: int, control_dir: str) -> None:
    """A worker process's entry point (called by ``multiprocessing``)."""
    from gateway.logs import configure_logging
    from gateway.server import serve

    settings = Settings(**values)
    configure_logging(settings.log_level, settings.log_format, worker=index)
    role = WorkerRole(index=index, count=count, control_dir=Path(control_dir))
    try:
        asyncio.run(serve(settings, role))
    except ConfigError as exc:
        log.error("worker %d: %s", index, exc)
        raise SystemExit(2) from None


class WorkerFailed(Exception):
    """A worker could not start; the message says which and how it ended."""


@dataclass(slots=True)
class _Worker:
    role: WorkerRole
    process: BaseProcess | None = None
    started_at: float = 0.0
    backoff_s: float = 1.0
    restart_at: float = 0.0


def _reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (never listening) to ``host:port`` with SO_REUSEPORT, so
    the workers can bind the same port; port 0 picks a free one."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from None
    return sock


class Supervisor:
    """Runs ``settings.workers`` gateway workers; see the module docstring."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.control_dir = Path(tempfile.mkdtemp(prefix="inference-gateway-", dir=base))
        self._reserved = _reserve_port(settings.host, settings.port)
        self.port = int(self._reserved.getsockname()[1])
        # Each worker serves the reserved port and nothing the supervisor serves.
        self._worker_values = settings.model_dump(mode="json") | {
            "port": self.port,
            "port_file": None,
            "metrics_port_file": None,
            "admin_port": None,
            "admin_port_file": None,
            "workers": 1,
        }
        self._context = multiprocessing.get_context("spawn")
        self._workers = [
            _Worker(WorkerRole(index=i, count=settings.workers, control_dir=self.control_dir))
            for i in range(settings.workers)
        ]
        self._drained: set[str] = set()
        self._stopping = False
        self.admin: AdminServer | None = None
        self._admin_servicer: FanOutAdminServicer | None = None
        self._metrics_http: Any = None

    def endpoints(self) -> list[WorkerEndpoints]:
        return [e for w in self._workers if (e := w.role.endpoints()) is not None]

    def _spawn(self, worker: _Worker) -> None:
        worker.role.ready_file.unlink(missing_ok=True)
        args = (self._worker_values, worker.role.index, worker.role.count, str(self.control_dir))
        process = self._context.Process(
            target=run_worker, args=args, name=f"gateway-worker-{worker.role.index}"
        )
        process.start()
        worker.process = process
        worker.started_at = time.monotonic()

    def _note_drain(self, backend_id: str, drained: bool) -> None:
        (self._drained.add if drained else self._drained.discard)(backend_id)
        self._workers[0].role.drained_file.write_text(json.dumps(sorted(self._drained)))

    async def start(self) -> None:
        for worker in self._workers:
            self._spawn(worker)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.role.ready_file.exists() for w in self._workers):
            for worker in self._workers:
                process = worker.process
                if process is not None and process.exitcode is not None:
                    await self._stop_workers()
                    message = (
                        f"worker {worker.role.index} stopped during start-up with exit status "
                        f"{process.exitcode} (its log says why)"
                    )
                    raise ConfigError(message) if process.exitcode == 2 else WorkerFailed(message)
            if time.monotonic() > deadline:
                await self._stop_workers()
                raise WorkerFailed(f"the workers were not serving within {START_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)
        self._start_views()
        if self.admin is not None:
            admin_port = await self.admin.start()
            if self.settings.admin_port_file is not None:
                self.settings.admin_port_file.write_text(f"{admin_port}\n")
            log.info("admin service on %s:%d", self.settings.admin_host, admin_port)
        if self.settings.port_file is not None:
            self.settings.port_file.write_text(f"{self.port}\n")
        log.info(
            "serving on %s:%d with %d workers (pids %s)",
            self.settings.host,
            self.port,
            len(self._workers),
            ", ".join(str(w.process.pid) for w in self._workers if w.process is not None),
        )

    def _start_views(self) -> None:
        settings = self.settings
        check_admin_exposure(settings)
        if settings.metrics_port is not None:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(WorkersCollector(self.endpoints))
            try:
                self._metrics_http, _ = start_http_server(
                    settings.metrics_port,
                    addr=settings.host,
                    registry=registry,
                    **metrics_tls(settings),
                )
            except OSError as exc:
                address = f"{settings.host}:{settings.metrics_port}"
                raise ConfigError(f"metrics: cannot listen on {address}: {exc}") from None
            port = int(self._metrics_http.server_port)
            if settings.metrics_port_file is not None:
                settings.metrics_port_file.write_text(f"{port}\n")
        if settings.admin_port is not None:
            self._admin_servicer = FanOutAdminServicer(self.endpoints, self._note_drain)
            self.admin = AdminServer(
                self._admin_servicer,
                address=f"{settings.admin_host}:{settings.admin_port}",
                token=settings.admin_token,
                # Identities only: the workers keep the tenants' quotas.
                auth=Authenticator(settings.tenants, MonotonicClock())
                if settings.tenants
                else None,
                credentials=server_credentials(settings),
            )

    async def watch(self, stop: asyncio.Event) -> None:
        """Restart workers that die, until ``stop`` is set."""
        while not stop.is_set():
            now = time.monotonic()
            for worker in self._workers:
                process = worker.process
                if process is None or process.exitcode is None:
                    continue
                if worker.restart_at == 0.0:
                    ran_s = now - worker.started_at
                    if ran_s > _HEALTHY_RUN_S:
                        worker.backoff_s = 1.0
                    worker.restart_at = now + worker.backoff_s
                    log.error(
                        "worker %d (pid %d) exited with %s after %.0f s; restarting in %.0f s",
                        worker.role.index,
                        process.pid,
                        process.exitcode,
                        ran_s,
                        worker.backoff_s,
                    )
                    worker.backoff_s = min(worker.backoff_s * 2, _MAX_RESTART_BACKOFF_S)
                elif now >= worker.restart_at:
                    worker.restart_at = 0.0
                    self._spawn(worker)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)

    async def _stop_workers(self) -> None:
        processes = [w.process for w in self._workers if w.process is not None]
        for process in processes:
            if process.exitcode is None and process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        settings = self.settings
        drain_s = settings.drain_delay_s + settings.grace_period_s
        deadline = time.monotonic() + drain_s + STOP_MARGIN_S
        while any(p.exitcode is None for p in processes) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in processes:
            if process.exitcode is None:
                log.error("worker pid %s did not drain in time; killing it", process.pid)
                process.kill()
            process.join(5)

    async def stop(self) -> None:
        log.info("draining %d workers", len(self._workers))
        await self._stop_workers()
        if self.admin is not None:
            await self.admin.stop(0)
        if self._admin_servicer is not None:
            await self._admin_servicer.aclose()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        self._reserved.close()
        shutil.rmtree(self.control_dir, ignore_errors=True)
        log.info("stopped")


async def supervise(settings: Settings) -> None:
    """Run ``settings.workers`` workers until SIGTERM or SIGINT, then drain them all."""
    supervisor = Supervisor(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await supervisor.start()
        await supervisor.watch(stop)
    finally:
        await supervisor.stop()
