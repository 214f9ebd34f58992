"""protos/inference/ stays wire compatible with Triton's API, as tritonclient ships it.

Our descriptors (the generated modules in gateway.api) are compared with the
ones compiled into ``tritonclient.grpc.service_pb2`` / ``model_config_pb2``:
message, enum and service names, field numbers, types, labels, referenced type
names, oneofs and map entries, enum value numbers, rpc signatures.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import numpy as np
import tritonclient.grpc
import tritonclient.grpc.aio  # both client flavours load their stubs in this process
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor
from tritonclient.grpc import model_config_pb2 as triton_config
from tritonclient.grpc import service_pb2 as triton_service

from gateway.api import _pool
from gateway.api.inference import grpc_service_pb2, grpc_service_pb2_grpc, model_config_pb2

_FDP = descriptor_pb2.FieldDescriptorProto

TRITON_RPCS = [
    "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
    "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
    "RepositoryIndex", "RepositoryModelLoad", "RepositoryModelUnload",
    "SystemSharedMemoryStatus", "SystemSharedMemoryRegister", "SystemSharedMemoryUnregister",
    "CudaSharedMemoryStatus", "CudaSharedMemoryRegister", "CudaSharedMemoryUnregister",
    "TraceSetting", "LogSettings",
]  # fmt: skip


def _file_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


class _Index:
    """A file's messages (nested ones too), enums and services by full name."""

    def __init__(self, file: FileDescriptor) -> None:
        proto = _file_proto(file)
        self.messages: dict[str, descriptor_pb2.DescriptorProto] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.services = {f"{proto.package}.{s.name}": s for s in proto.service}
        self._walk(proto.package, proto.message_type, proto.enum_type)

    def _walk(
        self,
        prefix: str,
        messages: Iterable[descriptor_pb2.DescriptorProto],
        enums: Iterable[descriptor_pb2.EnumDescriptorProto],
    ) -> None:
        for enum in enums:
            self.enums[f"{prefix}.{enum.name}"] = enum
        for msg in messages:
            name = f"{prefix}.{msg.name}"
            self.messages[name] = msg
            self._walk(name, msg.nested_type, msg.enum_type)


