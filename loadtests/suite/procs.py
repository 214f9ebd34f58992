"""Servers the suite starts, each in a process group of its own, and their CPU time.

Every server leads a new session (``start_new_session=True``), so a Ctrl-C typed in
the terminal reaches only the suite, which then stops each server itself: SIGTERM to
the whole group, SIGKILL to the group after a grace period.  :class:`Fleet` holds
every server (and any other closer, such as a Triton from tests/support/triton.py);
leaving it — normally, by an exception, by KeyboardInterrupt, or by SIGTERM, which
:func:`exit_on_sigterm` turns into SystemExit — stops them in reverse start order,
with SIGINT and SIGTERM ignored meanwhile so that a second Ctrl-C cannot cut the
clean-up short.

CPU time is read from ``/proc/PID/stat``: ``utime + stime`` of every live process in
the tree under a root PID (workers, Triton's Python backend stubs), plus ``cutime +
cstime`` (children already exited and reaped), in clock ticks, so a process tree's
CPU over a load run is the difference of two readings.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

__all__ = ["Fleet", "ServerProcess", "ServerStartError", "exit_on_sigterm", "tree_cpu_s"]

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
#: Signals that must not cut the clean-up short.
_MASKED = (signal.SIGINT, signal.SIGTERM)


class ServerStartError(RuntimeError):
    """A server exited or did not become ready; the message ends with its log."""


def _process_table() -> dict[int, tuple[int, int]]:
    """``pid -> (ppid, CPU ticks including reaped children)`` for every live process."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                raw = stat.read()
        except OSError:  # gone while we looked
            continue
        # The command name is parenthesised and may hold spaces: split after it.
        fields = raw[raw.rindex(b")") + 2 :].split()
        # state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        # utime stime cutime cstime ...
        ticks = sum(int(value) for value in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), ticks)
    return table


def tree_cpu_s(roots: Iterable[int]) -> dict[int, float]:
    """CPU seconds used so far by each root's process tree (one /proc scan for all).

    A root that is gone reads 0.0; its tree's earlier CPU is then lost, which the
    caller notices as a server that is no longer running.
    """
    table = _process_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    totals: dict[int, float] = {}
    for root in roots:
        ticks, todo, seen = 0, [root], set()
        while todo:
            pid = todo.pop()
            if pid in seen or pid not in table:
                continue
            seen.add(pid)
            ticks += table[pid][1]
            todo.extend(children.get(pid, ()))
        totals[root] = ticks / _TICKS_PER_S
    return totals


@dataclass
class ServerProcess:
    """One started server: the leader of its own process group, and its log."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as error:
            return f"<no log: {error}>"

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL the group; reap."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(grace_s)
        # Whatever of the group outlived its leader (workers, stubs) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)


@dataclass
class Fleet:
    """Every process the suite started, stopped in reverse order by :meth:`close`."""

    workdir: Path
    #: Every server's root PID and name, for reports.
    names: dict[int, str] = field(default_factory=dict)
    _closers: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def adopt(self, name: str, closer: Callable[[], object], pid: int | None = None) -> None:
        """Have :meth:`close` call ``closer`` (e.g. a Triton's ``stop``)."""
        self._closers.append((name, closer))
        if pid is not None:
            self.names[pid] = name

    def launch(
        self,
        name: str,
        argv: Sequence[str],
        *,
        ready: Callable[[str], bool],
        port_file: Path | None = None,
        address: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout_s: float = 60.0,
    ) -> ServerProcess:
        """Start ``argv`` in a new session and wait until ``ready(address)`` is true.

        The address is ``address``, or ``127.0.0.1:PORT`` once the server has written
        its port to ``port_file``.  The server is stopped by :meth:`close` from the
        moment it is started, so a failed start leaks nothing either.
        """
        log_path = self.workdir / f"{name}.log"
        if port_file is not None:
            port_file.unlink(missing_ok=True)  # a stale one from an earlier run misleads
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        server = ServerProcess(name, popen, log_path)
        self.adopt(name, server.stop, server.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not server.running():
                raise ServerStartError(
                    f"{name} exited with {popen.returncode}:\n{server.log_tail()}"
                )
            if not server.address:
                server.address = address or _read_port(port_file)
            if server.address and ready(server.address):
                return server
            time.sleep(0.1)
        raise ServerStartError(f"{name} not ready within {timeout_s:g} s:\n{server.log_tail()}")

    def close(self) -> None:
        """Stop everything, newest first; SIGINT and SIGTERM meanwhile are ignored."""
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _MASKED}
        try:
            while self._closers:
                name, closer = self._closers.pop()
                try:
                    closer()
                except Exception as error:  # keep stopping the others
                    print(f"suite: stopping {name} failed: {error!r}", flush=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with Fleet(...)`` blocks stop their servers."""

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def _read_port(port_file: Path | None) -> str:
    if port_file is None:
        return ""
    try:
        text = port_file.read_text().strip()
    except OSError:
        return ""
    return f"127.0.0.1:{int(text)}" if text.isdigit() else ""
