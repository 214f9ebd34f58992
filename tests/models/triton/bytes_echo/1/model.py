"""bytes_echo: OUTPUT = each BYTES element reversed, LENGTHS = its byte length (INT32).

Elements are treated as raw bytes, never decoded, so b"" and non-UTF-8 data round-trip.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Reverses every element of a BYTES tensor and reports element lengths."""

    def execute(self, requests):
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            # Fill a pre-shaped object array: np.array(list_of_bytes) could pick a
            # fixed-width "S" dtype, which silently strips trailing NUL bytes.
            reversed_ = np.empty(data.shape, dtype=np.object_)
            lengths = np.empty(data.shape, dtype=np.int32)
            for index, element in np.ndenumerate(data):
                raw = bytes(element)
                reversed_[index] = raw[::-1]
                lengths[index] = len(raw)
            out = pb_utils.Tensor("OUTPUT", reversed_)
            lens = pb_utils.Tensor("LENGTHS", lengths)
            responses.append(pb_utils.InferenceResponse(output_tensors=[out, lens]))
        return responses
