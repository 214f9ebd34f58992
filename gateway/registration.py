"""The gateway's services on its gRPC server: which methods are registered, and why few.

grpc.aio's server keeps one pending "request call" per registered method, and
one more for every other method, and for each rpc it accepts it waits on all
of them at once (``asyncio.wait(..., FIRST_COMPLETED)`` in its main loop):
``asyncio.wait`` adds a done callback to every pending future, checks each
one's type, and removes the callbacks again. Every registered method so costs
every rpc of the server, whatever its method, a few Python calls. The
generated ``add_*_to_server`` functions register every method of their
service (the inference service's 20, health's 2, reflection's 1): with all
of them registered, the gateway's event loop spent 1,011K instructions per
passthrough ``ModelInfer``, with only the inference rpcs 895K
(``loadtests/results/instructions.md``; the bytes proxy it is measured
against spends 564K).

So only the inference rpcs are registered (``add_to_server``); the others,
health and reflection included (``GenericOnly``), are found through the
generic handler their ``add_*_to_server`` function also adds, as for any
unregistered method (a lookup by method name).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from gateway.api.inference import grpc_service_pb2 as pb
from gateway.security import authenticated
from gateway.servicer import InferenceServicer
from gateway.telemetry import MODEL_INFER


class GenericOnly:
    """A ``grpc.aio.Server`` as a generated ``add_*_to_server`` function sees
    it: its generic handlers are added, its method registrations dropped
    (those methods are served by the generic handler all the same)."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Nothing: see the module docstring."""


def add_to_server(servicer: InferenceServicer, server: grpc.aio.Server) -> None:
    """Serve every rpc of ``GRPCInferenceService``; the two inference rpcs
    take and return bytes, the rest use the generated messages."""
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name)
        if method.name not in ("ModelInfer", "ModelStreamInfer"):
            if servicer.auth is not None:
                behaviour = authenticated(servicer.auth, behaviour)
            behaviour = servicer.tracing.answering_with_trace_id(behaviour)
        if method.name == "ModelInfer":
            behaviour = servicer.tracing.traced(MODEL_INFER, behaviour)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(behaviour)
        elif method.name == "ModelStreamInfer":
            # An async generator function (a partial of one), which gRPC iterates itself.
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(servicer.stream_handler)
        else:
            request_type = getattr(pb, method.input_type.name)
            response_type = getattr(pb, method.output_type.name)
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                behaviour,
                request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    # Only the inference rpcs are registered methods (see the module docstring).
    hot = ("ModelInfer", "ModelStreamInfer")
    server.add_registered_method_handlers(service.full_name, {n: handlers[n] for n in hot})
