"""Models that run on the local CPU backend: the protocol, how each runs, the
built-in demos, and loading a user's model from an import path.

A CPU model is any object with a ``spec`` and a ``__call__`` from numpy
inputs to numpy outputs. Where its call runs is its ``Execution``, chosen per
model (setting ``cpu_execution``), because the gateway's event loop must never
wait on model code for long:

- ``inline``: on the event loop itself. Only for models that cost a few tens
  of microseconds per batch (the built-in demos): handing such a call to a
  thread costs more than the call. A call that takes longer is logged.
- ``thread`` (the default): on a worker thread. For models that release the
  GIL while they compute (numpy's large kernels, ONNX Runtime, PyTorch), so
  the event loop keeps running beside them.
- ``process``: in a pool of worker processes that load the model themselves.
  For models that hold the GIL (pure Python, many small numpy calls): on a
  thread they would stall the event loop; inputs and outputs are pickled.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec


class Execution(enum.Enum):
    """Where a CPU model's calls run (see the module docstring)."""

    INLINE = "inline"
    THREAD = "thread"
    PROCESS = "process"


@runtime_checkable
class CpuModel(Protocol):
    @property
    def spec(self) -> ModelSpec: ...

    def __call__(
        self, inputs: Mapping[str, Tensor], parameters: Parameters
    ) -> dict[str, Tensor]: ...


class AddSub:
    """``OUTPUT0 = INPUT0 + INPUT1``, ``OUTPUT1 = INPUT0 - INPUT1`` on FP32 [batch, 16].

    The classic Triton example's signature, so the same model name can be
    served by a Triton server and by the CPU backend side by side.
    """

    def __init__(self, name: str = "add_sub", max_batch_size: int = 8) -> None:
        shape = (-1, 16)
        self._spec = ModelSpec(
            name=name,
            platform="numpy",
            max_batch_size=max_batch_size,
            inputs=(
                TensorSpec("INPUT0", DataType.FP32, shape),
                TensorSpec("INPUT1", DataType.FP32, shape),
            ),
            outputs=(
                TensorSpec("OUTPUT0", DataType.FP32, shape),
                TensorSpec("OUTPUT1", DataType.FP32, shape),
            ),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        a, b = inputs["INPUT0"], inputs["INPUT1"]
        return {"OUTPUT0": a + b, "OUTPUT1": a - b}


class MlpClassifier:
    """A two-layer perceptron (32 -> 64 -> 10, ReLU, softmax) with fixed seeded
    weights: a stand-in for a real dense model, deterministic across runs.
    """

    def __init__(self, name: str = "mlp_classifier", max_batch_size: int = 256) -> None:
        rng = np.random.default_rng(20261128)
        self._w1 = rng.standard_normal((32, 64), dtype=np.float32) / np.float32(np.sqrt(32))
        self._b1 = np.zeros(64, dtype=np.float32)
        self._w2 = rng.standard_normal((64, 10), dtype=np.float32) / np.float32(8.0)
        self._b2 = np.zeros(10, dtype=np.float32)
        self._spec = ModelSpec(
            name=name,
            platform="numpy",
            max_batch_size=max_batch_size,
            inputs=(TensorSpec("INPUT", DataType.FP32, (-1, 32)),),
            outputs=(
                TensorSpec("PROBABILITIES", DataType.FP32, (-1, 10)),
                TensorSpec("LABEL", DataType.INT64, (-1, 1)),
            ),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        hidden = np.maximum(inputs["INPUT"] @ self._w1 + self._b1, 0.0)
        logits = hidden @ self._w2 + self._b2
        logits -= logits.max(axis=1, keepdims=True)  # stable softmax
        exp = np.exp(logits)
        probs = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
        return {"PROBABILITIES": probs, "LABEL": probs.argmax(axis=1).astype(np.int64)[:, None]}


class TextUpper:
    """Upper-cases BYTES elements and reports their byte lengths: a BYTES model."""

    def __init__(self, name: str = "text_upper", max_batch_size: int = 64) -> None:
        self._spec = ModelSpec(
            name=name,
            platform="numpy",
            max_batch_size=max_batch_size,
            inputs=(TensorSpec("TEXT", DataType.BYTES, (-1, -1)),),
            outputs=(
                TensorSpec("UPPER", DataType.BYTES, (-1, -1)),
                TensorSpec("LENGTH", DataType.INT32, (-1, -1)),
            ),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        text = inputs["TEXT"]
        upper = np.empty(text.shape, dtype=np.object_)
        length = np.empty(text.shape, dtype=np.int32)
        for index, item in np.ndenumerate(text):
            upper[index] = bytes(item).upper()
            length[index] = len(item)
        return {"UPPER": upper, "LENGTH": length}


BUILTIN_MODELS: dict[str, Callable[[], CpuModel]] = {
    "add_sub": AddSub,
    "mlp_classifier": MlpClassifier,
    "text_upper": TextUpper,
}
#: The demos that cost microseconds run inline; the perceptron's matrix
#: products release the GIL, and grow with the batch, so it takes a thread.
BUILTIN_EXECUTION: dict[str, Execution] = {
    "add_sub": Execution.INLINE,
    "mlp_classifier": Execution.THREAD,
    "text_upper": Execution.INLINE,
}


def default_execution(ref: str) -> Execution:
    """How a model loaded from ``ref`` runs unless the settings say otherwise."""
    kind, _, target = ref.partition(":")
    if kind == "builtin":
        return BUILTIN_EXECUTION.get(target, Execution.THREAD)
    return Execution.THREAD


def load_cpu_model(ref: str) -> CpuModel:
    """Build a CPU model from ``builtin:NAME`` or ``package.module:callable``.

    The callable is called with no arguments and must return a ``CpuModel``.
    """
    kind, sep, target = ref.partition(":")
    if not sep or not target:
        raise ValueError(f"CPU model {ref!r} must look like 'builtin:NAME' or 'module:callable'")
    if kind == "builtin":
        try:
            return BUILTIN_MODELS[target]()
        except KeyError:
            known = ", ".join(sorted(BUILTIN_MODELS))
            raise ValueError(f"no built-in CPU model {target!r}; built-ins: {known}") from None
    try:
        factory = getattr(importlib.import_module(kind), target)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load CPU model {ref!r}: {exc}") from exc
    try:
        model = factory()
    except Exception as exc:
        raise ValueError(f"CPU model factory {ref!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, CpuModel):
        raise ValueError(f"{ref!r} did not return a CPU model (needs .spec and __call__)")
    return model
