"""A real OTLP collector for tests and benchmarks: ``rotel`` (PyPI ``rotel``, a Rust binary).

It receives OTLP over gRPC and HTTP (protobuf and JSON, so Triton's JSON export
too) on ephemeral loopback ports. Its "debug log" exporter prints every span it
receives, detailed, on stdout, which goes to a file here; ``spans()`` parses that
file. ``--exporter blackhole`` drops the data after printing (nothing to forward
to). It runs in its own process group and is stopped by PID.

Must not import pytest (used by loadtests/ too).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["Collector", "Span", "find_rotel", "start_collector"]


def find_rotel() -> Path:
    """The ``rotel-agent`` binary inside the installed ``rotel`` package."""
    import rotel

    binary = Path(rotel.__file__).with_name("rotel-agent")
    if not binary.exists():
        raise FileNotFoundError(f"rotel-agent not found next to {rotel.__file__}")
    return binary


@dataclass
class Span:
    """One span as the collector printed it (ids are lowercase hex)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    attributes: dict[str, str] = field(default_factory=dict)
    links: list[tuple[str, str]] = field(default_factory=list)  # (trace id, span id)
    status: str = ""
    start_ns: int = 0  # Unix epoch nanoseconds
    end_ns: int = 0


# `     -> key: Str(value)` / `Int(5)` / `Double(0.5)` / `Bool(true)`
_ATTRIBUTE = re.compile(r"^\s+-> ([^:]+): \w+\((.*)\)$")


def parse_debug_log(text: str) -> list[Span]:
    """Spans out of rotel's detailed debug output (an OpenTelemetry Collector
    ``debug`` exporter look-alike)."""
    spans: list[Span] = []
    service = ""
    current: Span | None = None
    section = ""
    link_trace = ""
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("ResourceSpans #"):
            service, current, section = "", None, "resource"
            continue
        if line.startswith("Span #"):
            current = Span("", "", "", "", "", service)
            spans.append(current)
            section = "span"
            continue
        if stripped in ("Attributes:", "Resource attributes:", "Links:", "Events:"):
            section = {"Resource attributes:": "resource", "Links:": "links"}.get(
                stripped, "attributes" if stripped == "Attributes:" else "other"
            )
            continue
        if stripped.startswith("ScopeSpans #") or stripped.startswith("InstrumentationScope"):
            section = "scope"
            continue
        match = _ATTRIBUTE.match(line)
        if section == "resource" and match and match.group(1) == "service.name":
            service = match.group(2)
            continue
        if current is None:
            continue
        key, _, value = (part.strip() for part in stripped.partition(":"))
        if section == "span" or key in ("Trace ID", "Parent ID", "ID", "Name", "Kind"):
            if key in ("Start time", "End time") and value.isdigit():
                if key == "Start time":
                    current.start_ns = int(value)
                else:
                    current.end_ns = int(value)
            elif key == "Trace ID":
                current.trace_id = value
            elif key == "Parent ID":
                current.parent_id = value
            elif key == "ID":
                current.span_id = value
            elif key == "Name":
                current.name = value
            elif key == "Kind":
                current.kind = value
            elif key == "Status code":
                current.status = value
        if section == "attributes" and match:
            current.attributes[match.group(1)] = match.group(2)
        elif section == "links":
            if stripped.startswith("-> Trace ID:"):
                link_trace = stripped.split(":", 1)[1].strip()
            elif stripped.startswith("-> ID:"):
                current.links.append((link_trace, stripped.split(":", 1)[1].strip()))
    return spans


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@dataclass
class Collector:
    """A running rotel: where to send OTLP, and what it has received so far."""

    process: subprocess.Popen[bytes]
    grpc_endpoint: str  # http://127.0.0.1:PORT, for OTEL_EXPORTER_OTLP_ENDPOINT
    http_endpoint: str  # http://127.0.0.1:PORT; traces go to /v1/traces
    output: Path

    def spans(self) -> list[Span]:
        return parse_debug_log(self.output.read_text(errors="replace"))

    def wait_for(self, check: Callable[[list[Span]], bool], timeout_s: float = 20) -> list[Span]:
        """Poll until ``check(spans)`` is true; return the spans (raise on timeout)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans()
            if check(spans):
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(f"collector: condition not met; {len(spans)} spans received")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_collector(
    workdir: Path, *, print_spans: bool = True, ready_timeout_s: float = 10
) -> Collector:
    """Start rotel on two free loopback ports and wait until both accept connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc_port, http_port = _free_ports(2)
    output = workdir / f"rotel-{grpc_port}.out"
    command = [
        str(find_rotel()),
        "start",
        f"--otlp-grpc-endpoint=127.0.0.1:{grpc_port}",
        f"--otlp-http-endpoint=127.0.0.1:{http_port}",
        "--exporter=blackhole",
        f"--pid-file={workdir / f'rotel-{grpc_port}.pid'}",
        f"--log-file={workdir / f'rotel-{grpc_port}.log'}",
        "--batch-timeout=50ms",
    ]
    if print_spans:
        command += ["--debug-log=traces", "--debug-log-verbosity=detailed"]
    with output.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=workdir
        )
    collector = Collector(
        process, f"http://127.0.0.1:{grpc_port}", f"http://127.0.0.1:{http_port}", output
    )
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rotel exited with {process.returncode}: {output.read_text()}")
        if all(_accepts(port) for port in (grpc_port, http_port)):
            return collector
        time.sleep(0.05)
    collector.stop()
    raise RuntimeError(f"rotel did not listen within {ready_timeout_s} s: {output.read_text()}")


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
