"""Model metadata, config and statistics messages, rendered from scheduler specs."""

from __future__ import annotations

from google.protobuf import json_format

from gateway.api import _pool
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import model_config_pb2 as mc
from scheduler.spec import DataType, ModelSpec, TensorSpec
from scheduler.stats import Duration, ModelStats


def model_metadata(spec: ModelSpec) -> pb.ModelMetadataResponse:
    def tensors(items: tuple[TensorSpec, ...]) -> list[pb.ModelMetadataResponse.TensorMetadata]:
        return [
            pb.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype.value, shape=list(t.shape)
            )
            for t in items
        ]

    return pb.ModelMetadataResponse(
        name=spec.name,
        versions=list(spec.versions),
        platform=spec.platform,
        inputs=tensors(spec.inputs),
        outputs=tensors(spec.outputs),
    )


def _config_type(datatype: DataType) -> str:
    """The model-config enum name: Triton spells BYTES as TYPE_STRING."""
    return "TYPE_STRING" if datatype is DataType.BYTES else f"TYPE_{datatype.value}"


def model_config(spec: ModelSpec) -> mc.ModelConfig:
    """Triton's own config when the model came from Triton (passed through
    whole: the messages are wire-identical), else one synthesised from the spec.
    """
    if spec.config:
        return json_format.ParseDict(
            dict(spec.config),
            mc.ModelConfig(),
            ignore_unknown_fields=True,
            descriptor_pool=_pool.POOL,
        )
    # Config dims leave out the batch dimension that metadata shapes include.
    skip = 1 if spec.max_batch_size > 0 else 0
    return mc.ModelConfig(
        name=spec.name,
        platform=spec.platform,
        backend="gateway-cpu",
        max_batch_size=spec.max_batch_size,
        input=[
            mc.ModelInput(
                name=t.name, data_type=_config_type(t.datatype), dims=list(t.shape[skip:])
            )
            for t in spec.inputs
        ],
        output=[
            mc.ModelOutput(
                name=t.name, data_type=_config_type(t.datatype), dims=list(t.shape[skip:])
            )
            for t in spec.outputs
        ],
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )


def _duration(d: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def model_statistics(spec: ModelSpec, stats: ModelStats, version: str) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=spec.name,
        version=version or spec.versions[-1],
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_infer=_duration(stats.compute_infer),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=rows,
                compute_infer=pb.StatisticDuration(
                    count=count, ns=int(stats.batch_compute_s.get(rows, 0.0) * 1e9)
                ),
            )
            for rows, count in sorted(stats.batch_sizes.items())
        ],
    )
