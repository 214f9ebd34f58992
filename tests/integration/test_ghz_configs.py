"""Every ghz configuration in loadtests/ghz/ is a request the gateway accepts,
sent the way ghz sends it: by server reflection, from protobuf JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from gateway.api.inference import grpc_service_pb2 as pb
from tests.support.gateway import GatewayProcess

CONFIGS = sorted((Path(__file__).parents[2] / "loadtests" / "ghz").glob("*.json"))


def _render(data: object) -> str:
    """ghz expands Go templates in ``data``; give them a sample value."""
    return re.sub(r"\{\{[^}]*\}\}", "1", json.dumps(data))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_ghz_config_is_served(
    path: Path, cpu_gateway: GatewayProcess, gateway: GatewayProcess
) -> None:
    config = json.loads(path.read_text())
    assert config["call"] == "inference.GRPCInferenceService/ModelInfer"
    data = _render(config["data"])
    request = json_format.Parse(data, pb.ModelInferRequest())  # matches our API exactly
    target = gateway if request.model_name == "gpu_sim" else cpu_gateway
    grpcurl = shutil.which("grpcurl", path=str(Path(sys.executable).parent))
    assert grpcurl is not None, "grpcurl is missing: run `make dev`"
    done = subprocess.run(
        [grpcurl, "-plaintext", "-d", data, target.address, config["call"]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["model_name"] == request.model_name
    assert reply["raw_output_contents"]
