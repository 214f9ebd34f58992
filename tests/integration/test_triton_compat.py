"""The unmodified tritonclient (sync, asyncio, streaming) against the gateway in
front of a real Triton: every answer must equal Triton's own."""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import json_format

from tests.support.gateway import GatewayProcess
from tests.support.triton import TritonProcess


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def _cases() -> list[tuple[str, list[tuple[str, np.ndarray, str]], list[str]]]:
    rng = np.random.default_rng(7)
    a = rng.standard_normal((3, 16)).astype(np.float32)
    b = rng.standard_normal((3, 16)).astype(np.float32)
    ints = np.array([[-(2**62), -1, 0, 1, 2**62]], dtype=np.int64)
    text = np.array([[b"hello", b"", b"\xff\x00\xfe", "é".encode()]] * 2, dtype=np.object_)
    return [
        ("add_sub", [("INPUT0", a, "FP32"), ("INPUT1", b, "FP32")], ["OUTPUT0", "OUTPUT1"]),
        ("int64_offset", [("INPUT", ints, "INT64")], ["OUTPUT"]),
        ("bytes_echo", [("INPUT", text, "BYTES")], ["OUTPUT", "LENGTHS"]),
    ]


CASES = _cases()


@pytest.fixture(scope="module")
def clients(
    gateway: GatewayProcess, triton: TritonProcess
) -> Iterator[tuple[grpcclient.InferenceServerClient, grpcclient.InferenceServerClient]]:
    via = grpcclient.InferenceServerClient(gateway.address)
    direct = grpcclient.InferenceServerClient(triton.grpc_url)
    yield via, direct
    via.close()
    direct.close()


def test_server_health_and_metadata(clients: Any) -> None:
    via, _ = clients
    assert via.is_server_live()
    assert via.is_server_ready()
    meta = via.get_server_metadata()
    assert meta.name == "inference-gateway"
    assert meta.version


@pytest.mark.parametrize("model", ["add_sub", "int64_offset", "bytes_echo", "gpu_sim"])
def test_model_metadata_and_config_match_triton(clients: Any, model: str) -> None:
    via, direct = clients
    assert via.is_model_ready(model)
    assert via.get_model_metadata(model) == direct.get_model_metadata(model)
    ours = json_format.MessageToDict(via.get_model_config(model).config)
    theirs = json_format.MessageToDict(direct.get_model_config(model).config)
    assert ours == theirs


def test_repository_index_lists_triton_models(clients: Any) -> None:
    via, _ = clients
    index = {m.name: m.state for m in via.get_model_repository_index().models}
    assert {"add_sub", "int64_offset", "bytes_echo", "gpu_sim", "gpu_sim_tb"} <= set(index)
    assert set(index.values()) == {"READY"}


@pytest.mark.parametrize(("model", "inputs", "outputs"), CASES, ids=[c[0] for c in CASES])
def test_sync_infer_equals_direct(clients: Any, model: str, inputs: Any, outputs: Any) -> None:
    via, direct = clients
    tensors = [_input(*spec) for spec in inputs]
    got = via.infer(model, tensors, request_id="req-42")
    want = direct.infer(model, tensors)
    assert got.get_response().id == "req-42"
    assert got.get_response().model_name == model
    for name in outputs:
        mine, theirs = got.as_numpy(name), want.as_numpy(name)
        assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
        np.testing.assert_array_equal(mine, theirs)


def test_requested_outputs_subset(clients: Any) -> None:
    via, _ = clients
    model, inputs, _ = CASES[0]
    result = via.infer(
        model,
        [_input(*spec) for spec in inputs],
        outputs=[grpcclient.InferRequestedOutput("OUTPUT1")],
    )
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), inputs[0][1] - inputs[1][1])


def test_statistics_count_requests(clients: Any) -> None:
    via, _ = clients
    model, inputs, _ = CASES[1]
    before = via.get_inference_statistics(model).model_stats[0].inference_stats.success.count
    for _ in range(3):
        via.infer(model, [_input(*spec) for spec in inputs])
    after = via.get_inference_statistics(model).model_stats[0].inference_stats.success.count
    assert after - before == 3


async def test_asyncio_client_equals_direct(gateway: GatewayProcess, triton: TritonProcess) -> None:
    async with (
        aioclient.InferenceServerClient(gateway.address) as via,
        aioclient.InferenceServerClient(triton.grpc_url) as direct,
    ):
        assert await via.is_server_ready()
        for model, inputs, outputs in CASES:
            tensors = [_input(*spec) for spec in inputs]
            got, want = await asyncio.gather(
                via.infer(model, tensors), direct.infer(model, tensors)
            )
            for name in outputs:
                np.testing.assert_array_equal(got.as_numpy(name), want.as_numpy(name))


def test_sync_stream_matches_by_id(clients: Any) -> None:
    via, direct = clients
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    via.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(12):
            model, inputs, _ = CASES[i % len(CASES)]
            via.async_stream_infer(model, [_input(*spec) for spec in inputs], request_id=str(i))
        via.async_stream_infer("no_such_model", [_input(*CASES[1][1][0])], request_id="bad")
        got = [results.get(timeout=30) for _ in range(13)]
    finally:
        via.stop_stream()
    errors = [e for r, e in got if e is not None]
    assert len(errors) == 1 and "no_such_model" in str(errors[0])
    by_id = {r.get_response().id: r for r, e in got if e is None}
    assert sorted(by_id, key=int) == [str(i) for i in range(12)]
    for i in range(12):
        model, inputs, outputs = CASES[i % len(CASES)]
        want = direct.infer(model, [_input(*spec) for spec in inputs])
        for name in outputs:
            np.testing.assert_array_equal(by_id[str(i)].as_numpy(name), want.as_numpy(name))


async def test_asyncio_stream(gateway: GatewayProcess) -> None:
    model, inputs, _ = CASES[1]

    async def requests() -> Any:
        for i in range(5):
            yield {
                "model_name": model,
                "inputs": [_input(*spec) for spec in inputs],
                "request_id": str(i),
            }

    seen = []
    async with aioclient.InferenceServerClient(gateway.address) as via:
        async for result, error in via.stream_infer(requests()):
            assert error is None
            seen.append(result.get_response().id)
            np.testing.assert_array_equal(result.as_numpy("OUTPUT"), inputs[0][1] + 1)
            if len(seen) == 5:
                break
    assert sorted(seen) == [str(i) for i in range(5)]
