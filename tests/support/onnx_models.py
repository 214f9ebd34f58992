"""Small ONNX models built at test time with the ``onnx`` package, written into
a Triton-layout model repository (``NAME/config.pbtxt`` + ``NAME/1/model.onnx``).

- ``mlp``: ``PROBS = softmax(relu(X @ W1 + b1) @ W2 + b2)``, FP32 [batch, 4] ->
  [batch, 3], fixed seeded weights; ``mlp_reference`` computes it in numpy.
- ``gpu_sim``: ``OUTPUT = INPUT * 2`` with the signature of the Triton test
  model ``gpu_sim`` (FP32 [batch, -1], max_batch_size 64), so a gateway serves
  it on Triton and on the ONNX CPU tier side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

_OPSET = [helper.make_opsetid("", 13)]
_RNG = np.random.default_rng(7)
W1 = _RNG.standard_normal((4, 8)).astype(np.float32)
B1 = _RNG.standard_normal(8).astype(np.float32)
W2 = _RNG.standard_normal((8, 3)).astype(np.float32)
B2 = _RNG.standard_normal(3).astype(np.float32)

MLP_CONFIG = """name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [ { name: "X", data_type: TYPE_FP32, dims: [ 4 ] } ]
output [ { name: "PROBS", data_type: TYPE_FP32, dims: [ 3 ] } ]
"""

GPU_SIM_CONFIG = """name: "gpu_sim"
backend: "onnxruntime"
max_batch_size: 64
input [ { name: "INPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
output [ { name: "OUTPUT", data_type: TYPE_FP32, dims: [ -1 ] } ]
"""


def mlp_model() -> onnx.ModelProto:
    nodes = [
        helper.make_node("MatMul", ["X", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "B1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "W2"], ["h3"]),
        helper.make_node("Add", ["h3", "B2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["PROBS"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("PROBS", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(W1, "W1"),
            numpy_helper.from_array(B1, "B1"),
            numpy_helper.from_array(W2, "W2"),
            numpy_helper.from_array(B2, "B2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=_OPSET)
    onnx.checker.check_model(model)
    return model


def mlp_reference(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    logits = np.maximum(x @ W1 + B1, 0) @ W2 + B2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def doubler_model() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Mul", ["INPUT", "TWO"], ["OUTPUT"])],
        "gpu_sim",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", "n"])],
        initializer=[numpy_helper.from_array(np.array(2.0, np.float32), "TWO")],
    )
    model = helper.make_model(graph, opset_imports=_OPSET)
    onnx.checker.check_model(model)
    return model


def write_model(repository: Path, name: str, config: str, model: onnx.ModelProto) -> Path:
    directory = repository / name
    (directory / "1").mkdir(parents=True, exist_ok=True)
    (directory / "config.pbtxt").write_text(config)
    onnx.save(model, str(directory / "1" / "model.onnx"))
    return directory


def write_repository(repository: Path) -> Path:
    """``mlp`` and ``gpu_sim`` under ``repository``; returns it."""
    write_model(repository, "mlp", MLP_CONFIG, mlp_model())
    write_model(repository, "gpu_sim", GPU_SIM_CONFIG, doubler_model())
    return repository
