"""gpu_sim: emulates a GPU's cost shape on a CPU (OUTPUT = INPUT * 2, FP32, dims [-1]).

Each ``execute()`` call sleeps ``fixed_ms + per_item_ms * total_batch_rows`` once for
all the requests it was handed, so batching amortises the fixed cost as on a real GPU.

Timing comes from config.pbtxt ``parameters`` (``fixed_ms``, ``per_item_ms``) and can be
overridden per server by the environment variables ``GPU_SIM_FIXED_MS`` and
``GPU_SIM_PER_ITEM_MS`` given to tritonserver (an empty value counts as unset): the
Python backend stub is started by
tritonserver and inherits its environment (see tests/support/triton.py ``start_triton``).

This file is shared with ``gpu_sim_tb`` through a symlink; nothing here depends on the
model's name.
"""

import json
import os
import time

import numpy as np
import triton_python_backend_utils as pb_utils

_DEFAULT_FIXED_MS = 5.0
_DEFAULT_PER_ITEM_MS = 0.1


def _setting(parameters, key, env_var, default):
    """Environment variable first, then the config parameter, then the default."""
    from_env = os.environ.get(env_var)
    if from_env:
        return float(from_env)
    entry = parameters.get(key)
    if entry and entry.get("string_value"):
        return float(entry["string_value"])
    return default


class TritonPythonModel:
    """Doubles its input after a simulated, batch-size-dependent compute delay."""

    def initialize(self, args):
        parameters = json.loads(args["model_config"]).get("parameters", {})
        self.fixed_ms = _setting(parameters, "fixed_ms", "GPU_SIM_FIXED_MS", _DEFAULT_FIXED_MS)
        self.per_item_ms = _setting(
            parameters, "per_item_ms", "GPU_SIM_PER_ITEM_MS", _DEFAULT_PER_ITEM_MS
        )
        pb_utils.Logger.log_info(
            f"{args['model_name']}: fixed_ms={self.fixed_ms} per_item_ms={self.per_item_ms}"
        )

    def execute(self, requests):
        inputs = [
            pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy() for request in requests
        ]
        # With max_batch_size > 0 the first dimension is the batch: count rows over all
        # requests (Triton's dynamic batcher hands several requests to one call).
        rows = sum(int(data.shape[0]) for data in inputs)
        time.sleep((self.fixed_ms + self.per_item_ms * rows) / 1000.0)
        return [
            pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("OUTPUT", (data * 2).astype(np.float32))]
            )
            for data in inputs
        ]
