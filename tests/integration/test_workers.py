"""Several gateway workers on one port: traffic reaches all of them, the
supervisor's metrics and admin views cover every worker, a worker that dies
is replaced, and SIGTERM drains them all."""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.gateway.admin.v1 import admin_pb2 as admin_pb
from gateway.api.gateway.admin.v1 import admin_pb2_grpc as admin_grpc
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.gateway import GatewayProcess, start_gateway

ROW = np.ones((1, 16), np.float32).tobytes()
ADD_SUB = pb.ModelInferRequest(
    model_name="add_sub",
    inputs=[
        pb.ModelInferRequest.InferInputTensor(name=n, datatype="FP32", shape=[1, 16])
        for n in ("INPUT0", "INPUT1")
    ],
    raw_input_contents=[ROW, ROW],
)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _workers(gateway: GatewayProcess) -> list[int]:
    """The supervisor's worker processes (multiprocessing also starts a resource tracker)."""
    return [
        pid
        for pid in _children(gateway.pid)
        if b"multiprocessing.spawn" in Path(f"/proc/{pid}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]


def _infer_on_new_connections(address: str, count: int) -> None:
    for _ in range(count):
        # A local subchannel pool: a new TCP connection, which the kernel may
        # hand to either worker.
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(address, options=options) as channel:
            reply = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(ADD_SUB, timeout=10)
            assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0] * 16


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    workdir = tmp_path_factory.mktemp("workers")
    args = [
        "--workers",
        "2",
        "--cpu-model",
        "builtin:add_sub",
        "--metrics-port",
        "0",
        "--metrics-port-file",
        str(workdir / "metrics.port"),
        "--admin-port",
        "0",
        "--admin-port-file",
        str(workdir / "admin.port"),
    ]
    with start_gateway(workdir, args=args, ready_timeout_s=90) as gateway:
        yield gateway, workdir


def _metrics(workdir: Path) -> str:
    port = int((workdir / "metrics.port").read_text())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        return str(reply.read().decode())


def _admin(workdir: Path) -> admin_grpc.AdminServiceStub:
    port = int((workdir / "admin.port").read_text())
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    return admin_grpc.AdminServiceStub(channel)


def test_both_workers_serve_and_the_metrics_say_which(
    two_workers: tuple[GatewayProcess, Path],
) -> None:
    gateway, workdir = two_workers
    assert len(_workers(gateway)) == 2
    _infer_on_new_connections(gateway.address, 24)
    served: dict[str, float] = {}
    for family in text_string_to_metric_families(_metrics(workdir)):
        if family.name == "gateway_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["model"] == "add_sub":
                    worker = sample.labels["worker"]
                    served[worker] = served.get(worker, 0) + sample.value
    assert set(served) == {"0", "1"} and sum(served.values()) >= 24
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run(
            [promtool, "check", "metrics"], input=_metrics(workdir), capture_output=True, text=True
        )
        assert check.returncode == 0 and not check.stdout.strip(), check.stdout + check.stderr


def test_admin_shows_every_worker_and_drains_on_all(
    two_workers: tuple[GatewayProcess, Path],
) -> None:
    gateway, workdir = two_workers
    admin = _admin(workdir)
    backends = admin.ListBackends(admin_pb.ListBackendsRequest(), timeout=10).backends
    assert sorted((b.id, b.worker) for b in backends) == [("cpu", 0), ("cpu", 1)]
    _infer_on_new_connections(gateway.address, 8)
    decisions = admin.ListDecisions(admin_pb.ListDecisionsRequest(limit=50), timeout=10).decisions
    assert decisions and {d.worker for d in decisions} <= {0, 1}
    ages = [d.age_seconds for d in decisions]
    assert ages == sorted(ages)  # newest first across workers
    with pytest.raises(grpc.RpcError) as missing:
        admin.DrainBackend(admin_pb.DrainBackendRequest(backend_id="nope"), timeout=10)
    assert missing.value.code() is grpc.StatusCode.NOT_FOUND
    admin.DrainBackend(admin_pb.DrainBackendRequest(backend_id="cpu"), timeout=10)
    try:
        backends = admin.ListBackends(admin_pb.ListBackendsRequest(), timeout=10).backends
        assert [b.drained for b in backends] == [True, True]

        # A worker that dies is replaced, and the replacement keeps the drain.
        victim = _workers(gateway)[-1]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = _workers(gateway)
            backends = admin.ListBackends(admin_pb.ListBackendsRequest(), timeout=10).backends
            if len(workers) == 2 and victim not in workers and len(backends) == 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no replacement worker: {workers}, {backends}")
        assert [b.drained for b in backends] == [True, True]
    finally:
        admin.UndrainBackend(admin_pb.UndrainBackendRequest(backend_id="cpu"), timeout=10)
    _infer_on_new_connections(gateway.address, 8)
    assert gateway.is_running()
    assert "exited with -9" in gateway.log()


def test_sigterm_drains_every_worker(workdir: Path) -> None:
    args = ["--workers", "2", "--cpu-model", "tests.support.cpu_sim:gpu_sim"]
    env = {"CPU_SIM_FIXED_MS": "300", "CPU_SIM_PER_ITEM_MS": "0"}
    gateway = start_gateway(workdir, args=args, env=env, ready_timeout_s=90)
    request = pb.ModelInferRequest(
        model_name="gpu_sim",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="INPUT", datatype="FP32", shape=[1, 1])],
        raw_input_contents=[np.ones((1, 1), np.float32).tobytes()],
    )

    def call(_: int) -> grpc.StatusCode:
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(gateway.address, options=options) as channel:
            try:
                pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=20)
            except grpc.RpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    try:
        workers = _workers(gateway)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            calls = [pool.submit(call, i) for i in range(8)]
            time.sleep(0.15)  # all sent, none finished (each takes 300 ms or more)
            gateway.process.send_signal(signal.SIGTERM)
            codes = [c.result() for c in calls]
        assert gateway.process.wait(30) == 0
    finally:
        gateway.kill()
    assert codes == [grpc.StatusCode.OK] * 8
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert "gateway.supervisor: stopped" in gateway.log()
