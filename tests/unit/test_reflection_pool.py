"""gateway.reflection.ChainedPool: lookups across the private and default pools."""

from __future__ import annotations

import grpc_health.v1.health_pb2  # noqa: F401  (registers grpc.health.v1 in the default pool)
import pytest
from google.protobuf import descriptor_pool

import gateway.api.inference.grpc_service_pb2  # noqa: F401  (fills the private pool)
from gateway.api import _pool
from gateway.reflection import ChainedPool

OURS = "inference/grpc_service.proto"


@pytest.fixture
def pool() -> ChainedPool:
    return ChainedPool(_pool.POOL, descriptor_pool.Default())


def test_symbols_from_the_private_pool(pool: ChainedPool) -> None:
    assert pool.FindFileContainingSymbol("inference.ModelInferRequest").name == OURS
    assert pool.FindFileContainingSymbol("inference.GRPCInferenceService").name == OURS
    message = pool.FindMessageTypeByName("inference.ModelInferRequest")
    assert message.full_name == "inference.ModelInferRequest"
    assert "raw_input_contents" in message.fields_by_name
    assert pool.FindFileByName(OURS).package == "inference"


def test_symbols_from_the_default_pool(pool: ChainedPool) -> None:
    assert pool.FindFileContainingSymbol("grpc.health.v1.Health").name == (
        "grpc_health/v1/health.proto"
    )
    assert pool.FindFileByName("grpc_health/v1/health.proto").package == "grpc.health.v1"
    assert (
        pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest").full_name
        == "grpc.health.v1.HealthCheckRequest"
    )


def test_method_symbols_resolve_to_their_service_file(pool: ChainedPool) -> None:
    with pytest.raises(KeyError):  # why the fallback exists
        _pool.POOL.FindFileContainingSymbol("inference.GRPCInferenceService.ModelInfer")
    file = pool.FindFileContainingSymbol("inference.GRPCInferenceService.ModelInfer")
    assert file.name == OURS
    assert "ModelInfer" in file.services_by_name["GRPCInferenceService"].methods_by_name
    health = pool.FindFileContainingSymbol("grpc.health.v1.Health.Watch")
    assert health.name == "grpc_health/v1/health.proto"


def test_private_pool_wins_over_tritonclient_copy(pool: ChainedPool) -> None:
    import tritonclient.grpc  # noqa: F401  (registers the same symbols in the default pool)

    assert pool.FindFileContainingSymbol("inference.ModelInferRequest").name == OURS


@pytest.mark.parametrize(
    "name", ["nosuch", "no.such.Thing", "inference.NoSuchService.ModelInfer", "inference.Nope"]
)
def test_unknown_symbols_raise_key_error(pool: ChainedPool, name: str) -> None:
    with pytest.raises(KeyError):
        pool.FindFileContainingSymbol(name)


def test_unknown_file_and_message_raise_key_error(pool: ChainedPool) -> None:
    with pytest.raises(KeyError):
        pool.FindFileByName("no/such.proto")
    with pytest.raises(KeyError):
        pool.FindMessageTypeByName("inference.NoSuchMessage")


def test_made_up_member_of_a_message_is_unknown(pool: ChainedPool) -> None:
    with pytest.raises(KeyError):
        pool.FindFileContainingSymbol("inference.ModelInferRequest.NoSuchMethod")
