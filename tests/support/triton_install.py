"""Finding the ``tritonserver`` that the ``nvidia-pytriton`` wheel ships, making the
backend directory it runs the Python backend from, and free loopback ports: what
``tests.support.triton`` needs before it starts a server. No pytest here either
(the benchmark scripts in loadtests/ use it too)."""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path

_INSTALL_HINT = "install dev extras: make dev"


class TritonNotInstalledError(RuntimeError):
    """The pytriton wheel (which carries the tritonserver binary) is not installed."""


def find_pytriton_root() -> Path:
    """Return the ``pytriton/tritonserver`` directory of the installed wheel.

    Found through the import system without importing pytriton: the wheel is installed
    ``--no-deps`` only for its binaries, so importing it may fail on missing packages.
    """
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise TritonNotInstalledError(f"nvidia-pytriton is not installed; {_INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        root = Path(location) / "tritonserver"
        if root.is_dir():
            return root
    raise TritonNotInstalledError(
        f"nvidia-pytriton has no bundled tritonserver directory; {_INSTALL_HINT}"
    )


def find_tritonserver() -> Path:
    """Return the path of the ``tritonserver`` executable shipped with pytriton."""
    binary = find_pytriton_root() / "bin" / "tritonserver"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise TritonNotInstalledError(f"tritonserver binary not found at {binary}; {_INSTALL_HINT}")
    return binary


def make_backend_dir(path: Path) -> Path:
    """Create a Triton backend directory at ``path`` and return ``path``.

    ``path/python`` receives symlinks to ``libtriton_python.so``,
    ``triton_python_backend_utils.py`` and the ``triton_python_backend_stub`` built for
    the running interpreter's ``major.minor``.  Symlinks, not copies: the stub and the
    shared library locate their bundled libraries relative to where they lie in the
    wheel.  Idempotent, so several servers may share one directory.
    """
    root = find_pytriton_root()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {
        "libtriton_python.so": root / "backends" / "python" / "libtriton_python.so",
        "triton_python_backend_utils.py": (
            root / "backends" / "python" / "triton_python_backend_utils.py"
        ),
        "triton_python_backend_stub": (
            root / "python_backend_stubs" / version / "triton_python_backend_stub"
        ),
    }
    python_dir = path / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, source in sources.items():
        if not source.exists():
            raise TritonNotInstalledError(
                f"{source} is missing (Python {version} supported?); {_INSTALL_HINT}"
            )
        link = python_dir / name
        if link.is_symlink() and link.resolve() == source.resolve():
            continue
        link.unlink(missing_ok=True)
        link.symlink_to(source)
    return path


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct ports that were free on 127.0.0.1 a moment ago.

    All sockets are held open together so the kernel hands out distinct ports.  Another
    process may still grab one before tritonserver binds it; start_triton retries then.
    """
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def model_names(model_repository: Path) -> list[str]:
    """Names of the models in a repository (directories holding a ``config.pbtxt``)."""
    return sorted(
        entry.name
        for entry in model_repository.iterdir()
        if entry.is_dir() and (entry / "config.pbtxt").is_file()
    )
