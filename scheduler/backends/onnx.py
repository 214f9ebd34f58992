"""The ONNX Runtime backend: ONNX models from a Triton-layout model repository,
run on the gateway's own CPUs as a spill tier.

A Triton model repository holds, per model, ``config.pbtxt`` and numbered
version directories with the model file (``1/model.onnx``). This backend
reads the same layout, so one repository serves a model on GPUs through
Triton and, from the same files, on the gateway's CPU tier. Models whose
config names another platform or backend are skipped (Triton serves them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from scheduler.backends.base import DecodedTensorsOnly, Device, DeviceKind
from scheduler.backends.worker_pool import WorkerSlots, runner_for, time_left
from scheduler.clock import Clock, MonotonicClock
from scheduler.errors import BackendError, DeadlineExceeded
from scheduler.placement import Tier
from scheduler.request import Parameters
from scheduler.spec import DataType, ModelSpec, Tensor, TensorSpec

log = logging.getLogger(__name__)

_PLATFORM = "onnxruntime_onnx"


class OnnxModelError(ValueError):
    """A model in the repository cannot be served; the message says which and why."""


def read_config(directory: Path) -> dict[str, Any]:
    """A model's ``config.pbtxt`` as Triton's JSON form (proto field names)."""
    message = model_config_pb2.ModelConfig()
    try:
        text_format.Parse((directory / "config.pbtxt").read_text(), message)
    except (OSError, text_format.ParseError) as exc:
        raise OnnxModelError(f"model '{directory.name}': bad config.pbtxt: {exc}") from exc
    config: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    config.setdefault("name", directory.name)
    return config


def serves(config: Mapping[str, Any]) -> bool:
    """Whether a config is an ONNX model (Triton's platform or backend name)."""
    return config.get("platform") == _PLATFORM or config.get("backend") == "onnxruntime"


def spec_from_config(config: Mapping[str, Any], versions: Sequence[str]) -> ModelSpec:
    """The ModelSpec Triton would report for this config: a batching model's
    shapes gain the batch dimension (-1) in front, as Triton's metadata has."""
    batch = int(config.get("max_batch_size", 0))

    def tensors(items: Sequence[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                t["name"],
                DataType.parse(str(t["data_type"]).removeprefix("TYPE_")),
                ((-1,) if batch else ()) + tuple(int(d) for d in t.get("dims", [])),
            )
            for t in items
        )

    return ModelSpec(
        name=str(config["name"]),
        inputs=tensors(config.get("input", [])),
        outputs=tensors(config.get("output", [])),
        versions=tuple(versions),
        platform=_PLATFORM,
        max_batch_size=batch,
        config=dict(config),
    )


class OnnxModel:
    """One model: its spec and an ONNX Runtime session of its newest version.

    The session runs with ``threads`` intra-op threads (1 by default: the
    backend's ``workers`` give the parallelism, one batch per worker, which
    keeps a busy gateway from oversubscribing its cores).
    """

    def __init__(self, directory: Path, *, threads: int = 1) -> None:
        config = read_config(directory)
        versions = sorted(
            (p.name for p in directory.iterdir() if p.is_dir() and p.name.isdigit()), key=int
        )
        filename = str(config.get("default_model_filename") or "model.onnx")
        found = [v for v in versions if (directory / v / filename).is_file()]
        if not found:
            raise OnnxModelError(f"model '{directory.name}': no version holds {filename}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        path = directory / found[-1] / filename
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise OnnxModelError(f"model '{directory.name}': cannot load {path}: {exc}") from exc
        self.spec = spec_from_config(config, found)
        wanted = {t.name for t in self.spec.inputs}
        have = {i.name for i in self.session.get_inputs()}
        if not self.spec.inputs or wanted != have:
            raise OnnxModelError(
                f"model '{self.spec.name}': config inputs {sorted(wanted)} are not the "
                f"model's {sorted(have)}"
            )

    def run(self, inputs: Mapping[str, Tensor], outputs: tuple[str, ...]) -> dict[str, Tensor]:
        names = list(outputs) or [t.name for t in self.spec.outputs]
        produced = self.session.run(names, dict(inputs))
        return dict(zip(names, (np.asarray(a) for a in produced), strict=True))


def load_repository(repository: Path, *, threads: int = 1) -> list[OnnxModel]:
    """Every ONNX model of a Triton-layout repository; others are skipped."""
    if not repository.is_dir():
        raise OnnxModelError(f"ONNX model repository {repository} is not a directory")
    models = []
    for directory in sorted(repository.iterdir()):
        if (directory / "config.pbtxt").is_file() and serves(read_config(directory)):
            models.append(OnnxModel(directory, threads=threads))
    return models


class OnnxBackend(DecodedTensorsOnly):
    """Runs a repository's ONNX models with ONNX Runtime on worker threads.

    ONNX Runtime releases the GIL while it computes, so each call runs on one
    of ``workers`` threads while the event loop goes on; at most ``workers``
    calls run at once and later ones wait for a slot, never past their
    deadline. A call that misses its deadline while running cannot be
    interrupted: it finishes in the background and holds its slot until
    then, so abandoned work never oversubscribes the pool. It is a CPU-tier
    backend: placement sends it work as a spill when no accelerator can
    finish in time, or as the only server of a model.
    """

    def __init__(
        self,
        repository: Path,
        *,
        backend_id: str = "onnx",
        workers: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._id = backend_id
        self._workers = workers or max(1, min(4, os.cpu_count() or 1))
        self._models = {m.spec.name: m for m in load_repository(repository)}
        self._specs = {name: m.spec for name, m in self._models.items()}
        self._clock = clock or MonotonicClock()
        self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix=f"{backend_id}-worker")
        self._slots = WorkerSlots(self._workers, self._clock, "ONNX")
        self._closed = False
        log.info("ONNX backend %s serves %s from %s", backend_id, sorted(self._specs), repository)

    @property
    def id(self) -> str:
        return self._id

    @property
    def device(self) -> Device:
        return Device(DeviceKind.CPU, name=f"onnxruntime, {self._workers} worker threads")

    @property
    def tier(self) -> Tier:
        return Tier.CPU

    @property
    def endpoint(self) -> str:
        return ""

    @property
    def workers(self) -> int:
        return self._workers

    def service_time_hints(self) -> Sequence[tuple[str, int, float]]:
        return ()

    def models(self) -> Mapping[str, ModelSpec]:
        return self._specs

    async def start(self) -> None:
        return None

    async def health(self) -> bool:
        return not self._closed

    async def infer(
        self,
        model: ModelSpec,
        inputs: Mapping[str, Tensor],
        *,
        version: str = "",
        outputs: tuple[str, ...] = (),
        parameters: Parameters | None = None,
        deadline: float | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> dict[str, Tensor]:
        runner = runner_for(
            self._models, model, kind="ONNX", backend_id=self._id, closed=self._closed
        )
        loop = asyncio.get_running_loop()
        future = await self._slots.submit(
            model,
            time_left(model, deadline, self._clock),
            lambda: loop.run_in_executor(self._pool, runner.run, inputs, outputs),
        )
        try:
            return await self._slots.finish(model, future, deadline)
        except DeadlineExceeded:
            raise
        except Exception as exc:  # ONNX Runtime's errors, translated here once
            raise BackendError(
                f"ONNX model '{model.name}' failed: {type(exc).__name__}: {exc}",
                backend_id=self._id,
            ) from exc

    async def aclose(self) -> None:
        self._closed = True
        with contextlib.suppress(RuntimeError):
            await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
