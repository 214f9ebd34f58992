"""One bounded load run: ghz when it can be found, else the project's Python generator.

ghz is looked for as ``$GHZ``, then ``ghz`` on PATH, then ``../shared/tools/ghz``
beside the repository.  It is given the API as a protoset compiled once from
``protos/`` (or ``--proto``/``--import-paths`` when grpc_tools is missing), never by
reflection, and each request as the serialised bytes from ``payloads``, so ghz
spends its CPU on the calls alone.  Every run is bounded in count (``-n``) and in
time: ghz is killed past ``max_s`` (ghz 0.121's own ``-x`` drops the count
bound, so it is not used), and the run then counts as failed.

Without ghz, :class:`PythonLoad` drives the same requests with
``loadtests.loadgen.run_load`` (tritonclient, asyncio).  A Python client on a
2-core machine is the ceiling of what it measures, so its numbers are not
comparable with ghz's; it cannot drive streams at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import tritonclient.grpc as grpcclient

from loadtests.loadgen import run_load
from loadtests.suite.payloads import Payload

__all__ = ["Ghz", "LoadError", "LoadRunner", "PythonLoad", "Shot", "find_ghz"]

REPO = Path(__file__).resolve().parents[2]
SERVICE = "inference.GRPCInferenceService"


class LoadError(RuntimeError):
    """The load generator could not run (bad arguments, server unreachable)."""


@dataclass
class Shot:
    """What one load run saw.  For streams, ``calls`` are streams of ``messages_per_call``."""

    calls_ok: int
    calls_failed: int
    seconds: float
    p50_ms: float | None
    p99_ms: float | None
    client_cpu_s: float | None
    messages_per_call: int = 1
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return self.calls_ok * self.messages_per_call

    @property
    def rps(self) -> float:
        """Successful requests (messages, for streams) per second of wall time."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0


class LoadRunner(Protocol):
    name: str
    version: str
    comparable: bool

    def run(
        self,
        target: str,
        payload: Payload,
        *,
        concurrency: int,
        total: int,
        max_s: float,
        stream_messages: int | None = None,
        connections: int | None = None,
    ) -> Shot | None: ...


def find_ghz() -> Path | None:
    """``$GHZ``, ``ghz`` on PATH, or ``../shared/tools/ghz`` beside the repo; else None."""
    if explicit := os.environ.get("GHZ"):
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    if on_path := shutil.which("ghz"):
        return Path(on_path)
    shared = REPO.parent / "shared" / "tools" / "ghz"
    return shared if shared.is_file() and os.access(shared, os.X_OK) else None


def _api_args(workdir: Path) -> list[str]:
    """ghz flags naming the API: a protoset when protoc is at hand, else the .proto."""
    protoset = workdir / "inference.protoset"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{REPO / 'protos'}",
            f"--descriptor_set_out={protoset}",
            "--include_imports",
            str(REPO / "protos" / "inference" / "grpc_service.proto"),
        ],
        capture_output=True,
        check=False,
    )
    if done.returncode == 0:
        return [f"--protoset={protoset}"]
    proto = REPO / "protos" / "inference" / "grpc_service.proto"
    return [f"--proto={proto}", f"--import-paths={REPO / 'protos'}"]


