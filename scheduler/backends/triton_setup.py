"""Setting up a Triton backend: TLS towards the server, and the model specs
read from what Triton reports (metadata and config, as JSON)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from scheduler.errors import BackendUnavailable
from scheduler.spec import DataType, ModelSpec, TensorSpec


@dataclass(frozen=True, slots=True)
class TritonTls:
    """TLS towards a Triton server: the CA that signed its certificate, and
    optionally a client certificate and key for mutual TLS (PEM files)."""

    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca_file.read_bytes(),
                private_key=self.key_file.read_bytes() if self.key_file else None,
                certificate_chain=self.cert_file.read_bytes() if self.cert_file else None,
            )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot read a TLS file for Triton: {exc.strerror}", backend_id=""
            ) from exc


def spec_from_triton(
    metadata: Mapping[str, Any], config: Mapping[str, Any], versions: list[str]
) -> ModelSpec:
    """A ModelSpec from Triton's model metadata and config (both as JSON).

    Metadata gives the shapes as callers see them (batch dimension included);
    the config gives ``max_batch_size`` and is kept whole for ModelConfig.
    """

    def tensors(items: list[Mapping[str, Any]]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                name=t["name"],
                datatype=DataType.parse(t["datatype"]),
                shape=tuple(int(d) for d in t.get("shape", [])),
            )
            for t in items
        )

    ordered = sorted((v for v in versions if v), key=lambda v: (len(v), v))
    return ModelSpec(
        name=metadata["name"],
        versions=tuple(ordered) or tuple(metadata.get("versions", ())),
        platform=metadata.get("platform", ""),
        max_batch_size=int(config.get("max_batch_size", 0)),
        inputs=tensors(metadata.get("inputs", [])),
        outputs=tensors(metadata.get("outputs", [])),
        config=dict(config),
    )
