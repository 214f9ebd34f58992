"""The gateway with no Triton at all: tritonclient against the built-in CPU models."""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient

from tests.support.gateway import GatewayProcess


def _input(name: str, array: np.ndarray, datatype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


def test_cpu_models_listed_and_described(cpu_gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(cpu_gateway.address)
    assert client.is_server_ready()
    names = {m.name for m in client.get_model_repository_index().models}
    assert names == {"add_sub", "mlp_classifier", "text_upper"}
    meta = client.get_model_metadata("mlp_classifier")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("INPUT", "FP32", [-1, 32])
    ]
    config = client.get_model_config("mlp_classifier").config
    assert config.max_batch_size == 256
    assert list(config.input[0].dims) == [32]  # config dims leave out the batch dimension


def test_add_sub_and_classifier(cpu_gateway: GatewayProcess) -> None:
    client = grpcclient.InferenceServerClient(cpu_gateway.address)
    a = np.arange(32, dtype=np.float32).reshape(2, 16)
    b = np.full((2, 16), 0.5, np.float32)
    result = client.infer("add_sub", [_input("INPUT0", a, "FP32"), _input("INPUT1", b, "FP32")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)

    x = np.random.default_rng(1).standard_normal((5, 32)).astype(np.float32)
    result = client.infer("mlp_classifier", [_input("INPUT", x, "FP32")])
    probs = result.as_numpy("PROBABILITIES")
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert result.as_numpy("LABEL")[:, 0].tolist() == probs.argmax(axis=1).tolist()


async def test_bytes_model_with_asyncio_client(cpu_gateway: GatewayProcess) -> None:
    text = np.array([[b"abc", b"", b"\xc3\xa9t\xc3\xa9"]], dtype=np.object_)
    async with aioclient.InferenceServerClient(cpu_gateway.address) as client:
        result = await client.infer("text_upper", [_input("TEXT", text, "BYTES")])
    assert result.as_numpy("UPPER").tolist() == [[b"ABC", b"", "éTé".encode()]]
    assert result.as_numpy("LENGTH").tolist() == [[3, 0, 5]]
