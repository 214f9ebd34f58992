"""Start and stop a real ``tritonserver`` (2.51, from the ``nvidia-pytriton`` wheel) for tests.

The wheel ships the server binary, the Python backend and one backend stub per Python
version.  This module assembles a backend directory out of symlinks to them, picks free
loopback ports, starts the server in its own process group with its log in a file, waits
until the server *and every model* are ready, and stops it again without leaving
processes behind (finding the binary, the backend directory and the ports:
``tests.support.triton_install``).  It is used by the tests and by the benchmark
scripts in loadtests/, so it must not import pytest.

Typical use::

    with start_triton(MODEL_REPOSITORY, workdir) as triton:
        client = tritonclient.grpc.InferenceServerClient(triton.grpc_url)
        ...

Per-server settings of the simulated models (``gpu_sim``, ``gpu_sim_tb``) are passed
through the environment: ``start_triton(..., env={"GPU_SIM_FIXED_MS": "50"})``.  The
Python backend stub that runs ``model.py`` is a child of tritonserver and inherits its
environment (checked by tests/test_triton_harness.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.triton_install import (
    TritonNotInstalledError,
    find_pytriton_root,
    find_tritonserver,
    free_ports,
    make_backend_dir,
    model_names,
)

__all__ = [
    "MODEL_REPOSITORY",
    "TritonNotInstalledError",
    "TritonProcess",
    "TritonStartError",
    "find_pytriton_root",
    "find_tritonserver",
    "free_ports",
    "make_backend_dir",
    "model_names",
    "start_triton",
]

#: The repository of small Python-backend models shipped with the tests.
MODEL_REPOSITORY: Path = Path(__file__).resolve().parents[1] / "models" / "triton"

# Triton's messages when a listening socket cannot be bound, e.g.
# "failed to start GRPC service: Unavailable - Socket '127.0.0.1:8001' already in use".
_ADDRESS_IN_USE_MARKERS = ("already in use", "address in use")

#: How many times start_triton picks fresh ports after losing a port race.
_PORT_ATTEMPTS = 5

_LOG_TAIL_LINES = 60


class TritonStartError(RuntimeError):
    """tritonserver did not become ready; the message ends with the tail of its log."""


def _process_group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes in process group ``pgid``, read from /proc."""
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process exited while we looked
            continue
        # Fields after the parenthesised command name: state ppid pgrp ...
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _group_exists(pgid: int) -> bool:
    """True while any process, zombies included, is in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove_shared_memory(server_id: str) -> None:
    """Delete the Python backend's /dev/shm regions of a server that is gone.

    A server that exits cleanly removes them itself; one that is SIGKILLed (or fails to
    start) leaves about 1 MiB per model instance behind.  The prefix is unique to the
    server (see ``_command``), so this never touches another server's regions.
    """
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(f"{server_id}_*"):
            region.unlink(missing_ok=True)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


@dataclass
class TritonProcess:
    """A running tritonserver started by :func:`start_triton`.

    ``grpc_url`` and ``http_url`` are ``"127.0.0.1:PORT"`` (the form tritonclient
    expects); ``metrics_url`` is the full Prometheus URL ``http://127.0.0.1:PORT/metrics``.
    The server leads its own process group (pgid == pid), which also holds the Python
    backend stubs, so signals go to the whole group.
    """

    pid: int
    grpc_url: str
    http_url: str
    metrics_url: str
    log_path: Path
    grpc_port: int
    http_port: int
    metrics_port: int
    server_id: str
    _popen: subprocess.Popen[bytes] = field(repr=False, compare=False)

    def is_running(self) -> bool:
        """True while the tritonserver process itself has not exited."""
        return self._popen.poll() is None

    def stop(self, timeout_s: float = 10) -> int | None:
        """Stop the server: SIGTERM to its process group, SIGKILL after ``timeout_s``.

        Waits until the server is reaped and no process of its group (backend stubs)
        is left.  Returns the server's exit status.  Safe to call more than once.
        """
        deadline = time.monotonic() + timeout_s
        if self._popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        # Stubs normally exit with the server; wait for them within the same budget.
        while _process_group_members(self.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._popen.poll() is None or _process_group_members(self.pid):
            self.kill()
        _remove_shared_memory(self.server_id)
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL the server and its whole process group at once, and reap the server.

        Meant for fault-injection tests (a crashed server); :meth:`stop` is the clean way.
        The server's shared-memory regions in /dev/shm are removed afterwards.
        """
        _signal_group(self.pid, signal.SIGKILL)
        self._popen.wait()
        # The killed stubs outlive the server as zombies owned by init until it reaps
        # them (about 1-2 s on the dev VMs, whose init reaps periodically).  Wait for
        # that, bounded, so callers observe a group that is gone; zombies hold no
        # resources, so an init that never reaps only costs this wait.
        deadline = time.monotonic() + 5
        while _group_exists(self.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        _remove_shared_memory(self.server_id)

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the server's log."""
        return _tail(self.log_path, lines)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<no log: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def _http_get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    """GET ``url``; return (status, body), with status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), b""
    except (OSError, ValueError):
        return 0, b""


def _is_ours_and_ready(http_base: str, server_id: str, models: Sequence[str]) -> bool:
    """Ready check that also proves the HTTP port is served by *our* process.

    ``--id`` shows up as ``name`` in the server metadata; checking it guards against a
    port race in which another server took the port we picked.
    """
    status, body = _http_get(f"{http_base}/v2")
    if status != 200:
        return False
    try:
        if json.loads(body).get("name") != server_id:
            return False
    except ValueError:
        return False
    # /v2/health/ready is "server live and all models ready" (strict readiness);
    # asking per model as well keeps this true if extra_args relax that.
    if _http_get(f"{http_base}/v2/health/ready")[0] != 200:
        return False
    return all(_http_get(f"{http_base}/v2/models/{name}/ready")[0] == 200 for name in models)


def _child_environment(env: Mapping[str, str] | None) -> dict[str, str]:
    """tritonserver's environment: ours, plus ``env``, with this interpreter's bin first.

    The Python backend runs models with the ``python`` found on PATH (PYTHONPATH is
    ignored), so the venv's bin must come first for ``import numpy`` to work.
    """
    child = dict(os.environ)
    if env:
        child.update(env)
    bin_dir = str(Path(sys.executable).parent)
    child["PATH"] = os.pathsep.join([bin_dir, child.get("PATH", "")])
    return child


def _command(
    binary: Path,
    model_repository: Path,
    backend_dir: Path,
    ports: Sequence[int],
    server_id: str,
    extra_args: Sequence[str],
) -> list[str]:
    grpc_port, http_port, metrics_port = ports
    return [
        str(binary),
        f"--id={server_id}",
        f"--model-repository={model_repository}",
        f"--backend-directory={backend_dir}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc_port}",
        "--http-address=127.0.0.1",
        f"--http-port={http_port}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics_port}",
        # Shut down quickly: in-flight requests in tests are short.
        "--exit-timeout-secs=5",
        "--log-verbose=0",
        # The Python backend names its shared-memory regions with this prefix; a unique
        # prefix per server keeps concurrently running servers from colliding in /dev/shm.
        f"--backend-config=python,shm-region-prefix-name={server_id}_",
        *extra_args,
    ]


def start_triton(
    model_repository: Path,
    workdir: Path,
    *,
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 90,
    ports: Sequence[int] | None = None,
) -> TritonProcess:
    """Start tritonserver on free loopback ports and wait until it and all models are ready.

    ``workdir`` receives the backend directory and the server log
    (``tritonserver-<id>.log``).  ``extra_args`` are appended to the command line (later
    flags win); ``env`` is added to this process's environment for the server and its
    backend stubs.  The server runs in its own process group.  If a picked port turns out
    to be taken, the start is retried with fresh ports.  On any other failure, or when
    ``ready_timeout_s`` (for all attempts together) runs out, the server is killed and
    :class:`TritonStartError` is raised with the tail of the log.
    """
    binary = find_tritonserver()
    model_repository = Path(model_repository).resolve()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backend_dir = make_backend_dir(workdir / "backends")
    models = model_names(model_repository)
    child_env = _child_environment(env)
    deadline = time.monotonic() + ready_timeout_s

    for attempt in range(1, _PORT_ATTEMPTS + 1):
        server_id = f"triton_{uuid.uuid4().hex[:12]}"
        # Given ports (grpc, http, metrics) restart a server where clients
        # expect it, so a port race is not retried with others then.
        chosen = list(ports) if ports is not None else free_ports(3)
        log_path = workdir / f"tritonserver-{server_id}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                _command(binary, model_repository, backend_dir, chosen, server_id, extra_args),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
                cwd=workdir,
                start_new_session=True,  # own process group: stop() signals the stubs too
            )
        process = TritonProcess(
            pid=popen.pid,
            grpc_url=f"127.0.0.1:{chosen[0]}",
            http_url=f"127.0.0.1:{chosen[1]}",
            metrics_url=f"http://127.0.0.1:{chosen[2]}/metrics",
            log_path=log_path,
            grpc_port=chosen[0],
            http_port=chosen[1],
            metrics_port=chosen[2],
            server_id=server_id,
            _popen=popen,
        )
        try:
            outcome = _wait_ready(process, models, deadline)
        except BaseException:  # KeyboardInterrupt included: never leak a server
            process.kill()
            raise
        if outcome == "ready":
            return process
        process.kill()
        log_tail = process.log_tail()
        if outcome == "address-in-use" and attempt < _PORT_ATTEMPTS and ports is None:
            continue
        reason = {
            "address-in-use": f"ports still in use after {attempt} attempts",
            "exited": f"tritonserver exited with status {popen.returncode}",
            "timeout": f"not ready within {ready_timeout_s:g} s",
        }[outcome]
        raise TritonStartError(f"{reason}; log {log_path} ends with:\n{log_tail}")
    raise AssertionError("unreachable")  # the loop always returns or raises


def _wait_ready(process: TritonProcess, models: Sequence[str], deadline: float) -> str:
    """Poll until ready; return "ready", "exited", "address-in-use" or "timeout"."""
    http_base = f"http://{process.http_url}"
    for delay in _backoff():
        if not process.is_running():
            log = process.log_tail(_LOG_TAIL_LINES * 4).lower()
            if any(marker in log for marker in _ADDRESS_IN_USE_MARKERS):
                return "address-in-use"
            return "exited"
        # The metrics endpoint starts right after HTTP; make sure it answers too.
        if (
            _is_ours_and_ready(http_base, process.server_id, models)
            and _http_get(process.metrics_url)[0] == 200
            and process.is_running()
        ):
            return "ready"
        if time.monotonic() >= deadline:
            return "timeout"
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
    raise AssertionError("unreachable")


def _backoff() -> Iterator[float]:
    """Poll delays: fast at first (startup takes ~seconds), then at most every 0.5 s."""
    delay = 0.05
    while True:
        yield delay
        delay = min(delay * 1.5, 0.5)
