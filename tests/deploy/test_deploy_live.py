"""deploy/ files driving real processes:

- the image's health check script against a running gateway;
- the example model repository in a real tritonserver (the release that
  deploy/ runs, 2.51) started with the compose stack's Triton flags, served
  through a real gateway started with the compose stack's gateway.toml.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.server import INFERENCE_SERVICE
from tests.deploy.manifests import COMPOSE_DIR, DEPLOY, DOCKER_DIR, REPO, compose_config
from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import TritonProcess, free_ports, start_triton

HEALTHCHECK = DOCKER_DIR / "healthcheck.py"


def _healthcheck(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        env={"GATEWAY_CONFIG": str(config), "PATH": ""},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def _config(tmp_path: Path, port: int) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(f'host = "0.0.0.0"\nport = {port}\n')
    return path


def test_healthcheck_reports_serving(cpu_gateway: GatewayProcess, tmp_path: Path) -> None:
    config = _config(tmp_path, int(cpu_gateway.address.rsplit(":", 1)[1]))
    for service in ("", INFERENCE_SERVICE):
        result = _healthcheck(config, service)
        assert result.returncode == 0, result.stderr


def test_healthcheck_fails_without_a_gateway_or_for_an_unknown_service(
    cpu_gateway: GatewayProcess, tmp_path: Path
) -> None:
    [closed] = free_ports(1)
    result = _healthcheck(_config(tmp_path, closed))
    assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
    config = _config(tmp_path, int(cpu_gateway.address.rsplit(":", 1)[1]))
    result = _healthcheck(config, "no.such.Service")
    assert result.returncode == 1 and "NOT_FOUND" in result.stderr


def test_healthcheck_fails_on_a_bad_configuration(tmp_path: Path) -> None:
    result = _healthcheck(tmp_path / "missing.toml")
    assert result.returncode == 1 and "does not exist" in result.stderr


def _compose_triton_flags(collector_url: str) -> list[str]:
    """The compose stack's Triton flags, less those the harness sets itself
    (repository, ports) and with the collector on loopback."""
    command = compose_config("cpu")["services"]["triton-cpu"]["command"]
    own = ("--model-repository=", "--http-port=", "--grpc-port=", "--metrics-port=")
    flags = [arg for arg in command[1:] if not arg.startswith(own)]
    return [
        f"--trace-config=opentelemetry,url={collector_url}" if ",url=" in arg else arg
        for arg in flags
    ]


@pytest.fixture(scope="module")
def example_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    [collector_port] = free_ports(1)  # nothing listens: export fails quietly
    flags = _compose_triton_flags(f"http://127.0.0.1:{collector_port}/v1/traces")
    workdir = tmp_path_factory.mktemp("example-triton")
    with start_triton(DEPLOY / "models" / "repository", workdir, extra_args=flags) as server:
        yield server


def test_example_model_serves_through_the_compose_gateway_config(
    example_triton: TritonProcess, tmp_path: Path
) -> None:
    # The compose file's settings, with the addresses a test can use: Triton
    # on loopback instead of dns:///triton, free ports instead of fixed ones.
    args = [
        "--config",
        str(COMPOSE_DIR / "gateway.toml"),
        "--triton",
        example_triton.grpc_url,
        "--no-cpu-models",
        "--metrics-port",
        "0",
        "--admin-port",
        "0",
    ]
    with start_gateway(tmp_path, args=args) as gateway:
        client = grpcclient.InferenceServerClient(gateway.address)
        x = np.arange(32, dtype=np.float32).reshape(2, 16)
        tensor = grpcclient.InferInput("INPUT", [2, 16], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("scale", [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT"), x * 2)
