"""The ONNX Runtime CPU tier through the real gateway: the unmodified
``tritonclient`` gets the model's own outputs, and a request whose deadline the
(slow) Triton server cannot meet spills to it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient

from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.onnx_models import mlp_reference, write_repository
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton

#: A "GPU" far slower than the ONNX model, so a tight deadline must spill.
SLOW = {"GPU_SIM_FIXED_MS": "250", "GPU_SIM_PER_ITEM_MS": "0"}


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TritonProcess, GatewayProcess, Path]]:
    work = tmp_path_factory.mktemp("onnx")
    repository = write_repository(work / "models")
    with (
        start_triton(MODEL_REPOSITORY, work / "triton", env=SLOW) as triton,
        start_gateway(
            work / "gateway",
            args=[
                "--triton",
                triton.grpc_url,
                "--no-cpu-models",
                "--onnx-repository",
                str(repository),
            ],
            env={
                "GATEWAY_TRITON_METRICS_URLS": json.dumps({triton.grpc_url: triton.metrics_url}),
                "GATEWAY_BATCHING_LAYER": "none",
            },
        ) as gateway,
    ):
        yield triton, gateway, repository


def _fp32(name: str, array: np.ndarray) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_tritonclient_gets_the_models_own_outputs(
    setup: tuple[TritonProcess, GatewayProcess, Path],
) -> None:
    _, gateway, repository = setup
    client = grpcclient.InferenceServerClient(gateway.address)
    meta = client.get_model_metadata("mlp", as_json=True)
    assert meta["platform"] == "onnxruntime_onnx"
    assert [i["shape"] for i in meta["inputs"]] == [["-1", "4"]]
    x = np.random.default_rng(11).standard_normal((6, 4)).astype(np.float32)
    result = client.infer("mlp", [_fp32("X", x)], client_timeout=10)
    direct = ort.InferenceSession(str(repository / "mlp" / "1" / "model.onnx")).run(None, {"X": x})
    np.testing.assert_array_equal(result.as_numpy("PROBS"), direct[0])
    np.testing.assert_allclose(result.as_numpy("PROBS"), mlp_reference(x), rtol=1e-5, atol=1e-6)


def test_a_deadline_the_gpu_cannot_meet_spills_to_onnx(
    setup: tuple[TritonProcess, GatewayProcess, Path],
) -> None:
    triton, gateway, _ = setup
    client = grpcclient.InferenceServerClient(gateway.address)
    direct = grpcclient.InferenceServerClient(triton.grpc_url)

    def triton_rows() -> int:
        stats = direct.get_inference_statistics("gpu_sim").model_stats[0]
        return int(stats.inference_count)

    x = np.arange(8, dtype=np.float32).reshape(1, 8)
    # Without a deadline the accelerator is preferred; the gateway learns it is slow.
    for _ in range(3):
        out = client.infer("gpu_sim", [_fp32("INPUT", x)], client_timeout=10)
        np.testing.assert_array_equal(out.as_numpy("OUTPUT"), x * 2)
    assert triton_rows() >= 3
    before = triton_rows()
    for _ in range(5):
        out = client.infer("gpu_sim", [_fp32("INPUT", x)], client_timeout=0.15)
        np.testing.assert_array_equal(out.as_numpy("OUTPUT"), x * 2)
    assert triton_rows() == before  # every one of them ran on the ONNX tier
