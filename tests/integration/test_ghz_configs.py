"""Every ghz configuration in loadtests/ghz/ is a request the gateway accepts.

Always: the config's request is sent the way ghz sends it — by server reflection,
from protobuf JSON — with ``grpcurl`` (a dev dependency), so a fresh clone checks
the configs without ghz.  When the real ghz can be found (``$GHZ``, ``ghz`` on
PATH, or ``../shared/tools/ghz`` beside the repository), each config also runs
through ghz itself, shrunk to 20 requests at concurrency 2 by command-line flags
(which override the file), and every call must succeed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import json_format

from gateway.api.inference import grpc_service_pb2 as pb
from tests.support.gateway import GatewayProcess

REPO = Path(__file__).parents[2]
CONFIGS = sorted((REPO / "loadtests" / "ghz").glob("*.json"))


def _render(data: object) -> str:
    """ghz expands Go templates in ``data``; give them a sample value."""
    return re.sub(r"\{\{[^}]*\}\}", "1", json.dumps(data))


def _find_ghz() -> str | None:
    if explicit := os.environ.get("GHZ"):
        return explicit if os.access(explicit, os.X_OK) else None
    shared = REPO.parent / "shared" / "tools" / "ghz"
    return shutil.which("ghz") or (str(shared) if os.access(shared, os.X_OK) else None)


def _target(
    config: dict[str, object], cpu_gateway: GatewayProcess, gateway: GatewayProcess
) -> GatewayProcess:
    request = json_format.Parse(_render(config["data"]), pb.ModelInferRequest())
    return gateway if request.model_name == "gpu_sim" else cpu_gateway


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_ghz_config_is_served(
    path: Path, cpu_gateway: GatewayProcess, gateway: GatewayProcess
) -> None:
    config = json.loads(path.read_text())
    assert config["call"] == "inference.GRPCInferenceService/ModelInfer"
    data = _render(config["data"])
    request = json_format.Parse(data, pb.ModelInferRequest())  # matches our API exactly
    target = _target(config, cpu_gateway, gateway)
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


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_ghz_config_runs_with_real_ghz(
    path: Path, cpu_gateway: GatewayProcess, gateway: GatewayProcess
) -> None:
    ghz = _find_ghz()
    if ghz is None:
        pytest.skip("ghz not found ($GHZ, PATH, ../shared/tools/ghz); grpcurl check only")
    target = _target(json.loads(path.read_text()), cpu_gateway, gateway)
    # Flags override the file: a short closed loop, whatever its load profile says.
    shrink = ["-n", "20", "-c", "2", "-z", "0", "--rps", "0", "--connections", "1"]
    done = subprocess.run(
        [ghz, "--config", str(path), *shrink, "-O", "json", target.address],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["statusCodeDistribution"] == {"OK": 20}, report.get("errorDistribution")
