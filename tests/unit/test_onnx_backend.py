"""scheduler.backends.onnx: ONNX models from a Triton-layout repository, built
at test time with the ``onnx`` package and run by the real ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from scheduler.backends.base import Backend, DeviceKind
from scheduler.backends.onnx import OnnxBackend, OnnxModelError, load_repository
from scheduler.clock import ManualClock
from scheduler.config import SchedulerConfig
from scheduler.dispatcher import Scheduler
from scheduler.errors import DeadlineExceeded
from scheduler.placement import Tier
from scheduler.request import InferRequest
from scheduler.spec import DataType
from tests.support.onnx_models import mlp_reference, write_repository


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    repo = write_repository(tmp_path / "models")
    # A model Triton serves with another backend: the ONNX tier skips it.
    (repo / "py_model" / "1").mkdir(parents=True)
    (repo / "py_model" / "config.pbtxt").write_text('name: "py_model"\nbackend: "python"\n')
    return repo


def test_specs_are_what_triton_would_report(repository: Path) -> None:
    backend = OnnxBackend(repository, workers=2)
    assert isinstance(backend, Backend)
    assert sorted(backend.models()) == ["gpu_sim", "mlp"]
    mlp = backend.models()["mlp"]
    assert (mlp.max_batch_size, mlp.platform, mlp.versions) == (32, "onnxruntime_onnx", ("1",))
    assert [(t.name, t.datatype, t.shape) for t in mlp.inputs] == [("X", DataType.FP32, (-1, 4))]
    assert [(t.name, t.shape) for t in mlp.outputs] == [("PROBS", (-1, 3))]
    assert (backend.tier, backend.endpoint, backend.workers) == (Tier.CPU, "", 2)
    assert backend.device.kind is DeviceKind.CPU


async def test_outputs_equal_running_the_model_directly(repository: Path) -> None:
    backend = OnnxBackend(repository, workers=2)
    x = np.random.default_rng(3).standard_normal((5, 4)).astype(np.float32)
    try:
        out = await backend.infer(backend.models()["mlp"], {"X": x})
    finally:
        await backend.aclose()
    direct = ort.InferenceSession(str(repository / "mlp" / "1" / "model.onnx")).run(
        ["PROBS"], {"X": x}
    )[0]
    np.testing.assert_array_equal(out["PROBS"], direct)
    np.testing.assert_allclose(out["PROBS"], mlp_reference(x), rtol=1e-5, atol=1e-6)


async def test_a_passed_deadline_fails_before_running(repository: Path) -> None:
    clock = ManualClock(10.0)
    backend = OnnxBackend(repository, clock=clock)
    x = np.ones((1, 4), np.float32)
    try:
        with pytest.raises(DeadlineExceeded, match="deadline passed"):
            await backend.infer(backend.models()["mlp"], {"X": x}, deadline=9.0)
    finally:
        await backend.aclose()


def test_bad_repositories_are_named(tmp_path: Path) -> None:
    with pytest.raises(OnnxModelError, match="not a directory"):
        load_repository(tmp_path / "missing")
    bad = tmp_path / "bad" / "m"
    bad.mkdir(parents=True)
    (bad / "config.pbtxt").write_text('platform: "onnxruntime_onnx"\n')
    with pytest.raises(OnnxModelError, match=r"model 'm': no version holds model\.onnx"):
        load_repository(tmp_path / "bad")
    (bad / "config.pbtxt").write_text("platform: onnx onnx\n")
    with pytest.raises(OnnxModelError, match=r"bad config\.pbtxt"):
        load_repository(tmp_path / "bad")


async def test_the_scheduler_serves_it_as_the_cpu_tier(repository: Path) -> None:
    backend = OnnxBackend(repository)
    config = SchedulerConfig(health_interval_s=3600, rediscover_interval_s=3600)
    scheduler = Scheduler([backend], config=config)
    await scheduler.start()
    try:
        x = np.arange(12, dtype=np.float32).reshape(3, 4) / 10
        result = await scheduler.infer(InferRequest(model_name="mlp", inputs={"X": x}))
        np.testing.assert_allclose(result.outputs["PROBS"], mlp_reference(x), rtol=1e-5)
        assert scheduler.fleet.get("onnx") is not None
        assert scheduler.fleet.get("onnx").tier is Tier.CPU  # type: ignore[union-attr]
    finally:
        await scheduler.aclose()
