"""int64_offset: OUTPUT = INPUT + 1 (INT64, dims [-1])."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Adds one to every element, keeping the request's shape."""

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            out = pb_utils.Tensor("OUTPUT", (data + np.int64(1)).astype(np.int64))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
