"""The model registry: which backends serve which model, under which spec."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence

from scheduler.backends.base import Backend
from scheduler.errors import ModelNotFound
from scheduler.spec import ModelSpec

log = logging.getLogger(__name__)


class ModelRegistry:
    """Maps model names to a spec and the backends that can run it.

    Built from what each backend reports (``Backend.models()``), in backend
    order. The first backend to report a model fixes its signature; a later
    backend whose copy differs in tensors or batch size is not routed to for
    that model (a mixed fleet must never answer one caller with two shapes),
    and the conflict is logged. Versions are the union over backends.
    """

    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self._routes: dict[str, list[Backend]] = {}
        #: (name, version) -> backends serving that version: resolved once per
        #: rebuild, not per request (``models()`` may build a dict each call).
        self._by_version: dict[tuple[str, str], tuple[Backend, ...]] = {}
        #: Counts rebuilds: what was checked against the specs of one
        #: generation holds until the next.
        self.generation = 0

    def rebuild(self, backends: Iterable[Backend]) -> None:
        specs: dict[str, ModelSpec] = {}
        routes: dict[str, list[Backend]] = {}
        for backend in backends:
            for name, spec in backend.models().items():
                known = specs.get(name)
                if known is None:
                    specs[name] = spec
                elif not known.same_signature(spec):
                    log.warning(
                        "backend %s serves model %r with a different signature; not routing it",
                        backend.id,
                        name,
                    )
                    continue
                else:
                    merged = tuple(sorted(set(known.versions) | set(spec.versions), key=_vkey))
                    specs[name] = dataclasses.replace(known, versions=merged)
                routes.setdefault(name, []).append(backend)
        self._specs, self._routes = specs, routes
        self._by_version = {}
        self.generation += 1

    def specs(self) -> list[ModelSpec]:
        return [self._specs[name] for name in sorted(self._specs)]

    def resolve(self, name: str, version: str = "") -> tuple[ModelSpec, Sequence[Backend]]:
        """The spec and candidate backends for a model, or ModelNotFound."""
        spec = self._specs.get(name)
        if spec is None:
            known = ", ".join(sorted(self._specs)) or "none"
            # Triton's wording first: clients match on it.
            raise ModelNotFound(
                f"Request for unknown model: '{name}' is not found; models served: {known}"
            )
        if not spec.has_version(version):
            raise ModelNotFound(
                f"Request for unknown model: '{name}' version {version} is not found; "
                f"versions: {', '.join(spec.versions)}"
            )
        backends = self._by_version.get((name, version))
        if backends is None:
            backends = tuple(b for b in self._routes[name] if spec_has(b, name, version))
            self._by_version[(name, version)] = backends
        return spec, backends


def spec_has(backend: Backend, name: str, version: str) -> bool:
    spec = backend.models().get(name)
    return spec is not None and spec.has_version(version)


def _vkey(version: str) -> tuple[int, str]:
    return (len(version), version)  # "2" < "10", as integers would sort
