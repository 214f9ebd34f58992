"""Issue 9, item 10: TLS and mutual TLS on the front door, admin and metrics
and towards Triton; identities from API keys or client certificates, mapped
to tenants with per-model rights and quotas; an exposed admin API refused."""

from __future__ import annotations

import functools
import json
import os
import ssl
import struct
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from gateway.api.gateway.admin.v1 import admin_pb2, admin_pb2_grpc
from gateway.api.inference import grpc_service_pb2 as pb
from gateway.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests.support.certs import Certs, Pair, make_certs
from tests.support.gateway import GatewayProcess, GatewayStartError, start_gateway
from tests.support.triton import MODEL_REPOSITORY, start_triton

KEY_B = "key-of-tenant-b-0123456789"
ADMIN_KEY = "key-of-the-operators-0123456789"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(
        tmp_path_factory.mktemp("certs"), clients=("tenant-a", "stranger", "operator")
    )


def _credentials(certs: Certs, client: str | None) -> grpc.ChannelCredentials:
    pair: Pair | None = certs.clients[client] if client else None
    return grpc.ssl_channel_credentials(
        root_certificates=certs.ca.read_bytes(),
        private_key=pair.key.read_bytes() if pair else None,
        certificate_chain=pair.cert.read_bytes() if pair else None,
    )


