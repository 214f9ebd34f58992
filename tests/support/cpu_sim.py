"""A CPU-backend twin of the Triton test model ``gpu_sim``, for mixed fleets.

Same name and signature (INPUT FP32 [-1,-1] -> OUTPUT = 2 * INPUT, max_batch_size
64), so the gateway routes ``gpu_sim`` to Triton servers and to its CPU pool
alike; its cost is ``CPU_SIM_FIXED_MS + CPU_SIM_PER_ITEM_MS * rows`` (defaults
20 ms and 1 ms: slower than the simulated GPU, as a CPU would be). Load it with
``--cpu-model tests.support.cpu_sim:gpu_sim``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

import numpy as np

from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec


class CpuGpuSim:
    """Doubles its input after sleeping like a slow device (on a worker thread)."""

    def __init__(self) -> None:
        self.fixed_s = float(os.environ.get("CPU_SIM_FIXED_MS") or 20) / 1000
        self.per_item_s = float(os.environ.get("CPU_SIM_PER_ITEM_MS") or 1) / 1000
        shape = (-1, -1)
        self._spec = ModelSpec(
            name="gpu_sim",
            max_batch_size=64,
            platform="numpy",
            inputs=(TensorSpec("INPUT", DataType.FP32, shape),),
            outputs=(TensorSpec("OUTPUT", DataType.FP32, shape),),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        data = inputs["INPUT"]
        time.sleep(self.fixed_s + self.per_item_s * data.shape[0])
        return {"OUTPUT": data * 2}


def gpu_sim() -> CpuGpuSim:
    return CpuGpuSim()


class Spin:
    """Holds the GIL: a pure-Python loop of ``SPIN_MS`` (default 100) per call,
    then reports which process ran it. Load with ``tests.support.cpu_sim:spin``."""

    def __init__(self) -> None:
        self.spin_s = float(os.environ.get("SPIN_MS") or 100) / 1000
        self._spec = ModelSpec(
            name="spin",
            max_batch_size=8,
            platform="python",
            inputs=(TensorSpec("INPUT", DataType.FP32, (-1, -1)),),
            outputs=(
                TensorSpec("OUTPUT", DataType.FP32, (-1, -1)),
                TensorSpec("PID", DataType.INT64, (-1, 1)),
            ),
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def __call__(self, inputs: Mapping[str, Tensor], parameters: Parameters) -> dict[str, Tensor]:
        data = inputs["INPUT"]
        end = time.perf_counter() + self.spin_s
        while time.perf_counter() < end:  # never releases the GIL for long
            pass
        pid = np.full((data.shape[0], 1), os.getpid(), dtype=np.int64)
        return {"OUTPUT": data * 2, "PID": pid}


def spin() -> Spin:
    return Spin()
