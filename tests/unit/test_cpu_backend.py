"""scheduler.backends.cpu and cpu_models: the local CPU backend and its models."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Awaitable, Callable, Mapping

import numpy as np
import pytest

from scheduler.backends.cpu import CpuBackend
from scheduler.backends.cpu_models import (
    AddSub,
    CpuModel,
    Execution,
    MlpClassifier,
    TextUpper,
    default_execution,
    load_cpu_model,
)
from scheduler.errors import BackendError, DeadlineExceeded, GatewayError, Unavailable
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

VEC = (TensorSpec("X", DataType.FP32, (-1, 2)),)


class Scripted:
    """A CPU model whose body the test supplies; counts how many run at once."""

    def __init__(
        self,
        name: str,
        body: Callable[[Mapping[str, Tensor]], dict[str, Tensor]],
        outputs: tuple[TensorSpec, ...] = VEC,
    ) -> None:
        self._spec = ModelSpec(name=name, inputs=VEC, outputs=outputs, max_batch_size=8)
        self._body = body
        self._lock = threading.Lock()
        self.running = 0
        self.max_running = 0

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            return self._body(inputs)
        finally:
            with self._lock:
                self.running -= 1


def make_doubler() -> CpuModel:
    """A module:factory target for load_cpu_model."""
    return Scripted("doubler", lambda inputs: {"X": inputs["X"] * 2})


def not_a_model() -> object:
    return object()


def _boom(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    raise RuntimeError("boom")


X = np.array([[1.0, 2.0]], dtype=np.float32)


async def test_add_sub() -> None:
    model = AddSub()
    backend = CpuBackend([model], workers=2)
    try:
        a = np.arange(32, dtype=np.float32).reshape(2, 16)
        b = np.full((2, 16), 0.5, dtype=np.float32)
        out = await backend.infer(model.spec, {"INPUT0": a, "INPUT1": b})
        assert list(out) == ["OUTPUT0", "OUTPUT1"]
        np.testing.assert_array_equal(out["OUTPUT0"], a + 0.5)
        np.testing.assert_array_equal(out["OUTPUT1"], a - 0.5)
        assert out["OUTPUT0"].dtype == np.float32
        only = await backend.infer(model.spec, {"INPUT0": a, "INPUT1": b}, outputs=("OUTPUT1",))
        assert list(only) == ["OUTPUT1"]
        np.testing.assert_array_equal(only["OUTPUT1"], a - 0.5)
    finally:
        await backend.aclose()


async def test_mlp_classifier() -> None:
    model = MlpClassifier()
    backend = CpuBackend([model], workers=1)
    try:
        x = np.random.default_rng(7).standard_normal((5, 32), dtype=np.float32)
        out = await backend.infer(model.spec, {"INPUT": x})
        probs, label = out["PROBABILITIES"], out["LABEL"]
        assert probs.shape == (5, 10) and probs.dtype == np.float32
        assert label.shape == (5, 1) and label.dtype == np.int64
        assert (probs >= 0).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(label[:, 0], probs.argmax(axis=1))
        again = await backend.infer(model.spec, {"INPUT": x})
        np.testing.assert_array_equal(again["PROBABILITIES"], probs)  # deterministic weights
    finally:
        await backend.aclose()


async def test_text_upper() -> None:
    model = TextUpper()
    backend = CpuBackend([model], workers=1)
    try:
        text = np.array([[b"abc", b""], [b"\xc3\xa9t\xc3\xa9", b"MiXeD 1"]], dtype=np.object_)
        out = await backend.infer(model.spec, {"TEXT": text})
        assert out["UPPER"].tolist() == [[b"ABC", b""], [b"\xc3\xa9T\xc3\xa9", b"MIXED 1"]]
        assert out["LENGTH"].tolist() == [[3, 0], [5, 7]]
        assert out["LENGTH"].dtype == np.int32
    finally:
        await backend.aclose()


async def test_outputs_are_checked_and_cast() -> None:
    two = (*VEC, TensorSpec("Y", DataType.FP32, (-1, 2)))
    wide = Scripted("wide", lambda inputs: {"X": inputs["X"].astype(np.float64)})
    short = Scripted("short", lambda inputs: {"X": inputs["X"]}, outputs=two)
    backend = CpuBackend([wide, short], backend_id="cpu-t", workers=1)
    try:
        out = await backend.infer(wide.spec, {"X": X})
        assert out["X"].dtype == np.float32  # cast to the declared datatype
        with pytest.raises(BackendError, match="'short' did not produce output 'Y'"):
            await backend.infer(short.spec, {"X": X})
    finally:
        await backend.aclose()


async def test_model_that_raises_is_a_backend_error() -> None:
    broken = Scripted("broken", _boom)
    backend = CpuBackend([broken], backend_id="cpu-t", workers=1)
    try:
        with pytest.raises(BackendError) as info:
            await backend.infer(broken.spec, {"X": X})
        assert info.value.message == "CPU model 'broken' failed: RuntimeError: boom"
        assert info.value.backend_id == "cpu-t" and info.value.code == "INTERNAL"
        assert isinstance(info.value.__cause__, RuntimeError)
        assert not info.value.retryable
    finally:
        await backend.aclose()


async def test_deadline_on_a_slow_model_frees_its_slot_later() -> None:
    release = threading.Event()
    slow = Scripted("slow", lambda inputs: (release.wait(5), inputs)[1])
    fast = make_doubler()
    backend = CpuBackend([slow, fast], workers=1)
    try:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="'slow' did not finish before the deadline"):
            await backend.infer(slow.spec, {"X": X}, deadline=time.monotonic() + 0.05)
        assert time.monotonic() - started < 1.0  # promptly, not when the thread ends
        assert slow.running == 1  # the abandoned call still holds the only worker
        with pytest.raises(DeadlineExceeded, match="no CPU worker became free for model 'doubler'"):
            await backend.infer(fast.spec, {"X": X}, deadline=time.monotonic() + 0.05)
        release.set()
        out = await asyncio.wait_for(backend.infer(fast.spec, {"X": X}), 2)
        np.testing.assert_array_equal(out["X"], X * 2)
    finally:
        release.set()
        await backend.aclose()


async def test_deadline_already_past() -> None:
    fast = make_doubler()
    backend = CpuBackend([fast], workers=1)
    try:
        with pytest.raises(DeadlineExceeded, match="deadline passed before model 'doubler'"):
            await backend.infer(fast.spec, {"X": X}, deadline=time.monotonic() - 1)
    finally:
        await backend.aclose()


@pytest.mark.parametrize("workers", [1, 2])
async def test_workers_bound_concurrency(workers: int) -> None:
    sleepy = Scripted("sleepy", lambda inputs: (time.sleep(0.05), inputs)[1])
    backend = CpuBackend([sleepy], workers=workers)
    try:
        await asyncio.gather(*(backend.infer(sleepy.spec, {"X": X}) for _ in range(4)))
        assert sleepy.max_running == workers
    finally:
        await backend.aclose()


async def test_closed_backend_is_unavailable() -> None:
    fast = make_doubler()
    backend = CpuBackend([fast], backend_id="cpu-z", workers=1)
    assert await backend.health()
    assert backend.models() == {"doubler": fast.spec}
    await backend.aclose()
    assert not await backend.health()
    with pytest.raises(Unavailable, match="'cpu-z' is shut down"):
        await backend.infer(fast.spec, {"X": X})


async def test_unknown_model_is_a_gateway_error() -> None:
    backend = CpuBackend([make_doubler()], workers=1)
    try:
        other = Scripted("other", lambda inputs: inputs).spec
        with pytest.raises(GatewayError, match="other"):
            await backend.infer(other, {"X": X})
    finally:
        await backend.aclose()


def test_duplicate_model_names_are_refused() -> None:
    with pytest.raises(ValueError, match="two CPU models are named 'doubler'"):
        CpuBackend([make_doubler(), make_doubler()], workers=1)


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("builtin:add_sub", "add_sub"),
        ("builtin:mlp_classifier", "mlp_classifier"),
        ("builtin:text_upper", "text_upper"),
        ("tests.unit.test_cpu_backend:make_doubler", "doubler"),
    ],
)
def test_load_cpu_model(ref: str, name: str) -> None:
    model = load_cpu_model(ref)
    assert isinstance(model, CpuModel)
    assert model.spec.name == name


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        ("add_sub", ["'add_sub'", "builtin:NAME", "module:callable"]),
        ("builtin:", ["builtin:NAME"]),
        (
            "builtin:resnet",
            ["no built-in CPU model 'resnet'", "add_sub, mlp_classifier, text_upper"],
        ),
        ("no_such_module_xyz:make", ["cannot load CPU model", "no_such_module_xyz"]),
        ("tests.unit.test_cpu_backend:missing", ["cannot load CPU model", "missing"]),
        ("tests.unit.test_cpu_backend:not_a_model", ["did not return a CPU model"]),
    ],
)
def test_load_cpu_model_bad_refs(ref: str, words: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        load_cpu_model(ref)
    for word in words:
        assert word in str(info.value)


def test_load_cpu_model_factory_that_fails() -> None:
    with pytest.raises(ValueError, match="json:loads"):
        load_cpu_model("json:loads")  # needs an argument: TypeError inside the factory call


# -- where a model's calls run -------------------------------------------------


async def _ticks_while(call: Awaitable[object], period_s: float = 0.005) -> tuple[object, int]:
    """Run ``call`` beside a ticker; how many ticks the event loop managed meanwhile."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(period_s)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await call
    finally:
        done.set()
        await task
    return result, ticks


