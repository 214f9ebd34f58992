"""Machine instructions per request of one server process, counted by callgrind under ghz load.

CPU time per request on a shared machine moves by tens of percent between
rounds; the instructions a request costs move by a few. ``count_per_request``
starts a server (any command that writes its port to a file once it serves)
under valgrind's callgrind with instrumentation off, warms it with ghz calls
(channels, layouts, estimates, the interpreter's specialising) until a round
of them all succeed, then counts
(``callgrind_control -i on``) while ``ghz`` sends a fixed number of
``add_sub`` calls, and stops the server. The count is split by thread
(``--separate-threads``): the first thread is the event loop's, the one that
bounds a ``grpc.aio`` server's throughput at saturation; the others are
gRPC's completion-queue poller and whatever threads the server starts.

Under callgrind a server runs some 50 times slower, so its timed work (health
probes, telemetry polls) counts for more than at full speed:
``idle_s`` also counts an equal stretch of the server's time with no load,
reported apart (``idle_*``), and the counts under load less that idle rate
over the load's duration (``net_*``): what the requests cost, the clock's
work taken out. Used by ``loadtests.tracing_instructions`` and
``loadtests.suite.instructions``. Needs ``valgrind`` and ghz.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from loadtests.suite.load import find_ghz
from loadtests.tracing_overhead import run_ghz

__all__ = [
    "GATEWAY_ENV",
    "Counted",
    "Load",
    "count_per_request",
    "gateway_command",
    "thread_totals",
    "tools_missing",
]

_START_TIMEOUT_S = 300
_WARM_CALLS = 200


def tools_missing() -> str | None:
    """Why this cannot run here (no valgrind, no ghz), or None."""
    from shutil import which

    if which("valgrind") is None or find_ghz() is None:
        return "needs valgrind and ghz ($GHZ, PATH or ../shared/tools/ghz)"
    return None


def thread_totals(out: Path) -> tuple[int, int]:
    """Instructions of the main thread and of all threads, from callgrind's
    per-thread files ``out-01``, ``out-02``, ... (``--separate-threads``)."""
    main = every = 0
    for part in sorted(out.parent.glob(f"{out.name}-*")):
        for line in part.read_text(errors="replace").splitlines():
            if line.startswith("totals:"):
                count = int(line.split()[1])
                every += count
                main += count if part.name.endswith("-01") else 0
                break
    return main, every


@dataclass(frozen=True)
class Counted:
    """One server's counts: per request under load, and per second idle."""

    requests: int
    main_per_request: float
    all_per_request: float
    errors: float
    #: ghz's wall time for the counted calls (callgrind's pace, not the server's).
    load_s: float
    #: Instructions per second of the idle stretch (0 when none was counted).
    idle_main_per_s: float = 0.0
    idle_all_per_s: float = 0.0

    @property
    def net_main_per_request(self) -> float:
        """``main_per_request`` less what the idle rate would have spent over the load."""
        return self.main_per_request - self.idle_main_per_s * self.load_s / self.requests

    @property
    def net_all_per_request(self) -> float:
        return self.all_per_request - self.idle_all_per_s * self.load_s / self.requests


def _toggle(pid: int, on: bool) -> None:
    command = ["callgrind_control", "-i", "on" if on else "off", str(pid)]
    subprocess.run(command, check=True, capture_output=True)


def _dump(pid: int) -> None:
    """Write the counts so far and zero them (callgrind's ``--dump``)."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)


@dataclass(frozen=True)
class Load:
    """The calls counted: ``requests`` at ``concurrency``, and ``idle_s`` of no load after."""

    requests: int
    concurrency: int
    idle_s: float = 0.0


#: A server's command line, given the file it writes its port to.
Command = Callable[[Path], Sequence[str]]

#: The gateway's settings under callgrind: a health probe or a discovery call
#: is slow there, and one that timed out would mark the Triton down or leave
#: the gateway serving no model, so that calls fail instead of being counted.
GATEWAY_ENV = {"GATEWAY_PROBE_TIMEOUT_S": "30", "GATEWAY_CONTROL_TIMEOUT_S": "60"}


def gateway_command(triton_url: str, port_file: Path) -> list[str]:
    """``python -m gateway serve`` in front of one Triton, as a user starts it."""
    return [
        sys.executable, "-m", "gateway", "serve",
        "--host", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
        "--triton", triton_url, "--no-cpu-models", "--log-level", "WARNING",
    ]  # fmt: skip


def count_per_request(
    label: str, command: Command, env: Mapping[str, str], *, cwd: Path, work: Path, load: Load
) -> Counted:
    """Run ``command`` under callgrind, in ``cwd``, and count its
    instructions per request; its log and callgrind's files are left in
    ``work`` as ``LABEL.log`` and ``LABEL.cg-*``."""
    requests, concurrency, idle_s = load.requests, load.concurrency, load.idle_s
    port_file = work / f"{label}.port"
    ghz = str(find_ghz())
    out = work / f"{label}.cg"
    valgrind = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
        f"--callgrind-out-file={out}",
    ]  # fmt: skip
    with (work / f"{label}.log").open("wb") as log:
        process = subprocess.Popen(
            [*valgrind, *command(port_file)],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not (port_file.exists() and port_file.read_text().strip()):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the server did not start (log in {work})")
            time.sleep(0.5)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        # Warm until a whole round succeeds: a server slowed by callgrind may
        # have missed its backend at start and be waiting for its next probe.
        while run_ghz(ghz, address, _WARM_CALLS, concurrency)["errors"]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the server's calls keep failing (log in {work})")
            time.sleep(2)
        _toggle(process.pid, True)
        began = time.monotonic()
        result = run_ghz(ghz, address, requests, concurrency)
        load_s = time.monotonic() - began
        if idle_s > 0:
            _dump(process.pid)  # the load's counts in one file, the idle stretch's in the next
            time.sleep(idle_s)
        _toggle(process.pid, False)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    loaded, idle = _parts(out, idle_s > 0)
    return Counted(
        requests=requests,
        main_per_request=loaded[0] / requests,
        all_per_request=loaded[1] / requests,
        errors=result["errors"],
        load_s=load_s,
        idle_main_per_s=idle[0] / idle_s if idle_s > 0 else 0.0,
        idle_all_per_s=idle[1] / idle_s if idle_s > 0 else 0.0,
    )


def _parts(out: Path, dumped: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(main, all) of the loaded part and of the idle part. With a dump in
    between, callgrind writes ``out.1-NN`` (the load) and ``out-NN`` (the rest)."""
    if not dumped:
        return thread_totals(out), (0, 0)
    return thread_totals(out.with_name(f"{out.name}.1")), thread_totals(out)
