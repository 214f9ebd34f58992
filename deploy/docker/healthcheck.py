"""The container's health check: asks the gateway's gRPC health service.

    python healthcheck.py [SERVICE]

SERVICE is a name the gateway registers with ``grpc.health.v1.Health``: ""
(the default: the process is up and serving) or
``inference.GRPCInferenceService`` (at least one model is ready). The address
comes from the gateway's own settings (the same TOML file and ``GATEWAY_*``
variables it starts with), so the check cannot drift from the configuration.
Exit status 0 when SERVING, 1 otherwise, with one line on stderr saying why.
"""

from __future__ import annotations

import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import ConfigError, load_settings

TIMEOUT_S = 2.0


def target(host: str, port: int) -> str:
    """Where to dial a gateway listening on ``host``: loopback for a wildcard."""
    if host in ("", "0.0.0.0"):
        return f"127.0.0.1:{port}"
    if host == "::":
        return f"[::1]:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str]) -> int:
    service = argv[0] if argv else ""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1
    address = target(settings.host, settings.port)
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S)
        except grpc.RpcError as exc:
            print(f"healthcheck: {address}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"healthcheck: {address} service {service!r}: {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
