"""The one mapping from the error family to gRPC statuses."""

from __future__ import annotations

import logging
import re
import time
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


#: Backend ids (``triton@host:port``) and bare ``host:port`` addresses: where
#: the gateway's backends live is no caller's business (they are in the logs).
_BACKEND_ID = re.compile(r"\b[\w-]+@[\w.\-\[\]:]+:\d+")
_ADDRESS = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}:\d+\b|\[[0-9a-fA-F:]+\]:\d+")


def short(message: str) -> str:
    """A status message as a caller may see it: backend ids and addresses
    replaced, cut to ``MAX_MESSAGE_CHARS`` (saying that it was)."""
    if "@" in message or ":" in message:
        message = _ADDRESS.sub("a backend", _BACKEND_ID.sub("a backend", message))
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 18] + " ... (message cut)"


class _TracebackLimiter:
    """At most one full traceback per ``period_s`` for each exception type; the
    rest are one line each, so a failure on every request cannot flood the log."""

    def __init__(self, period_s: float = 10.0) -> None:
        self._period_s = period_s
        self._last: dict[type[BaseException], float] = {}

    def full(self, exc: BaseException) -> bool:
        now = time.monotonic()
        last = self._last.get(type(exc))
        if last is not None and now - last < self._period_s:
            return False
        if len(self._last) > 256:
            self._last.clear()
        self._last[type(exc)] = now
        return True


_tracebacks = _TracebackLimiter()


def trailing_metadata(error: GatewayError) -> tuple[tuple[str, str], ...]:
    if isinstance(error, ResourceExhausted) and error.retry_after_ms is not None:
        # The standard hint gRPC clients with retry policies honour.
        return (("grpc-retry-pushback-ms", str(error.retry_after_ms)),)
    return ()


def internal_error(exc: BaseException) -> GatewayError:
    """An unexpected exception, logged in full, returned with a reference only."""
    ref = uuid.uuid4().hex[:12]
    if _tracebacks.full(exc):
        log.error("internal error %s", ref, exc_info=exc)
    else:
        log.error("internal error %s: %s (traceback logged earlier)", ref, type(exc).__name__)
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
