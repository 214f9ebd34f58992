"""``add_sub`` as an MLServer custom runtime, for the suite's MLServer reference.

Imported by MLServer only, inside its own virtual environment
(``make mlserver`` builds it under ``loadtests/.mlserver-venv``); the suite points
the model's ``implementation`` at ``loadtests.suite.mlserver_model.AddSub`` and puts
the repository on MLServer's PYTHONPATH.  The model is the same as the gateway's
built-in and Triton's: ``OUTPUT0 = INPUT0 + INPUT1``, ``OUTPUT1 = INPUT0 - INPUT1``
on FP32 [batch, 16], decoded and encoded with MLServer's own numpy codec, as an
MLServer user would write it.
"""

from __future__ import annotations

from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]


class AddSub(MLModel):  # type: ignore[misc]
    """Element-wise sum and difference of two FP32 tensors."""

    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        tensors = {tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs}
        a, b = tensors["INPUT0"], tensors["INPUT1"]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output("OUTPUT0", a + b),
                NumpyCodec.encode_output("OUTPUT1", a - b),
            ],
        )
