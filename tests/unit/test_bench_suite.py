"""The benchmark suite's own machinery (loadtests/suite): no ghz, Triton or gateway needed.

What must hold for its figures to be trusted: CPU time is summed over a whole process
tree; every process it starts is gone when it stops, grandchildren included; a ghz
report is read correctly; targets compare with the right reference and never PASS
on missing data; documented ghz commands are only ever sent to loopback.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtests.suite.floors import canned_handler, canned_stream_handler
from loadtests.suite.ghz_check import localise
from loadtests.suite.load import Ghz, _shot
from loadtests.suite.payloads import ADD_SUB, canned_response, canned_stream_response
from loadtests.suite.procs import Fleet, tree_cpu_s
from loadtests.suite.report import evaluate
from loadtests.suite.runner import Summary

# A parent that starts a CPU-burning child and then serves "ready" through a port file.
_PARENT = """
import subprocess, sys, time, pathlib
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nend = time.process_time() + 0.3\\nwhile time.process_time() < end: pass\\n"
    "time.sleep(60)"])
pathlib.Path(sys.argv[1]).write_text(f"{child.pid}\\n")
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_tree_cpu_counts_children_and_fleet_stops_the_whole_group(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    with Fleet(tmp_path) as fleet:
        server = fleet.launch(
            "parent",
            [sys.executable, "-c", _PARENT, str(child_file)],
            ready=lambda address: child_file.exists() and child_file.read_text().endswith("\n"),
            address="127.0.0.1:1",
            timeout_s=30,
        )
        child = int(child_file.read_text())
        deadline = time.monotonic() + 20
        while tree_cpu_s([server.pid])[server.pid] < 0.25 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tree_cpu_s([server.pid])[server.pid] >= 0.25  # the child's burn counts
        assert fleet.names[server.pid] == "parent"
    assert not _alive(server.pid)
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:  # reaped by init, eventually
        time.sleep(0.05)
    assert not _alive(child)


def test_tree_cpu_of_a_missing_process_is_zero() -> None:
    assert tree_cpu_s([2**22 + 12345]) == {2**22 + 12345: 0.0}
    assert tree_cpu_s([os.getpid()])[os.getpid()] > 0


def test_ghz_report_is_read_with_streams_counted_by_message() -> None:
    report = {
        "count": 12,
        "total": 2_000_000_000,
        "statusCodeDistribution": {"OK": 10, "Unavailable": 2},
        "errorDistribution": {"rpc error: code = Unavailable": 2},
        "latencyDistribution": [
            {"percentage": 50, "latency": 1_500_000},
            {"percentage": 99, "latency": 9_000_000},
        ],
    }
    shot = _shot(report, messages_per_call=100)
    assert (shot.calls_ok, shot.calls_failed, shot.messages) == (10, 2, 1000)
    assert shot.rps == pytest.approx(500.0)
    assert (shot.p50_ms, shot.p99_ms) == (1.5, 9.0)


def _summary(route: str, level: int, **figures: float) -> Summary:
    fields = {"rps", "p50_ms", "p99_ms", "front_cpu_us", "triton_cpu_us", "client_cpu_us"}
    values = {name: figures.get(name) for name in fields}
    return Summary(route=route, concurrency=level, rounds=3, **values)  # type: ignore[arg-type]


def test_targets_compare_with_the_strongest_reference_and_never_pass_on_missing_data() -> None:
    medians = {
        "passthrough": {
            1: _summary("passthrough", 1, p50_ms=1.0),
            64: _summary("passthrough", 64, front_cpu_us=430.0),
        },
        "floor_b": {64: _summary("floor_b", 64, front_cpu_us=400.0)},
        "triton": {1: _summary("triton", 1, p50_ms=0.4)},
        "batching": {256: _summary("batching", 256, rps=3000.0, front_cpu_us=300.0)},
        "triton_batcher": {256: _summary("triton_batcher", 256, rps=6000.0)},
        "floor_a": {64: _summary("floor_a", 64, front_cpu_us=220.0)},
        "cpu": {64: _summary("cpu", 64, front_cpu_us=300.0)},
        "stream": {16: _summary("stream", 16, front_cpu_us=140.0)},
        "stream_floor": {16: _summary("stream_floor", 16, front_cpu_us=100.0)},
    }
    cpu, p50, batch_cpu, batch_rps, mlserver, stream, to_floor, workers = evaluate(medians)
    assert (cpu.verdict, cpu.value) == ("PASS", pytest.approx(1.075))
    assert p50.verdict == "FAIL" and p50.value == pytest.approx(0.6)
    assert batch_cpu.verdict == "FAIL"  # 300 / 220 > 1.2
    assert batch_rps.verdict == "FAIL"  # 0.5 of Triton's batcher
    assert mlserver.verdict.startswith("n/a")  # MLServer absent: never PASS
    assert stream.verdict == "PASS"
    assert (to_floor.verdict, to_floor.value) == ("info", pytest.approx(1.4))
    assert workers.verdict.startswith("n/a")


def test_workers_compare_over_the_same_several_connections(tmp_path: Path) -> None:
    # SO_REUSEPORT balances connections: over one, a second worker idles, so
    # the comparison is 2 workers against 1 on the same many connections.
    medians = {
        "cpu": {64: _summary("cpu", 64, rps=2000.0)},  # one connection: not the reference
        "workers1": {64: _summary("workers1", 64, rps=1000.0)},
        "workers2": {64: _summary("workers2", 64, rps=1500.0)},
    }
    workers = evaluate(medians)[-1]
    assert (workers.verdict, workers.value) == ("PASS", pytest.approx(1.5))
    ghz = Ghz.__new__(Ghz)  # no binary needed to build a command line
    ghz.binary, ghz.workdir, ghz.connections, ghz.api = Path("/opt/ghz"), tmp_path, 1, []
    ghz._files = {}
    argv = ghz.command("127.0.0.1:1", ADD_SUB, concurrency=64, total=10, connections=8)
    assert "--connections=8" in argv
    assert "--connections=1" in ghz.command("127.0.0.1:1", ADD_SUB, concurrency=64, total=10)


def test_documented_ghz_commands_only_reach_the_local_gateway() -> None:
    ghz = Path("/opt/ghz")
    argv = localise("ghz --config x.json 10.0.0.7:8001", ghz, "127.0.0.1:5555")
    assert argv == ["/opt/ghz", "-O", "json", "--config", "x.json", "127.0.0.1:5555"]
    argv = localise("ghz --config x.json -n 5 -O json", ghz, "127.0.0.1:5555")
    assert argv[-1] == "127.0.0.1:5555" and argv.count("-O") == 1


async def test_floor_a_answers_the_canned_add_sub_reply() -> None:
    from gateway.api.inference import grpc_service_pb2 as pb

    reply = await canned_handler()(ADD_SUB.request_bytes(), None)  # type: ignore[arg-type]
    assert reply == canned_response()
    decoded = pb.ModelInferResponse.FromString(reply)
    assert [o.name for o in decoded.outputs] == ["OUTPUT0", "OUTPUT1"]
    assert [len(raw) for raw in decoded.raw_output_contents] == [64, 64]


async def test_the_stream_floor_answers_each_message_in_order() -> None:
    from gateway.api.inference import grpc_service_pb2 as pb

    async def messages() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield ADD_SUB.request_bytes()

    replies = [r async for r in canned_stream_handler()(messages(), None)]  # type: ignore[arg-type]
    assert replies == [canned_stream_response()] * 3
    decoded = pb.ModelStreamInferResponse.FromString(replies[0])
    assert decoded.infer_response.SerializeToString() == canned_response()
