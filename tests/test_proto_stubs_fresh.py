"""The generated stubs in gateway/api/ match protos/ (regenerate with `make protos`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_are_fresh() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) is not installed")
    result = subprocess.run(
        [sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (
        "gateway/api/ is stale relative to protos/: run `make protos` "
        f"(python protos/generate.py) and commit the result.\n{result.stdout}{result.stderr}"
    )
