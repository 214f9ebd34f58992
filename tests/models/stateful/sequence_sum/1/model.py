"""Running sum per sequence: OUTPUT is INPUT plus everything the sequence sent before."""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.sums = {}

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy()
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy()
            key = request.correlation_id()
            base = 0 if start.any() else self.sums.get(key, 0)
            total = base + int(value.sum())
            if end.any():
                self.sums.pop(key, None)
            else:
                self.sums[key] = total
            out = np.full(value.shape, total, dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT", out)]))
        return responses
