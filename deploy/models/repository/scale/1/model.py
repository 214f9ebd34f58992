"""scale: OUTPUT = INPUT * scale, the factor read once from the model's config."""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Multiplies every request's INPUT by the configured factor."""

    def initialize(self, args):
        parameters = json.loads(args["model_config"])["parameters"]
        self.scale = np.float32(parameters["scale"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out = pb_utils.Tensor("OUTPUT", (x * self.scale).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
