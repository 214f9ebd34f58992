"""Who may call the admin API: the admin token, or an identity of an admin tenant.

A call is let through when it carries ``authorization: Bearer <admin_token>``
(compared in constant time), or when its credentials — an API key, or a
verified mTLS client certificate's common name or subject alternative name —
map to a tenant with ``admin = true`` (``security.Authenticator``). Otherwise
it ends UNAUTHENTICATED (no credentials, or ones this gateway does not know)
or PERMISSION_DENIED (a known identity that is not an admin); neither message
says anything about backends or models.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from gateway.security import Authenticator, bearer
from gateway.status import abort
from scheduler.errors import GatewayError, PermissionDenied, Unauthenticated

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context = grpc.aio.ServicerContext[Any, Any]

NEEDS_ADMIN = (
    "the admin API needs 'authorization: Bearer <admin_token>' metadata, or the "
    "credentials of an admin tenant"
)
NOT_ADMIN = "this identity may not use the admin API"


class AdminGuard(grpc.aio.ServerInterceptor):
    """Checks every admin call inside its handler, where the TLS peer's
    certificate (``context.auth_context()``) is known: an interceptor alone
    sees only the metadata, so each handler is wrapped with the check."""

    def __init__(self, token: str | None, auth: Authenticator | None) -> None:
        self._token = token.encode() if token else None
        self._auth = auth

    def check(self, context: Context) -> None:
        """Return if the caller may use the admin API; raise why not."""
        metadata = context.invocation_metadata()
        key = bearer(metadata)
        if self._token is not None and key is not None:
            given = key.encode() if isinstance(key, str) else bytes(key)
            if hmac.compare_digest(given, self._token):
                return
        if self._auth is None:
            raise Unauthenticated(NEEDS_ADMIN)
        try:
            tenant = self._auth.identify(metadata, context.auth_context())
        except Unauthenticated:
            raise Unauthenticated(NEEDS_ADMIN) from None
        if not tenant.admin:
            raise PermissionDenied(NOT_ADMIN)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:  # server reflection
            return grpc.stream_stream_rpc_method_handler(
                self._streaming(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # the admin service and reflection have no other kinds

    def _unary(self, behaviour: Any) -> Any:
        @functools.wraps(behaviour)
        async def guarded(request: Any, context: Context) -> Any:
            try:
                self.check(context)
            except GatewayError as exc:
                await abort(context, exc)
            return await behaviour(request, context)

        return guarded

    def _streaming(self, behaviour: Any) -> Any:
        @functools.wraps(behaviour)
        async def guarded(requests: Any, context: Context) -> AsyncIterator[Any]:
            try:
                self.check(context)
            except GatewayError as exc:
                await abort(context, exc)
            async for response in behaviour(requests, context):
                yield response

        return guarded
