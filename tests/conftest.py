"""Shared fixtures: real processes, started once per session and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import GatewayProcess, start_gateway
from tests.support.triton import MODEL_REPOSITORY, TritonProcess, start_triton


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A real tritonserver serving tests/models/triton."""
    with start_triton(MODEL_REPOSITORY, tmp_path_factory.mktemp("triton")) as server:
        yield server


@pytest.fixture(scope="session")
def gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The real gateway in front of that Triton only (no CPU models)."""
    workdir = tmp_path_factory.mktemp("gateway")
    with start_gateway(workdir, args=["--triton", triton.grpc_url, "--no-cpu-models"]) as gw:
        yield gw


@pytest.fixture(scope="session")
def cpu_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The real gateway serving only its built-in CPU demo models (no Triton)."""
    with start_gateway(tmp_path_factory.mktemp("cpu-gateway")) as gw:
        yield gw


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
