"""Tests of the tritonserver harness (tests/support/triton.py) and the test model repository.

One real tritonserver serves the module; a few more are started to check the per-server
speed override, the port-race retry, and that stop()/kill() leave no process behind.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.support import triton as harness
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

pytestmark = pytest.mark.timeout(60)

# Values in tests/models/triton/gpu_sim*/config.pbtxt.
CONFIG_FIXED_MS = 5.0
CONFIG_PER_ITEM_MS = 0.1

# Empty values mean "not set" to gpu_sim, so a GPU_SIM_* variable in the developer's
# environment cannot leak into the servers that should use the config.pbtxt values.
CONFIG_TIMING_ENV = {"GPU_SIM_FIXED_MS": "", "GPU_SIM_PER_ITEM_MS": ""}

CLIENT_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    with start_triton(
        MODEL_REPOSITORY, tmp_path_factory.mktemp("triton"), env=CONFIG_TIMING_ENV
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(triton: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton.grpc_url)
    yield client
    client.close()


def _input(name: str, data: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(data.shape), datatype)
    tensor.set_data_from_numpy(data)
    return tensor


def _timed_gpu_sim(
    client: grpcclient.InferenceServerClient, model: str, data: np.ndarray
) -> tuple[float, np.ndarray]:
    """Seconds one inference took, and its OUTPUT."""
    start = time.perf_counter()
    result = client.infer(model, [_input("INPUT", data, "FP32")], client_timeout=CLIENT_TIMEOUT_S)
    return time.perf_counter() - start, result.as_numpy("OUTPUT")


def _assert_gone(server: TritonProcess) -> None:
    """The server, every process of its group (backend stubs) and its /dev/shm are gone."""
    with pytest.raises(ProcessLookupError):
        os.kill(server.pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(server.pid, 0)
    assert not list(Path("/dev/shm").glob(f"{server.server_id}_*"))


def test_all_models_ready(triton: TritonProcess, client: grpcclient.InferenceServerClient) -> None:
    assert client.is_server_ready()
    for name in ("add_sub", "int64_offset", "bytes_echo", "gpu_sim", "gpu_sim_tb"):
        assert client.is_model_ready(name), name
    assert harness.model_names(MODEL_REPOSITORY) == sorted(
        ["add_sub", "bytes_echo", "gpu_sim", "gpu_sim_tb", "int64_offset"]
    )
    assert triton.grpc_url == f"127.0.0.1:{triton.grpc_port}"


def test_add_sub(client: grpcclient.InferenceServerClient) -> None:
    rng = np.random.default_rng(7)
    in0 = rng.standard_normal((3, 16)).astype(np.float32)
    in1 = rng.standard_normal((3, 16)).astype(np.float32)
    result = client.infer(
        "add_sub",
        [_input("INPUT0", in0, "FP32"), _input("INPUT1", in1, "FP32")],
        client_timeout=CLIENT_TIMEOUT_S,
    )
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), in0 + in1)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), in0 - in1)


@pytest.mark.parametrize("shape", [(1, 1), (2, 5), (8, 3)])
def test_int64_offset_variable_dims(
    client: grpcclient.InferenceServerClient, shape: tuple[int, int]
) -> None:
    data = np.arange(np.prod(shape), dtype=np.int64).reshape(shape) - 3
    data.flat[0] = np.iinfo(np.int64).max - 1  # no float round-trip anywhere
    result = client.infer(
        "int64_offset", [_input("INPUT", data, "INT64")], client_timeout=CLIENT_TIMEOUT_S
    )
    output = result.as_numpy("OUTPUT")
    assert output.dtype == np.int64
    np.testing.assert_array_equal(output, data + 1)


def test_bytes_echo_binary_and_empty(client: grpcclient.InferenceServerClient) -> None:
    elements = [
        [b"hello", b"", b"\xff\xfe\x00\x80", b"trailing-nul\x00"],
        [b"\x00", bytes(range(256)), "ünïcødé".encode(), b""],
    ]
    data = np.array(elements, dtype=np.object_)
    result = client.infer(
        "bytes_echo", [_input("INPUT", data, "BYTES")], client_timeout=CLIENT_TIMEOUT_S
    )
    output = result.as_numpy("OUTPUT")
    assert output.shape == (2, 4)
    assert output.tolist() == [[e[::-1] for e in row] for row in elements]
    lengths = result.as_numpy("LENGTHS")
    assert lengths.dtype == np.int32
    assert lengths.tolist() == [[len(e) for e in row] for row in elements]


@pytest.mark.parametrize("model", ["gpu_sim", "gpu_sim_tb"])
def test_gpu_sim_batched_latency(client: grpcclient.InferenceServerClient, model: str) -> None:
    rows = 32
    data = np.linspace(-1, 1, rows * 4, dtype=np.float32).reshape(rows, 4)
    elapsed, output = _timed_gpu_sim(client, model, data)
    np.testing.assert_array_equal(output, data * 2)
    # One execute() sleeps fixed + per_item * rows; the client cannot see less than that.
    assert elapsed >= (CONFIG_FIXED_MS + CONFIG_PER_ITEM_MS * rows) / 1000


def test_metrics_endpoint(triton: TritonProcess) -> None:
    with urllib.request.urlopen(triton.metrics_url, timeout=5) as response:
        assert response.status == 200
        assert b"nv_inference_request_success" in response.read()


def test_env_override_changes_gpu_sim_timing(
    tmp_path: Path, client: grpcclient.InferenceServerClient
) -> None:
    slow_fixed_ms = 250.0
    data = np.ones((2, 3), dtype=np.float32)
    default_elapsed = min(_timed_gpu_sim(client, "gpu_sim", data)[0] for _ in range(3))
    assert default_elapsed < slow_fixed_ms / 1000

    slow = start_triton(
        MODEL_REPOSITORY,
        tmp_path,
        env={"GPU_SIM_FIXED_MS": str(slow_fixed_ms), "GPU_SIM_PER_ITEM_MS": "0"},
    )
    with slow, grpcclient.InferenceServerClient(slow.grpc_url) as slow_client:
        for model in ("gpu_sim", "gpu_sim_tb"):
            elapsed, output = _timed_gpu_sim(slow_client, model, data)
            np.testing.assert_array_equal(output, data * 2)
            assert elapsed >= slow_fixed_ms / 1000, model
    # Leaving the with-block called stop(): nothing of that server may remain.
    assert not slow.is_running()
    _assert_gone(slow)


def test_port_race_is_retried_and_kill_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hand the first attempt a gRPC port that someone else already listens on.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy_port = squatter.getsockname()[1]
        picks: list[list[int]] = []
        real_free_ports = harness.free_ports

        def racy_free_ports(count: int) -> list[int]:
            ports = real_free_ports(count)
            if not picks:
                ports[0] = busy_port
            picks.append(ports)
            return ports

        monkeypatch.setattr(harness, "free_ports", racy_free_ports)
        server = start_triton(MODEL_REPOSITORY, tmp_path, ready_timeout_s=60)
    try:
        assert len(picks) == 2
        assert server.grpc_port != busy_port
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            assert client.is_model_ready("add_sub")
    finally:
        server.kill()
    assert not server.is_running()
    _assert_gone(server)


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('backend: "python"\nmax_batch_size: 0\n')
    (broken / "1" / "model.py").write_text("raise RuntimeError('model import fails')\n")
    with pytest.raises(harness.TritonStartError, match="model import fails"):
        start_triton(tmp_path / "repo", tmp_path / "work", ready_timeout_s=30)
