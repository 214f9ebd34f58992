"""Test certificates, made at test time with the ``openssl`` command: a CA, a
server certificate for 127.0.0.1/localhost, and client certificates."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Pair
    clients: dict[str, Pair]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _signed(directory: Path, name: str, subject: str, extensions: str) -> Pair:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "pem"))
    ext_file = directory / f"{name}.ext"
    ext_file.write_text(extensions)
    _openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-subj", subject, "-out", str(csr), cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", str(csr), "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(ext_file),
             cwd=directory)  # fmt: skip
    return Pair(cert, key)


def make_certs(directory: Path, clients: tuple[str, ...] = ()) -> Certs:
    """A CA, a server certificate and one client certificate per common name."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    directory.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "2", "-subj", "/CN=test-ca", cwd=directory)  # fmt: skip
    server = _signed(
        directory,
        "server",
        "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    made = {
        name: _signed(directory, f"client-{name}", f"/CN={name}", "extendedKeyUsage=clientAuth\n")
        for name in clients
    }
    return Certs(directory / "ca.pem", server, made)