@pytest.fixture(scope="module")
def secure_gateway(
    certs: Certs, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    workdir = tmp_path_factory.mktemp("secure")
    tenants = {
        "a": {"client_cert_names": ["tenant-a"], "models": ["add_sub"]},
        "b": {"api_keys": [KEY_B], "rate_per_s": 0.5, "burst": 3},
        "ops": {
            "api_keys": [ADMIN_KEY],
            "client_cert_names": ["operator"],
            "admin": True,
            "models": [],
        },
    }
    env = {
        "GATEWAY_NVML": "false",
        "GATEWAY_TENANTS": json.dumps(tenants),
        "GATEWAY_TLS_CERT_FILE": str(certs.server.cert),
        "GATEWAY_TLS_KEY_FILE": str(certs.server.key),
        "GATEWAY_TLS_CLIENT_CA_FILE": str(certs.ca),
        "GATEWAY_METRICS_PORT": "0",
        "GATEWAY_METRICS_PORT_FILE": str(workdir / "metrics.port"),
        "GATEWAY_ADMIN_PORT": "0",
        "GATEWAY_ADMIN_PORT_FILE": str(workdir / "admin.port"),
    }
    with start_gateway(workdir, env=env, credentials=_credentials(certs, "tenant-a")) as gw:
        gw.workdir = workdir  # type: ignore[attr-defined]
        yield gw


def _add_sub() -> pb.ModelInferRequest:
    row = np.ones(16, np.float32).tobytes()
    tensors = [
        pb.ModelInferRequest.InferInputTensor(name=n, datatype="FP32", shape=[1, 16])
        for n in ("INPUT0", "INPUT1")
    ]
    return pb.ModelInferRequest(model_name="add_sub", inputs=tensors, raw_input_contents=[row, row])


def _text() -> pb.ModelInferRequest:
    return pb.ModelInferRequest(
        model_name="text_upper",
        inputs=[pb.ModelInferRequest.InferInputTensor(name="TEXT", datatype="BYTES", shape=[1, 1])],
        raw_input_contents=[struct.pack("<I", 2) + b"ok"],
    )


def _stub(
    gw: GatewayProcess, credentials: grpc.ChannelCredentials
) -> pb_grpc.GRPCInferenceServiceStub:
    return pb_grpc.GRPCInferenceServiceStub(grpc.secure_channel(gw.address, credentials))


def _code(call: object) -> grpc.StatusCode:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_plaintext_and_certificateless_callers_are_refused(
    secure_gateway: GatewayProcess, certs: Certs
) -> None:
    plain = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(secure_gateway.address))
    assert _code(lambda: plain.ModelInfer(_add_sub(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    no_cert = _stub(secure_gateway, _credentials(certs, None))
    assert _code(lambda: no_cert.ModelInfer(_add_sub(), timeout=5)) == grpc.StatusCode.UNAVAILABLE


def test_client_certificate_identity_and_per_model_rights(
    secure_gateway: GatewayProcess, certs: Certs
) -> None:
    a = _stub(secure_gateway, _credentials(certs, "tenant-a"))
    reply = a.ModelInfer(_add_sub(), timeout=10)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0] * 16
    with pytest.raises(grpc.RpcError) as info:
        a.ModelInfer(_text(), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "text_upper" not in (info.value.details() or "")
    with pytest.raises(grpc.RpcError) as info:
        a.ModelMetadata(pb.ModelMetadataRequest(name="text_upper"), timeout=10)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # A valid certificate that maps to no tenant, and no key: unauthenticated.
    stranger = _stub(secure_gateway, _credentials(certs, "stranger"))
    with pytest.raises(grpc.RpcError) as info:
        stranger.ModelInfer(_add_sub(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "add_sub" not in (info.value.details() or "")
    wrong_key = (("authorization", "Bearer not-a-key"),)
    assert (
        _code(lambda: stranger.ModelInfer(_add_sub(), timeout=10, metadata=wrong_key))
        == grpc.StatusCode.UNAUTHENTICATED
    )


def test_api_key_identity_and_rate_quota(secure_gateway: GatewayProcess, certs: Certs) -> None:
    b = _stub(secure_gateway, _credentials(certs, "stranger"))
    key = (("authorization", f"Bearer {KEY_B}"),)
    codes = [_code(lambda: b.ModelInfer(_text(), timeout=10, metadata=key)) for _ in range(6)]
    assert codes[0] == grpc.StatusCode.OK
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes  # a burst of 3 at 0.5/s
    # Another tenant is not held back by b's excess.
    a = _stub(secure_gateway, _credentials(certs, "tenant-a"))
    assert all(_code(lambda: a.ModelInfer(_add_sub(), timeout=10)) is grpc.StatusCode.OK
               for _ in range(6))  # fmt: skip
    assert KEY_B not in secure_gateway.log()


def test_metrics_and_admin_need_credentials_too(
    secure_gateway: GatewayProcess, certs: Certs
) -> None:
    workdir: Path = secure_gateway.workdir  # type: ignore[attr-defined]
    port = int((workdir / "metrics.port").read_text())
    context = ssl.create_default_context(cafile=str(certs.ca))
    pair = certs.clients["tenant-a"]
    context.load_cert_chain(str(pair.cert), str(pair.key))
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=context) as r:
        assert r.status == 200
    bare = ssl.create_default_context(cafile=str(certs.ca))
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", context=bare, timeout=5)
    admin = _admin(secure_gateway, certs, "tenant-a")
    reply = admin.ListBackends(
        admin_pb2.ListBackendsRequest(),
        timeout=5,
        metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
    )
    assert reply.backends


def _admin(gw: GatewayProcess, certs: Certs, client: str) -> admin_pb2_grpc.AdminServiceStub:
    workdir: Path = gw.workdir  # type: ignore[attr-defined]
    admin_port = int((workdir / "admin.port").read_text())
    channel = grpc.secure_channel(f"127.0.0.1:{admin_port}", _credentials(certs, client))
    return admin_pb2_grpc.AdminServiceStub(channel)


def _refusal(call: object) -> tuple[grpc.StatusCode, str]:
    try:
        call()  # type: ignore[operator]
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""


def test_admin_rpcs_need_an_admin_identity(secure_gateway: GatewayProcess, certs: Certs) -> None:
    # An admin tenant's client certificate alone opens every admin rpc.
    operator = _admin(secure_gateway, certs, "operator")
    backends = operator.ListBackends(admin_pb2.ListBackendsRequest(), timeout=5).backends
    assert backends
    operator.ListQueues(admin_pb2.ListQueuesRequest(), timeout=5)
    operator.ListDecisions(admin_pb2.ListDecisionsRequest(), timeout=5)
    # A tenant's certificate, or its API key, is an identity but not an admin's.
    tenant_a = _admin(secure_gateway, certs, "tenant-a")
    stranger = _admin(secure_gateway, certs, "stranger")
    b_key = (("authorization", f"Bearer {KEY_B}"),)
    drain = admin_pb2.DrainBackendRequest(backend_id=backends[0].id)
    for call in (
        lambda: tenant_a.ListBackends(admin_pb2.ListBackendsRequest(), timeout=5),
        lambda: tenant_a.DrainBackend(drain, timeout=5),
        lambda: stranger.ListQueues(admin_pb2.ListQueuesRequest(), timeout=5, metadata=b_key),
    ):
        code, details = _refusal(call)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "add_sub" not in details and backends[0].id not in details
    # No identity at all (a certificate no tenant has, or an unknown key): UNAUTHENTICATED.
    wrong_key = (("authorization", "Bearer not-a-key"),)
    for call in (
        lambda: stranger.ListBackends(admin_pb2.ListBackendsRequest(), timeout=5),
        lambda: stranger.DrainBackend(drain, timeout=5, metadata=wrong_key),
    ):
        assert _refusal(call)[0] == grpc.StatusCode.UNAUTHENTICATED
    # Nothing was drained by the refused calls.
    assert not any(
        b.drained
        for b in operator.ListBackends(admin_pb2.ListBackendsRequest(), timeout=5).backends
    )


def test_the_admin_cli_over_mutual_tls(secure_gateway: GatewayProcess, certs: Certs) -> None:
    """``inference-gateway admin`` reaches a TLS admin port with a client
    certificate, and the guard judges that certificate's identity."""
    workdir: Path = secure_gateway.workdir  # type: ignore[attr-defined]
    target = f"127.0.0.1:{int((workdir / 'admin.port').read_text())}"

    def admin(*flags: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gateway", "admin", "--target", target, *flags]
        clean = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_TOKEN"}
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=clean)

    def identity(name: str) -> list[str]:
        pair = certs.clients[name]
        return ["--tls-ca", str(certs.ca), "--tls-cert", str(pair.cert), "--tls-key", str(pair.key)]

    done = admin(*identity("operator"), "backends")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BACKEND") and "closed" in done.stdout
    refused = admin(*identity("tenant-a"), "backends")
    assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
    plaintext = admin("--timeout", "2", "backends")  # a TLS port: no answer in plaintext
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    lone = admin("--tls-cert", str(certs.clients["operator"].cert), "backends")
    assert lone.returncode != 0 and "need --tls-ca" in lone.stderr


def test_a_tenant_sees_only_its_models(secure_gateway: GatewayProcess, certs: Certs) -> None:
    a = _stub(secure_gateway, _credentials(certs, "tenant-a"))
    index = a.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=10)
    assert {m.name for m in index.models} == {"add_sub"}
    stats = a.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10)
    assert {m.name for m in stats.model_stats} == {"add_sub"}
    # A tenant with every model ("*") sees them all; an admin with none sees none.
    b = _stub(secure_gateway, _credentials(certs, "stranger"))
    b_key = (("authorization", f"Bearer {KEY_B}"),)
    every = {m.name for m in b.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=b_key).models}
    assert {"add_sub", "text_upper"} <= every
    ops_key = (("authorization", f"Bearer {ADMIN_KEY}"),)
    assert not b.RepositoryIndex(pb.RepositoryIndexRequest(), metadata=ops_key).models
    # A model the tenant may not use answers as one that is not there for it:
    # PERMISSION_DENIED, the same whether the model exists or not.
    for name in ("text_upper", "no_such_model"):
        for rpc, request in (
            (a.ModelMetadata, pb.ModelMetadataRequest(name=name)),
            (a.ModelConfig, pb.ModelConfigRequest(name=name)),
            (a.ModelReady, pb.ModelReadyRequest(name=name)),
            (a.ModelStatistics, pb.ModelStatisticsRequest(name=name)),
        ):
            code, details = _refusal(functools.partial(rpc, request, timeout=10))
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert name not in details


def test_admin_on_an_open_address_without_credentials_does_not_start(tmp_path: Path) -> None:
    env = {"GATEWAY_ADMIN_HOST": "0.0.0.0", "GATEWAY_ADMIN_PORT": "0", "GATEWAY_NVML": "false"}
    with pytest.raises(GatewayStartError) as info:
        start_gateway(tmp_path, env=env, ready_timeout_s=20)
    assert "admin_host 0.0.0.0 is not a loopback address" in str(info.value)


def test_tls_towards_triton(certs: Certs, tmp_path: Path) -> None:
    tls_args = [
        "--grpc-use-ssl=true",
        f"--grpc-server-cert={certs.server.cert}",
        f"--grpc-server-key={certs.server.key}",
        f"--grpc-root-cert={certs.ca}",
    ]
    with start_triton(MODEL_REPOSITORY, tmp_path / "triton", extra_args=tls_args) as triton:
        env = {"GATEWAY_TRITON_TLS_CA_FILE": str(certs.ca), "GATEWAY_NVML": "false"}
        args = ["--triton", triton.grpc_url, "--no-cpu-models"]
        with start_gateway(tmp_path / "gw", args=args, env=env) as gw:
            stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gw.address))
            reply = stub.ModelInfer(_add_sub(), timeout=20)
            assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2.0] * 16
        # Without the CA the gateway cannot talk to it: nothing is served in plaintext.
        with start_gateway(tmp_path / "gw2", args=args, env={"GATEWAY_NVML": "false"}) as gw:
            stub = pb_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(gw.address))
            assert _code(lambda: stub.ModelInfer(_add_sub(), timeout=10)) != grpc.StatusCode.OK