async def test_inline_models_run_on_the_event_loop_thread() -> None:
    seen: list[int] = []
    model = Scripted("here", lambda inputs: seen.append(threading.get_ident()) or dict(inputs))
    backend = CpuBackend([model], workers=1, execution={"here": Execution.INLINE})
    try:
        await backend.infer(model.spec, {"X": X})
    finally:
        await backend.aclose()
    assert seen == [threading.get_ident()]


async def test_a_model_that_holds_the_gil_runs_in_a_process_and_the_loop_keeps_going(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPIN_MS", "300")
    ref = "tests.support.cpu_sim:spin"
    model = load_cpu_model(ref)
    inputs = {"INPUT": np.ones((2, 3), np.float32)}
    backend = CpuBackend(
        [model], workers=1, execution={"spin": Execution.PROCESS}, refs={"spin": ref}
    )
    try:
        await backend.infer(model.spec, inputs)  # the first call also starts the process
        result, ticks = await _ticks_while(backend.infer(model.spec, inputs))
    finally:
        await backend.aclose()
    assert isinstance(result, dict)
    assert result["OUTPUT"].tolist() == [[2.0] * 3] * 2
    assert int(result["PID"][0, 0]) != os.getpid()
    # 300 ms of Python in another process: the loop ticked all along (on a thread
    # the same call would hold the GIL and the ticker would barely run).
    assert ticks >= 20


def test_process_models_need_a_reference_to_load_them_by() -> None:
    with pytest.raises(ValueError, match="module:factory"):
        CpuBackend([make_doubler()], execution={"doubler": Execution.PROCESS})
    with pytest.raises(ValueError, match="lacks"):
        CpuBackend([make_doubler()], execution={"other": Execution.THREAD})


def test_builtin_defaults() -> None:
    assert default_execution("builtin:add_sub") is Execution.INLINE
    assert default_execution("builtin:mlp_classifier") is Execution.THREAD
    assert default_execution("tests.unit.test_cpu_backend:make_doubler") is Execution.THREAD


async def test_a_slow_inline_model_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    model = Scripted("slow", lambda inputs: time.sleep(0.005) or dict(inputs))
    backend = CpuBackend([model], workers=1, execution={"slow": Execution.INLINE})
    try:
        with caplog.at_level("WARNING"):
            for _ in range(3):
                await backend.infer(model.spec, {"X": X})
    finally:
        await backend.aclose()
    warnings = [r for r in caplog.records if "on the event loop" in r.getMessage()]
    assert len(warnings) == 1 and "cpu_execution.slow" in warnings[0].getMessage()