def _field_facts(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> dict[str, object]:
    return {
        "number": field.number,
        "type": _FDP.Type.Name(field.type),
        "label": _FDP.Label.Name(field.label),
        "type_name": field.type_name,  # fully qualified: ".inference.InferParameter"
        "oneof": msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None,
        "proto3_optional": field.proto3_optional,
    }


def _missing(kind: str, names: Iterable[str], present: Collection[str], where: str) -> list[str]:
    return sorted(f"{kind} {name}: not in {where}" for name in names if name not in present)


def compare_files(ours: FileDescriptor, theirs: FileDescriptor, *, both_ways: bool) -> list[str]:
    """Every wire-relevant difference between two files, one line each.

    Everything declared in ``ours`` must exist identically in ``theirs``; with
    ``both_ways`` nothing of ``theirs`` may be missing from ``ours`` either.
    """
    mine, other = _Index(ours), _Index(theirs)
    problems: list[str] = []
    for kind in ("messages", "enums", "services"):
        a, b = getattr(mine, kind), getattr(other, kind)
        problems += _missing(kind[:-1], a, b, "Triton's")
        if both_ways:
            problems += _missing(kind[:-1], b, a, "ours")

    for name in sorted(mine.messages.keys() & other.messages.keys()):
        my_msg, their_msg = mine.messages[name], other.messages[name]
        if my_msg.options.map_entry != their_msg.options.map_entry:
            problems.append(f"message {name}: map_entry differs")
        my_fields = {f"{name}.{f.name}": _field_facts(my_msg, f) for f in my_msg.field}
        their_fields = {f"{name}.{f.name}": _field_facts(their_msg, f) for f in their_msg.field}
        problems += _missing("field", my_fields, their_fields, "Triton's")
        if both_ways:
            problems += _missing("field", their_fields, my_fields, "ours")
        for field in sorted(my_fields.keys() & their_fields.keys()):
            for key, value in my_fields[field].items():
                if value != (expected := their_fields[field][key]):
                    problems.append(f"field {field}: {key} {value!r} != {expected!r}")

    for name in sorted(mine.enums.keys() & other.enums.keys()):
        my_values = {f"{name}.{v.name}": v.number for v in mine.enums[name].value}
        their_values = {f"{name}.{v.name}": v.number for v in other.enums[name].value}
        problems += _missing("enum value", my_values, their_values, "Triton's")
        if both_ways:
            problems += _missing("enum value", their_values, my_values, "ours")
        for value in sorted(my_values.keys() & their_values.keys()):
            if my_values[value] != their_values[value]:
                problems.append(f"enum value {value}: {my_values[value]} != {their_values[value]}")

    def signatures(service: descriptor_pb2.ServiceDescriptorProto) -> dict[str, tuple[object, ...]]:
        return {
            m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for m in service.method
        }

    for name in sorted(mine.services.keys() & other.services.keys()):
        my_rpcs, their_rpcs = signatures(mine.services[name]), signatures(other.services[name])
        for rpc in sorted(my_rpcs.keys() | their_rpcs.keys()):
            if my_rpcs.get(rpc) != their_rpcs.get(rpc):
                problems.append(f"rpc {name}.{rpc}: {my_rpcs.get(rpc)} != {their_rpcs.get(rpc)}")
    return problems


OURS_SERVICE, THEIRS_SERVICE = grpc_service_pb2.DESCRIPTOR, triton_service.DESCRIPTOR
OURS_CONFIG, THEIRS_CONFIG = model_config_pb2.DESCRIPTOR, triton_config.DESCRIPTOR


def test_grpc_service_matches_triton_both_ways() -> None:
    assert compare_files(OURS_SERVICE, THEIRS_SERVICE, both_ways=True) == []


def test_model_config_matches_triton() -> None:
    assert compare_files(OURS_CONFIG, THEIRS_CONFIG, both_ways=False) == []


def test_model_config_is_complete() -> None:
    # Fails when a newer tritonclient adds config fields: add them to model_config.proto.
    assert compare_files(OURS_CONFIG, THEIRS_CONFIG, both_ways=True) == []


def test_service_declares_the_twenty_triton_rpcs() -> None:
    service = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert [m.name for m in service.methods] == TRITON_RPCS
    stream = service.methods_by_name["ModelStreamInfer"]
    assert (stream.client_streaming, stream.server_streaming) == (True, True)
    assert sum(m.client_streaming or m.server_streaming for m in service.methods) == 1
    assert hasattr(grpc_service_pb2_grpc, "GRPCInferenceServiceStub")


def test_comparison_reports_deliberate_mismatches() -> None:
    config = _file_proto(model_config_pb2.DESCRIPTOR)
    service = _file_proto(grpc_service_pb2.DESCRIPTOR)
    messages = {m.name: m for m in service.message_type}
    request = messages["ModelInferRequest"]
    next(f for f in request.field if f.name == "raw_input_contents").number = 17
    next(f for f in request.field if f.name == "id").type = _FDP.TYPE_BYTES
    next(f for f in messages["InferParameter"].field if f.name == "bool_param").ClearField(
        "oneof_index"
    )
    extensions = messages["ServerMetadataResponse"].field
    extensions.remove(next(f for f in extensions if f.name == "extensions"))
    rpcs = {m.name: m for m in service.service[0].method}
    rpcs["ModelStreamInfer"].client_streaming = False
    next(v for v in config.enum_type[0].value if v.name == "TYPE_BF16").number = 15

    pool = descriptor_pool.DescriptorPool()  # throwaway: keeps the real pools clean
    bad_config = pool.AddSerializedFile(config.SerializeToString())
    bad_service = pool.AddSerializedFile(service.SerializeToString())

    problems = compare_files(bad_service, THEIRS_SERVICE, both_ways=True)
    expected = [
        "field inference.ModelInferRequest.raw_input_contents: number 17 != 7",
        "field inference.ModelInferRequest.id: type 'TYPE_BYTES' != 'TYPE_STRING'",
        "field inference.InferParameter.bool_param: oneof None != 'parameter_choice'",
        "field inference.ServerMetadataResponse.extensions: not in ours",
        "rpc inference.GRPCInferenceService.ModelStreamInfer:",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), (line, problems)
    assert len(problems) == len(expected), problems
    config_problems = compare_files(bad_config, THEIRS_CONFIG, both_ways=False)
    assert config_problems == ["enum value inference.DataType.TYPE_BF16: 15 != 14"]


def test_private_pool_interoperates_with_tritonclient_on_bytes() -> None:
    # Both sets of generated modules are loaded in this process; ours live apart.
    assert grpc_service_pb2.DESCRIPTOR.pool is _pool.POOL
    assert _pool.POOL is not descriptor_pool.Default()
    assert grpc_service_pb2.ModelInferRequest is not triton_service.ModelInferRequest

    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = tritonclient.grpc.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    theirs = triton_service.ModelInferRequest(model_name="add", model_version="1", id="42")
    theirs.inputs.append(tensor._get_tensor())
    theirs.raw_input_contents.append(tensor._get_content())
    theirs.outputs.add(name="OUTPUT0").parameters["classification"].int64_param = 2
    theirs.parameters["sequence_id"].uint64_param = 7

    ours = grpc_service_pb2.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (ours.model_name, ours.model_version, ours.id) == ("add", "1", "42")
    assert (ours.inputs[0].name, ours.inputs[0].datatype) == ("INPUT0", "FP32")
    assert list(ours.inputs[0].shape) == [2, 3]
    assert ours.outputs[0].parameters["classification"].int64_param == 2
    assert ours.parameters["sequence_id"].WhichOneof("parameter_choice") == "uint64_param"
    decoded = np.frombuffer(ours.raw_input_contents[0], dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(decoded, data)
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )

    config = model_config_pb2.ModelConfig(name="add", max_batch_size=8)
    config.input.add(name="INPUT0", data_type=model_config_pb2.TYPE_FP32, dims=[-1])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    reply = grpc_service_pb2.ModelConfigResponse(config=config).SerializeToString()
    parsed = triton_service.ModelConfigResponse.FromString(reply).config
    assert parsed.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert parsed.input[0].data_type == triton_config.TYPE_FP32
    assert list(parsed.input[0].dims) == [-1]
