"""Start and stop the real gateway as a separate process, for tests and benchmarks.

The gateway is started exactly as a user starts it (``python -m gateway serve``),
on an ephemeral port that it writes to a port file once it is serving; the
harness waits for that file and for gRPC health to say SERVING, with a bound.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["GatewayProcess", "GatewayStartError", "start_gateway"]

_REPO = Path(__file__).resolve().parents[2]


class GatewayStartError(RuntimeError):
    pass


@dataclass
class GatewayProcess:
    """A running gateway: its PID, address and log."""

    process: subprocess.Popen[bytes]
    address: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_running(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout_s: float = 30) -> int:
        """SIGTERM (graceful drain) and wait; SIGKILL if it does not exit in time."""
        if self.is_running():
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise

    def kill(self) -> None:
        if self.is_running():
            self.process.kill()
        self.process.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate()


def rss_bytes(pid: int) -> int:
    """The resident set size of process ``pid``, from ``/proc``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def _serving(address: str, credentials: grpc.ChannelCredentials | None = None) -> bool:
    channel = (
        grpc.insecure_channel(address)
        if credentials is None
        else grpc.secure_channel(address, credentials)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_gateway(
    workdir: Path,
    *,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 30,
    credentials: grpc.ChannelCredentials | None = None,
    repo: Path | None = None,
) -> GatewayProcess:
    """Start ``python -m gateway serve --port 0`` with ``args``; wait until serving
    (asked over TLS with ``credentials``, when the gateway serves TLS). ``repo``:
    run the code of another checkout (a benchmark's baseline), not this one."""
    workdir.mkdir(parents=True, exist_ok=True)
    port_file = workdir / f"gateway-{time.monotonic_ns()}.port"
    log_path = port_file.with_suffix(".log")
    command = [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--port-file",
        str(port_file),
        *args,
    ]
    child_env = {**os.environ, **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, cwd=repo or _REPO, env=child_env, stdout=log, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise GatewayStartError(
                f"gateway exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
            )
        if port_file.exists() and port_file.read_text().strip():
            address = f"127.0.0.1:{int(port_file.read_text())}"
            if _serving(address, credentials):
                return GatewayProcess(process, address, log_path)
        time.sleep(0.05)
    process.kill()
    process.wait(5)
    raise GatewayStartError(
        f"gateway not serving within {ready_timeout_s} s:\n{log_path.read_text()[-3000:]}"
    )
