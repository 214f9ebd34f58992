"""The model registry: versions merged across backends, signatures that must
agree, and the messages for a model or version that is not served."""

from __future__ import annotations

import dataclasses

import pytest

from scheduler.errors import ModelNotFound
from scheduler.registry import ModelRegistry
from tests.unit.test_scheduler import DOUBLE, TRIPLE, VEC, FakeBackend


def test_registry_merges_versions_and_routes_by_version() -> None:
    b1 = FakeBackend("b1", dataclasses.replace(DOUBLE, versions=("10", "2")))
    b2 = FakeBackend("b2", dataclasses.replace(DOUBLE, versions=("1", "2")), TRIPLE)
    registry = ModelRegistry()
    registry.rebuild([b1, b2])
    assert [s.name for s in registry.specs()] == ["double", "triple"]
    spec, backends = registry.resolve("double")
    assert spec.versions == ("1", "2", "10")
    assert [b.id for b in backends] == ["b1", "b2"]
    assert [b.id for b in registry.resolve("double", "10")[1]] == ["b1"]
    assert [b.id for b in registry.resolve("double", "1")[1]] == ["b2"]


def test_registry_refuses_a_different_signature() -> None:
    wider = dataclasses.replace(DOUBLE, inputs=(dataclasses.replace(VEC, shape=(-1, 3)),))
    unbatched = dataclasses.replace(DOUBLE, max_batch_size=0)
    registry = ModelRegistry()
    registry.rebuild(
        [FakeBackend("b1", DOUBLE), FakeBackend("b2", wider), FakeBackend("b3", unbatched)]
    )
    spec, backends = registry.resolve("double")
    assert spec == DOUBLE
    assert [b.id for b in backends] == ["b1"]


def test_registry_not_found_messages() -> None:
    registry = ModelRegistry()
    with pytest.raises(
        ModelNotFound, match="Request for unknown model: 'double' is not found; models served: none"
    ):
        registry.resolve("double")
    registry.rebuild([FakeBackend("b1", DOUBLE, TRIPLE)])
    with pytest.raises(
        ModelNotFound,
        match="Request for unknown model: 'dobule' is not found; models served: double, triple",
    ):
        registry.resolve("dobule")
    with pytest.raises(ModelNotFound) as info:
        registry.resolve("double", "3")
    assert info.value.message == (
        "Request for unknown model: 'double' version 3 is not found; versions: 1"
    )
    assert info.value.code == "NOT_FOUND"
