"""Fixtures of the deploy checks: every overlay rendered once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.deploy.manifests import K8S, OVERLAYS, Manifests, render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Manifests]:
    """``kubectl kustomize`` of each overlay, written to a file and parsed."""
    out = tmp_path_factory.mktemp("rendered")
    renders: dict[str, Manifests] = {}
    for overlay in OVERLAYS:
        path = out / f"{overlay}.yaml"
        path.write_text(render(K8S / "overlays" / overlay))
        renders[overlay] = Manifests.load(overlay, path)
    return renders


@pytest.fixture(scope="session")
def with_operator(tmp_path_factory: pytest.TempPathFactory) -> Manifests:
    """The prod overlay plus the Prometheus Operator component, as a user adds it."""
    wrapper = tmp_path_factory.mktemp("with-operator")
    # kustomize takes directories only by relative path.
    k8s = Path(os.path.relpath(K8S, wrapper))
    (wrapper / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
        "kind: Kustomization\n"
        "namespace: inference\n"
        f"resources: [{k8s / 'overlays' / 'prod'}]\n"
        f"components: [{k8s / 'components' / 'prometheus-operator'}]\n"
    )
    path = wrapper / "rendered.yaml"
    path.write_text(render(wrapper))
    return Manifests.load("prod+prometheus-operator", path)
