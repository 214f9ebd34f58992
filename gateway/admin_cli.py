"""``inference-gateway admin``: the on-call view over the admin gRPC service.

    inference-gateway admin [--target HOST:PORT] [--token T] [--json] devices
    inference-gateway admin backends | queues | decisions [--limit N]
    inference-gateway admin drain BACKEND_ID | undrain BACKEND_ID
    inference-gateway admin --tls-ca CA [--tls-cert CERT --tls-key KEY] backends

The token comes from ``--token`` or ``$GATEWAY_ADMIN_TOKEN`` (the environment
keeps it out of ``ps``). With ``--tls-ca`` the call goes over TLS, verifying the
admin server against that CA; ``--tls-cert``/``--tls-key`` add a client
certificate, the identity an mTLS gateway's admin tenants are known by
(``--tls-server-name`` when the address is not a name the certificate holds).
``--json`` prints the response as protobuf JSON, for scripts; otherwise a table
per view.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from gateway.api.gateway.admin.v1 import admin_pb2 as pb
from gateway.api.gateway.admin.v1 import admin_pb2_grpc as pb_grpc

_VIEWS = ("devices", "backends", "queues", "decisions")


def add_parser(commands: Any) -> None:
    admin = commands.add_parser("admin", help="the admin service: devices, backends, queues, ...")
    admin.add_argument("--target", default="127.0.0.1:8011", help="admin service address")
    admin.add_argument("--token", help="bearer token (default: $GATEWAY_ADMIN_TOKEN)")
    admin.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    admin.add_argument("--json", action="store_true", help="print JSON instead of a table")
    admin.add_argument("--tls-ca", type=Path, help="CA file: call over TLS, verifying the server")
    admin.add_argument("--tls-cert", type=Path, help="client certificate (mTLS identity)")
    admin.add_argument("--tls-key", type=Path, help="the client certificate's private key")
    admin.add_argument("--tls-server-name", help="the name to verify the server certificate for")
    views = admin.add_subparsers(dest="view", required=True)
    for name in _VIEWS:
        view = views.add_parser(name, help=f"list {name}")
        if name == "decisions":
            view.add_argument("--limit", type=int, default=20, help="newest N (0 = all kept)")
    for name in ("drain", "undrain"):
        views.add_parser(name, help=f"{name} a backend").add_argument("backend_id")


def _table(headers: Sequence[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _with_workers(headers: list[str], rows: list[list[str]], workers: list[int]) -> str:
    """A WORKER column first, when the views come from several gateway workers."""
    if any(workers):
        headers = ["WORKER", *headers]
        rows = [[str(w), *row] for w, row in zip(workers, rows, strict=True)]
    return _table(headers, rows)


def _gib(value: int) -> str:
    return f"{value / 2**30:.1f} GiB"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.2f} ms"


def _devices(reply: pb.ListDevicesResponse) -> str:
    rows = [
        [
            d.id,
            d.kind,
            d.source,
            _gib(d.memory_used_bytes) if d.HasField("memory_used_bytes") else "?",
            _gib(d.memory_total_bytes) if d.HasField("memory_total_bytes") else "?",
            f"{d.utilization:.0%}" if d.HasField("utilization") else "?",
            f"{d.telemetry_age_seconds:.1f} s",
        ]
        for d in reply.devices
    ]
    return _table(["DEVICE", "KIND", "SOURCE", "MEM USED", "MEM TOTAL", "UTIL", "AGE"], rows)


def _backend_rows(backends: Sequence[pb.Backend]) -> str:
    rows = []
    for b in backends:
        ewma = ", ".join(f"{t.model}@{t.batch_bucket}={_ms(t.seconds)}" for t in b.service_times)
        rows.append(
            [
                b.id,
                b.tier,
                b.endpoint or "-",
                b.origin or "static",
                "drained" if b.drained else ("up" if b.usable else "down"),
                b.breaker_state,
                str(b.in_flight),
                ",".join(b.models) or "-",
                ewma or "-",
                b.last_error or "",
            ]
        )
    headers = [
        "BACKEND",
        "TIER",
        "ENDPOINT",
        "ORIGIN",
        "STATE",
        "BREAKER",
        "IN FLIGHT",
        "MODELS",
        "EWMA",
        "LAST ERROR",
    ]
    return _with_workers(headers, rows, [b.worker for b in backends])


def _queues(reply: pb.ListQueuesResponse) -> str:
    rows = [
        [q.model, str(q.priority), str(q.depth), str(q.batches_in_flight)] for q in reply.queues
    ]
    headers = ["MODEL", "PRIORITY", "DEPTH", "BATCHES IN FLIGHT"]
    return _with_workers(headers, rows, [q.worker for q in reply.queues])


def _decisions(reply: pb.ListDecisionsResponse) -> str:
    rows = [
        [
            f"{d.age_seconds:.1f} s ago",
            d.model,
            str(d.batch_size),
            d.verdict,
            d.backend_id or "-",
            d.trace_id or "-",
            d.reason,
        ]
        for d in reply.decisions
    ]
    headers = ["WHEN", "MODEL", "ROWS", "VERDICT", "BACKEND", "TRACE", "REASON"]
    return _with_workers(headers, rows, [d.worker for d in reply.decisions])


def _call(stub: pb_grpc.AdminServiceStub, args: argparse.Namespace) -> tuple[Message, str]:
    """Make the rpc the view asks for; return the reply and its table."""
    options: dict[str, Any] = {"timeout": args.timeout}
    token = args.token or os.environ.get("GATEWAY_ADMIN_TOKEN")
    if token:
        options["metadata"] = (("authorization", f"Bearer {token}"),)
    view = args.view
    if view == "devices":
        devices = stub.ListDevices(pb.ListDevicesRequest(), **options)
        return devices, _devices(devices)
    if view == "backends":
        backends = stub.ListBackends(pb.ListBackendsRequest(), **options)
        return backends, _backend_rows(backends.backends)
    if view == "queues":
        queues = stub.ListQueues(pb.ListQueuesRequest(), **options)
        return queues, _queues(queues)
    if view == "decisions":
        decisions = stub.ListDecisions(pb.ListDecisionsRequest(limit=args.limit), **options)
        return decisions, _decisions(decisions)
    rpc: Callable[..., Any] = stub.DrainBackend if view == "drain" else stub.UndrainBackend
    request_type = pb.DrainBackendRequest if view == "drain" else pb.UndrainBackendRequest
    changed = rpc(request_type(backend_id=args.backend_id), **options)
    return changed, _backend_rows([changed.backend])


def _channel(args: argparse.Namespace) -> grpc.Channel:
    """Plaintext, or TLS (with a client certificate) when the flags say so."""
    if args.tls_ca is None:
        if args.tls_cert or args.tls_key or args.tls_server_name:
            raise SystemExit("admin: --tls-cert, --tls-key and --tls-server-name need --tls-ca")
        return grpc.insecure_channel(args.target)
    if (args.tls_cert is None) != (args.tls_key is None):
        raise SystemExit("admin: --tls-cert and --tls-key go together")
    try:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=args.tls_ca.read_bytes(),
            private_key=args.tls_key.read_bytes() if args.tls_key else None,
            certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        )
    except OSError as exc:
        raise SystemExit(f"admin: cannot read {exc.filename}: {exc.strerror}") from None
    options = []
    if args.tls_server_name:
        options.append(("grpc.ssl_target_name_override", args.tls_server_name))
    return grpc.secure_channel(args.target, credentials, options=options)


def run(args: argparse.Namespace) -> int:
    with _channel(args) as channel:
        stub = pb_grpc.AdminServiceStub(channel)  # type: ignore[no-untyped-call]
        try:
            reply, table = _call(stub, args)
        except grpc.RpcError as exc:
            print(f"{args.target}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    print(json_format.MessageToJson(reply, indent=2) if args.json else table)
    return 0
