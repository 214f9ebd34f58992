"""Lifecycle against real processes: a Triton that dies mid-service, SIGTERM
draining in-flight work, health, reflection (grpcurl) and start-up errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, free_ports, start_triton

SLOW_MS = 1500


@pytest.fixture(scope="module")
def slow_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A Triton of its own (this module kills it) whose gpu_sim takes SLOW_MS per call."""
    env = {"GPU_SIM_FIXED_MS": str(SLOW_MS), "GPU_SIM_PER_ITEM_MS": "0"}
    with start_triton(MODEL_REPOSITORY, tmp_path_factory.mktemp("slow-triton"), env=env) as server:
        yield server


def _gpu_sim_input() -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT", [1, 4], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 4), np.float32))
    return tensor


def test_sigterm_drains_in_flight_requests(slow_triton: TritonProcess, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, args=["--triton", slow_triton.grpc_url, "--no-cpu-models"])
    client = grpcclient.InferenceServerClient(gw.address)
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["result"] = client.infer("gpu_sim", [_gpu_sim_input()]).as_numpy("OUTPUT")
        except InferenceServerException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=call)
    worker.start()
    time.sleep(SLOW_MS / 1000 / 3)  # the request is in flight in Triton
    code = gw.terminate(timeout_s=30)
    worker.join(30)
    assert code == 0, gw.log()
    assert "error" not in outcome, outcome
    np.testing.assert_array_equal(outcome["result"], np.full((1, 4), 2.0, np.float32))
    assert "draining" in gw.log()
    with pytest.raises(InferenceServerException):  # and nothing listens any more
        grpcclient.InferenceServerClient(gw.address).is_server_live(client_timeout=2)


def test_deadline_ends_a_slow_request_on_time(slow_triton: TritonProcess, tmp_path: Path) -> None:
    with start_gateway(tmp_path, args=["--triton", slow_triton.grpc_url, "--no-cpu-models"]) as gw:
        client = grpcclient.InferenceServerClient(gw.address)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as info:
            client.infer("gpu_sim", [_gpu_sim_input()], client_timeout=0.3)
        assert info.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert time.monotonic() - started < SLOW_MS / 1000
        ok = client.infer("gpu_sim", [_gpu_sim_input()], client_timeout=10)
        assert ok.as_numpy("OUTPUT").tolist() == [[2.0] * 4]


def test_dead_triton_gives_unavailable_promptly(slow_triton: TritonProcess, tmp_path: Path) -> None:
    with start_gateway(
        tmp_path,
        args=["--triton", slow_triton.grpc_url, "--no-cpu-models"],
        env={"GATEWAY_HEALTH_INTERVAL_S": "0.2"},
    ) as gw:
        client = grpcclient.InferenceServerClient(gw.address)
        assert client.is_model_ready("int64_offset")
        slow_triton.kill()
        tensor = grpcclient.InferInput("INPUT", [1, 2], "INT64")
        tensor.set_data_from_numpy(np.array([[1, 2]], np.int64))
        for _ in range(2):  # the first finds it down, the second is refused at once
            started = time.monotonic()
            with pytest.raises(InferenceServerException) as info:
                client.infer("int64_offset", [tensor], client_timeout=30)
            assert time.monotonic() - started < 5
            assert info.value.status() == "StatusCode.UNAVAILABLE", info.value.message()
            # Where the backends run is no caller's business (issue 9): not in the message.
            assert slow_triton.grpc_url not in info.value.message()
        time.sleep(0.6)  # health probes run: the model stays known, and unavailable
        with pytest.raises(InferenceServerException) as info:
            client.infer("int64_offset", [tensor], client_timeout=30)
        assert info.value.status() == "StatusCode.UNAVAILABLE", info.value.message()
        assert not client.is_model_ready("int64_offset")
        states = {m.name: m.state for m in client.get_model_repository_index().models}
        assert states["int64_offset"] == "UNAVAILABLE"
        assert client.is_server_live()


def test_unreachable_triton_at_start_keeps_cpu_serving(tmp_path: Path) -> None:
    (dead_port,) = free_ports(1)
    with start_gateway(tmp_path, args=["--triton", f"127.0.0.1:{dead_port}"]) as gw:
        client = grpcclient.InferenceServerClient(gw.address)
        assert client.is_model_ready("add_sub")
        assert "is not available" in gw.log()


def test_health_per_service(cpu_gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(cpu_gateway.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _grpcurl(*args: str) -> str:
    binary = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    if binary is None:
        pytest.fail("grpcurl not installed: run `make dev`")
    done = subprocess.run([binary, "-plaintext", *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_reflection_with_grpcurl(cpu_gateway: GatewayProcess) -> None:
    target = cpu_gateway.address
    services = _grpcurl(target, "list").split()
    assert "inference.GRPCInferenceService" in services
    assert "grpc.health.v1.Health" in services
    described = _grpcurl(target, "describe", "inference.GRPCInferenceService.ModelInfer")
    assert (
        "rpc ModelInfer ( .inference.ModelInferRequest ) returns ( .inference.ModelInferResponse )"
        in described
    )
    body = {
        "model_name": "text_upper",
        "id": "by-reflection",
        "inputs": [
            {
                "name": "TEXT",
                "datatype": "BYTES",
                "shape": [1, 1],
                "contents": {"bytes_contents": ["aGk="]},
            }
        ],
    }
    reply = json.loads(
        _grpcurl("-d", json.dumps(body), target, "inference.GRPCInferenceService/ModelInfer")
    )
    assert reply["id"] == "by-reflection"
    assert [o["name"] for o in reply["outputs"]] == ["UPPER", "LENGTH"]


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--port", "70000"], {}, ["port", "65535"]),
        (["--triton", "no-port-here"], {}, ["must look like host:port"]),
        (["--cpu-model", "builtin:nope"], {}, ["no built-in CPU model 'nope'"]),
        ([], {"GATEWAY_GRACE_PERIOD_S": "soon"}, ["grace_period_s"]),
        (["--config", "/nonexistent/gateway.toml"], {}, ["does not exist"]),
    ],
)
def test_bad_configuration_fails_fast_with_a_clear_message(
    args: list[str], env: dict[str, str], words: list[str]
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, **env},
    )
    assert done.returncode == 2
    for word in words:
        assert word in done.stderr, done.stderr
