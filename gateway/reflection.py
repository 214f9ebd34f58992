"""Server reflection over the gateway's private descriptor pool.

The stock reflection service looks symbols up in one pool. Ours are in a
private pool (see ``gateway.api._pool``) while the health and reflection
services live in protobuf's default pool, so lookups try both. It also
answers for method symbols (``inference.GRPCInferenceService.ModelInfer``),
which ghz and grpcurl ask for and which a pool does not index by itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha import _async as reflection_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from gateway.api import _pool
from gateway.registration import GenericOnly


class ChainedPool:
    """Looks a name up in each pool in turn; duck-types the calls reflection makes."""

    def __init__(self, *pools: descriptor_pool.DescriptorPool) -> None:
        self._pools = pools

    def _first(self, method: str, *args: Any) -> Any:
        error: KeyError | None = None
        for pool in self._pools:
            try:
                return getattr(pool, method)(*args)
            except KeyError as exc:
                error = exc
        raise error or KeyError(args)

    def FindFileByName(self, name: str) -> Any:
        return self._first("FindFileByName", name)

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._first("FindFileContainingSymbol", symbol)
        except KeyError:
            # A method's file is its service's file, if the service has it.
            service, _, method = symbol.rpartition(".")
            if not service:
                raise
            file = self._first("FindFileContainingSymbol", service)
            for candidate in file.services_by_name.values():
                if candidate.full_name == service and method in candidate.methods_by_name:
                    return file
            raise

    def FindMessageTypeByName(self, name: str) -> Any:
        return self._first("FindMessageTypeByName", name)

    def FindExtensionByNumber(self, message: Any, number: int) -> Any:
        return self._first("FindExtensionByNumber", message, number)

    def FindAllExtensions(self, message: Any) -> Any:
        return self._first("FindAllExtensions", message)


def enable(server: grpc.aio.Server, service_names: Sequence[str]) -> None:
    """Serve reflection (asyncio's servicer) on ``server``, through its generic
    handler only (``gateway.registration``)."""
    pool = ChainedPool(_pool.POOL, descriptor_pool.Default())
    names = (*service_names, reflection.SERVICE_NAME)
    servicer = reflection_aio.ReflectionServicer(names, pool=pool)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, GenericOnly(server))