class Ghz:
    """Runs ghz and reads its JSON report (``-O json``; durations in ns)."""

    name = "ghz"
    comparable = True

    def __init__(self, binary: Path, workdir: Path, connections: int = 1) -> None:
        self.binary = binary
        self.workdir = workdir
        self.connections = connections
        self.api = _api_args(workdir)
        # ghz prints its version on stderr.
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
        self.version = (done.stdout + done.stderr).strip() or "unknown"
        self._files: dict[str, Path] = {}

    def _request_file(self, payload: Payload) -> Path:
        if payload.model not in self._files:
            path = self.workdir / f"{payload.model}.bin"
            path.write_bytes(payload.request_bytes())
            self._files[payload.model] = path
        return self._files[payload.model]

    def command(
        self,
        target: str,
        payload: Payload,
        *,
        concurrency: int,
        total: int,
        stream_messages: int | None = None,
        connections: int | None = None,
    ) -> list[str]:
        """The ghz command line for one run (as the results show it);
        ``connections`` overrides the runner's own number for this run."""
        connections = connections or self.connections
        method = "ModelStreamInfer" if stream_messages else "ModelInfer"
        command = [
            str(self.binary),
            "--insecure",
            *self.api,
            f"--call={SERVICE}/{method}",
            f"--binary-file={self._request_file(payload)}",
            f"--concurrency={concurrency}",
            f"--connections={min(connections, concurrency)}",
            f"--total={total}",
            "--timeout=30s",
            "--format=json",
        ]
        if stream_messages:
            command.append(f"--stream-call-count={stream_messages}")
        return [*command, target]

    def run(
        self,
        target: str,
        payload: Payload,
        *,
        concurrency: int,
        total: int,
        max_s: float,
        stream_messages: int | None = None,
        connections: int | None = None,
    ) -> Shot:
        command = self.command(
            target,
            payload,
            concurrency=concurrency,
            total=total,
            stream_messages=stream_messages,
            connections=connections,
        )
        out_path = self.workdir / "ghz-out.json"
        err_path = self.workdir / "ghz-err.txt"
        with out_path.open("wb") as out, err_path.open("wb") as err:
            process = subprocess.Popen(command, stdout=out, stderr=err)
        returncode, client_cpu_s = _wait(process, max_s)
        text = out_path.read_text()
        if returncode != 0 or not text.strip():
            raise LoadError(f"ghz exited with {returncode}: {err_path.read_text()[-2000:]}")
        shot = _shot(json.loads(text), stream_messages or 1)
        shot.client_cpu_s = client_cpu_s
        return shot


def _wait(process: subprocess.Popen[bytes], timeout_s: float) -> tuple[int, float]:
    """Reap ``process`` with wait4 (for its CPU time); kill it past ``timeout_s``.

    Returns its exit code and the CPU seconds it used.  Ctrl-C kills it too.
    """
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                return process.returncode, usage.ru_utime + usage.ru_stime
            if time.monotonic() > deadline:
                raise LoadError(f"ghz still running after {timeout_s:g} s; killed")
            time.sleep(0.02)
    except BaseException:
        if process.returncode is None:
            process.kill()
            process.wait()
        raise


def _shot(report: dict[str, object], messages_per_call: int) -> Shot:
    statuses = dict(report.get("statusCodeDistribution") or {})  # type: ignore[call-overload]
    ok = int(statuses.pop("OK", 0))
    latency = {
        int(entry["percentage"]): entry["latency"] / 1e6
        for entry in report.get("latencyDistribution") or []  # type: ignore[attr-defined]
    }
    return Shot(
        calls_ok=ok,
        calls_failed=sum(int(n) for n in statuses.values()),
        seconds=float(report["total"]) / 1e9,  # type: ignore[arg-type]
        p50_ms=latency.get(50),
        p99_ms=latency.get(99),
        client_cpu_s=None,
        messages_per_call=messages_per_call,
        errors={str(k): int(v) for k, v in dict(report.get("errorDistribution") or {}).items()},  # type: ignore[call-overload]
    )


class PythonLoad:
    """The project's generator (tritonclient, asyncio), in this process: no streams."""

    name = "loadtests.loadgen (Python fallback)"
    comparable = False
    version = "in-process"

    def run(
        self,
        target: str,
        payload: Payload,
        *,
        concurrency: int,
        total: int,
        max_s: float,
        stream_messages: int | None = None,
        connections: int | None = None,
    ) -> Shot | None:
        # One channel whatever ``connections`` says: this generator is the
        # ceiling of what it measures anyway (see the module's docstring).
        if stream_messages:
            return None

        def make_inputs() -> list[grpcclient.InferInput]:
            tensors = []
            for name, array in payload.inputs.items():
                tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
                tensor.set_data_from_numpy(array)
                tensors.append(tensor)
            return tensors

        before = resource.getrusage(resource.RUSAGE_SELF)
        result = asyncio.run(
            run_load(
                target,
                payload.model,
                make_inputs,
                concurrency=concurrency,
                duration_s=max_s,
                max_requests=total,
                timeout_s=30,
            )
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        return Shot(
            calls_ok=result.ok,
            calls_failed=result.count - result.ok,
            seconds=result.duration_s,
            p50_ms=result.percentile_ms(50) if result.latencies_s else None,
            p99_ms=result.percentile_ms(99) if result.latencies_s else None,
            client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
            errors=dict(result.errors),
        )
