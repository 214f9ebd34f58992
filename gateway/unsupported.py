"""The rpcs of ``GRPCInferenceService`` the gateway does not serve, each with why."""

from __future__ import annotations

from typing import Any

import grpc

from gateway import codec
from gateway.status import abort
from scheduler.errors import Unimplemented

Context = grpc.aio.ServicerContext[Any, Any]

_NO_REPOSITORY_CONTROL = (
    "the gateway does not load or unload models: it serves what its backends serve; "
    "load the model on the Triton server and the gateway discovers it"
)


class UnsupportedRpcs:
    """UNIMPLEMENTED, with what to do instead: the gateway serves what its
    backends serve (no repository control), takes tensors in the message
    (no shared memory), and is configured by its settings and ``OTEL_*``."""

    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(_NO_REPOSITORY_CONTROL))

    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(_NO_REPOSITORY_CONTROL))

    async def SystemSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def SystemSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def SystemSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="system")))

    async def CudaSharedMemoryStatus(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def CudaSharedMemoryRegister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def CudaSharedMemoryUnregister(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented(codec.NO_SHARED_MEMORY.format(kind="CUDA")))

    async def TraceSetting(self, request: Any, context: Context) -> Any:
        await abort(
            context,
            Unimplemented("trace settings are set with the standard OTEL_* environment variables"),
        )

    async def LogSettings(self, request: Any, context: Context) -> Any:
        await abort(context, Unimplemented("log settings are set in the gateway's configuration"))
