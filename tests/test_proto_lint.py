"""`buf lint` and `buf build` pass on protos/ (rules and exceptions in protos/buf.yaml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROTOS = Path(__file__).resolve().parent.parent / "protos"


def _buf() -> str:
    # Prefer the buf-bin wheel next to this interpreter, then PATH.
    beside = Path(sys.executable).parent / "buf"
    found = str(beside) if beside.exists() else shutil.which("buf")
    if found is None:
        pytest.skip("the buf binary is not installed (pip install buf-bin)")
    return found


@pytest.mark.parametrize("command", [["lint"], ["build", "-o", "/dev/null"]])
def test_buf(command: list[str]) -> None:
    result = subprocess.run(
        [_buf(), *command],
        cwd=PROTOS,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"buf {command[0]} failed:\n{result.stdout}{result.stderr}"
