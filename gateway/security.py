"""Who is calling, and what they may do: TLS credentials, identities, tenants.

An identity comes from an API key (``authorization: Bearer <key>`` or
``x-api-key: <key>`` metadata) or from a verified mTLS client certificate
(its common name or a subject alternative name), and maps to one tenant of
``Settings.tenants``. A tenant lists the models it may use, whether it may
use the admin API, and its quotas (``scheduler.quota``). Keys are kept only
as SHA-256 digests, so neither memory dumps nor logs hold them, and a lookup
compares digests, not secrets. Refusals are UNAUTHENTICATED (no or unknown
credentials) or PERMISSION_DENIED (a model the tenant may not use); their
messages carry no model data.

With no tenants configured, nothing here runs on the request path.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from gateway.config import ConfigError, Settings, TenantSettings
from gateway.status import abort
from scheduler.backends.triton_setup import TritonTls
from scheduler.clock import Clock
from scheduler.errors import GatewayError, PermissionDenied, Unauthenticated
from scheduler.quota import QuotaLimits, TenantQuota

NO_CREDENTIALS = (
    "this gateway needs credentials: send 'authorization: Bearer <API key>' metadata "
    "or connect with a client certificate"
)
BAD_CREDENTIALS = "the credentials sent are not valid here"
NOT_ALLOWED = "this identity may not use the requested model"


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


@dataclass(frozen=True, slots=True)
class Tenant:
    """One caller's rights and quota state."""

    name: str
    models: frozenset[str]  # "*": every model
    admin: bool
    quota: TenantQuota
    share: float = 1.0  # its weight in fair share (scheduler/batching/fair_share.py)

    def may_use(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class Authenticator:
    """Maps a call's credentials to its ``Tenant`` (see the module docstring)."""

    def __init__(self, tenants: Mapping[str, TenantSettings], clock: Clock) -> None:
        now = clock.now()
        self._by_key: dict[bytes, Tenant] = {}
        self._by_cert_name: dict[bytes, Tenant] = {}
        for name, spec in tenants.items():
            limits = QuotaLimits(spec.rate_per_s, spec.burst, spec.max_concurrent)
            tenant = Tenant(
                name, frozenset(spec.models), spec.admin, TenantQuota(name, limits, now), spec.share
            )
            for key in spec.api_keys:
                self._by_key[_digest(key.get_secret_value())] = tenant
            for cert_name in spec.client_cert_names:
                self._by_cert_name[cert_name.encode()] = tenant

    def identify(self, metadata: Iterable[Any] | None, auth_context: Mapping[str, Any]) -> Tenant:
        """The tenant of a call; Unauthenticated when it has no valid credentials."""
        key = bearer(metadata)
        if key is not None:
            tenant = self._by_key.get(_digest(key))
            if tenant is None:
                raise Unauthenticated(BAD_CREDENTIALS)
            return tenant
        names: Iterable[bytes] = (
            *auth_context.get("x509_common_name", ()),
            *auth_context.get("x509_subject_alternative_name", ()),
        )
        for cert_name in names:
            tenant = self._by_cert_name.get(cert_name)
            if tenant is not None:
                return tenant
        raise Unauthenticated(NO_CREDENTIALS)

    def identify_call(self, context: grpc.aio.ServicerContext[Any, Any]) -> Tenant:
        return self.identify(context.invocation_metadata(), context.auth_context())

    @staticmethod
    def authorize(tenant: Tenant, model: str) -> None:
        if not tenant.may_use(model):
            raise PermissionDenied(NOT_ALLOWED)


def bearer(metadata: Iterable[Any] | None) -> str | bytes | None:
    """The API key a call carries, if any."""
    for key, value in metadata or ():
        if key == "authorization":
            text = value if isinstance(value, str) else value.decode(errors="replace")
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
        elif key == "x-api-key" and value:
            return value  # type: ignore[no-any-return]
    return None


# -- TLS --------------------------------------------------------------------


def _read(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS for the front door and the admin API (mutual with a client CA); None: plaintext."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    key, cert = _read(settings.tls_key_file), _read(settings.tls_cert_file)
    assert key is not None and cert is not None
    ca = _read(settings.tls_client_ca_file)
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def triton_tls(settings: Settings) -> TritonTls | None:
    """TLS towards every Triton, when ``triton_tls_ca_file`` is set."""
    if settings.triton_tls_ca_file is None:
        return None
    return TritonTls(
        settings.triton_tls_ca_file, settings.triton_tls_cert_file, settings.triton_tls_key_file
    )


def is_loopback(host: str) -> bool:
    if host == "localhost" or host.startswith("unix:"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_exposure(settings: Settings) -> None:
    """Refuse an admin API reachable from other hosts that anyone could call."""
    if settings.admin_port is None or is_loopback(settings.admin_host):
        return
    guarded = (
        settings.admin_token is not None
        or any(t.admin and t.api_keys for t in settings.tenants.values())
        or settings.tls_client_ca_file is not None
    )
    if not guarded and not settings.admin_allow_unauthenticated:
        raise ConfigError(
            f"admin_host {settings.admin_host} is not a loopback address, and the admin API "
            "would take calls from anyone: set admin_token (or a tenant with admin = true "
            "and api_keys), or admin_allow_unauthenticated = true to accept that"
        )


def metrics_tls(settings: Settings) -> dict[str, Any]:
    """``start_http_server`` arguments that put /metrics behind the same TLS."""
    if settings.tls_cert_file is None:
        return {}
    ca = settings.tls_client_ca_file
    return {
        "certfile": str(settings.tls_cert_file),
        "keyfile": str(settings.tls_key_file),
        "client_cafile": str(ca) if ca else None,
        "client_auth_required": ca is not None,
    }


def visible(
    auth: Authenticator | None, context: grpc.aio.ServicerContext[Any, Any]
) -> Callable[[str], bool]:
    """Which models a caller's listings show: those its tenant may use (every
    model without tenants). For rpcs behind ``authenticated``, so the caller
    was identified already."""
    if auth is None:
        return _everything
    return auth.identify_call(context).may_use


def _everything(model: str) -> bool:
    return True


def authenticated(auth: Authenticator, behaviour: Any) -> Any:
    """An rpc ``behaviour`` for identified callers only; a model named in the
    request (metadata, config, readiness, statistics) must be one the caller
    may use, or the call ends PERMISSION_DENIED, whether that model exists or
    not (so a refusal does not tell a tenant which models exist)."""

    @functools.wraps(behaviour)
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            tenant = auth.identify_call(context)
            name = getattr(request, "name", "")
            if name:
                auth.authorize(tenant, name)
        except GatewayError as exc:
            await abort(context, exc)
        return await behaviour(request, context)

    return guarded
