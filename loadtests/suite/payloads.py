"""The requests every path is sent, as serialised ``ModelInferRequest`` bytes.

One request per model, built once with the project's generated stubs: ghz sends the
bytes as they are (``--binary-file``), so every server decodes exactly the same
message and ghz spends no CPU on JSON.  The tensors travel in
``raw_input_contents``, as real clients send them.  The Python fallback generator
gets the same arrays through tritonclient.

Floor A answers every call with :func:`canned_response`, shaped like ``add_sub``'s
real answer (two FP32 [1, 16] outputs), so its reply costs what a real one costs
on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.api.inference import grpc_service_pb2 as pb

__all__ = [
    "ADD_SUB",
    "GPU_SIM",
    "GPU_SIM_TB",
    "Payload",
    "canned_response",
    "canned_stream_response",
]

#: Rows x columns of every tensor sent: the models' per-row width is 16.
SHAPE = (1, 16)


@dataclass(frozen=True)
class Payload:
    """A model's request: its FP32 input arrays and the serialised message."""

    model: str
    inputs: dict[str, npt.NDArray[np.float32]]

    def message(self) -> pb.ModelInferRequest:
        return pb.ModelInferRequest(
            model_name=self.model,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name=name, datatype="FP32", shape=list(array.shape)
                )
                for name, array in self.inputs.items()
            ],
            raw_input_contents=[array.tobytes() for array in self.inputs.values()],
        )

    def request_bytes(self) -> bytes:
        return self.message().SerializeToString()


def _rows(seed: int) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


ADD_SUB = Payload("add_sub", {"INPUT0": _rows(0), "INPUT1": _rows(1)})
GPU_SIM = Payload("gpu_sim", {"INPUT": _rows(2)})
GPU_SIM_TB = Payload("gpu_sim_tb", {"INPUT": _rows(2)})


def canned_response() -> bytes:
    """A serialised ``ModelInferResponse`` like add_sub's answer to :data:`ADD_SUB`."""
    a, b = ADD_SUB.inputs["INPUT0"], ADD_SUB.inputs["INPUT1"]
    outputs = {"OUTPUT0": a + b, "OUTPUT1": a - b}
    response = pb.ModelInferResponse(
        model_name="add_sub",
        model_version="1",
        outputs=[
            pb.ModelInferResponse.InferOutputTensor(
                name=name, datatype="FP32", shape=list(array.shape)
            )
            for name, array in outputs.items()
        ],
        raw_output_contents=[array.tobytes() for array in outputs.values()],
    )
    return response.SerializeToString()


def canned_stream_response() -> bytes:
    """:func:`canned_response` as a stream sends it: a ``ModelStreamInferResponse``."""
    response = pb.ModelInferResponse.FromString(canned_response())
    return pb.ModelStreamInferResponse(infer_response=response).SerializeToString()
