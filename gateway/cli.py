"""The ``inference-gateway`` command: ``serve`` runs the gateway, ``status``
asks a running one how it is, ``admin`` talks to its admin service.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc

from gateway import admin_cli
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from gateway.config import ConfigError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inference-gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway until SIGTERM")
    serve.add_argument("--config", type=Path, help="TOML settings file (or $GATEWAY_CONFIG)")
    serve.add_argument("--host", help="listen address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (default 8001)")
    serve.add_argument("--port-file", type=Path, help="write the bound port here")
    serve.add_argument("--workers", type=int, help="gateway processes sharing the port (default 1)")
    serve.add_argument(
        "--triton",
        action="append",
        dest="triton_endpoints",
        metavar="HOST:PORT",
        help="a Triton gRPC endpoint to serve (repeatable)",
    )
    serve.add_argument(
        "--cpu-model",
        action="append",
        dest="cpu_models",
        metavar="REF",
        help="a CPU model, builtin:NAME or module:factory (repeatable; replaces the defaults)",
    )
    serve.add_argument("--no-cpu-models", action="store_true", help="serve Triton models only")
    serve.add_argument(
        "--onnx-repository",
        type=Path,
        help="run this Triton-layout repository's ONNX models on the gateway's CPUs",
    )
    serve.add_argument("--routing", help="routing policy (default predicted_finish_time)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    serve.add_argument("--log-format", choices=["text", "json"], help="log line format")
    serve.add_argument("--metrics-port", type=int, help="Prometheus HTTP port; 0 = any free")
    serve.add_argument("--metrics-port-file", type=Path, help="write the bound metrics port here")
    serve.add_argument("--admin-port", type=int, help="admin gRPC port; 0 = any free")
    serve.add_argument("--admin-port-file", type=Path, help="write the bound admin port here")
    status = commands.add_parser("status", help="show a running gateway's health and models")
    status.add_argument("--target", default="127.0.0.1:8001", help="gateway address")
    status.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    admin_cli.add_parser(commands)
    return parser


def _serve(args: argparse.Namespace) -> int:
    from gateway.logs import configure_logging  # imported late: `status` needs none of it
    from gateway.server import serve
    from gateway.supervisor import WorkerFailed, supervise

    overrides = {
        "host": args.host,
        "port": args.port,
        "port_file": args.port_file,
        "workers": args.workers,
        "triton_endpoints": args.triton_endpoints,
        "cpu_models": [] if args.no_cpu_models else args.cpu_models,
        "onnx_repository": args.onnx_repository,
        "routing": args.routing,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_port": args.metrics_port,
        "metrics_port_file": args.metrics_port_file,
        "admin_port": args.admin_port,
        "admin_port_file": args.admin_port_file,
    }
    try:
        settings = load_settings(args.config, **overrides)
        configure_logging(settings.log_level, settings.log_format)
        asyncio.run(serve(settings) if settings.workers == 1 else supervise(settings))
    except ConfigError as exc:
        print(f"inference-gateway: {exc}", file=sys.stderr)
        return 2
    except WorkerFailed as exc:
        print(f"inference-gateway: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            meta = stub.ServerMetadata(pb.ServerMetadataRequest(), timeout=args.timeout)
            ready = stub.ServerReady(pb.ServerReadyRequest(), timeout=args.timeout).ready
            index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(f"{args.target}: {meta.name} {meta.version}, {'ready' if ready else 'NOT ready'}")
    for model in index.models:
        reason = f" ({model.reason})" if model.reason else ""
        print(f"  {model.name:<24} v{model.version:<4} {model.state}{reason}")
    return 0 if ready else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "admin":
        return admin_cli.run(args)
    return _serve(args) if args.command == "serve" else _status(args)


if __name__ == "__main__":
    sys.exit(main())
