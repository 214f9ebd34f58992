"""The one mapping from the error family to gRPC statuses."""

from __future__ import annotations

import logging
import uuid
from typing import NoReturn

import grpc

from scheduler.errors import GatewayError, ResourceExhausted

log = logging.getLogger(__name__)


def status_code(error: GatewayError) -> grpc.StatusCode:
    try:
        return grpc.StatusCode[error.code]
    except KeyError:  # a backend reported a code gRPC does not know
        return grpc.StatusCode.INTERNAL


#: Status messages travel in a header: one that echoes a caller's 20,000-character
#: model name would pass gRPC's metadata limit and turn into RESOURCE_EXHAUSTED.
MAX_MESSAGE_CHARS = 1024


def short(message: str) -> str:
    """A status message cut to ``MAX_MESSAGE_CHARS``, saying that it was."""
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 18] + " ... (message cut)"


def trailing_metadata(error: GatewayError) -> tuple[tuple[str, str], ...]:
    if isinstance(error, ResourceExhausted) and error.retry_after_ms is not None:
        # The standard hint gRPC clients with retry policies honour.
        return (("grpc-retry-pushback-ms", str(error.retry_after_ms)),)
    return ()


def internal_error(exc: BaseException) -> GatewayError:
    """An unexpected exception, logged in full, returned with a reference only."""
    ref = uuid.uuid4().hex[:12]
    log.exception("internal error %s", ref, exc_info=exc)
    return GatewayError(f"internal error in the gateway (reference {ref} in its logs)")


async def abort(
    context: grpc.aio.ServicerContext[object, object],
    error: GatewayError,
    extra_metadata: tuple[tuple[str, str], ...] = (),
) -> NoReturn:
    """End the rpc with the error's status; ``extra_metadata`` (e.g. the trace
    id) joins the error's own trailing metadata."""
    metadata = trailing_metadata(error) + extra_metadata
    if metadata:
        context.set_trailing_metadata(metadata)
    await context.abort(status_code(error), short(error.message))
    raise AssertionError("unreachable: context.abort raises")  # pragma: no cover
