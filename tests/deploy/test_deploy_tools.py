"""deploy/ through the tools that own each format, all offline:

- kustomize (inside kubectl) renders every overlay and the optional component;
- kubernetes-validate --strict accepts the renders for the oldest supported and
  the newest Kubernetes release it ships schemas for;
- yamllint (.yamllint) on every YAML file of the repository;
- hadolint on the Dockerfile;
- Compose's own ``config`` on the compose file, for each profile and for none;
- checkov on the renders and the Dockerfile, and its secrets scan on deploy/:
  nothing may fail; what is skipped carries its reason inline;
- promtool on the compose stack's Prometheus configuration.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.manifests import (
    COMPOSE_DIR,
    COMPOSE_PROFILES,
    DEPLOY,
    DOCKER_DIR,
    KUBERNETES_VERSIONS,
    REPO,
    Manifests,
    checkov_binary,
    compose_binary,
    missing_tool,
    run,
    tool,
)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_renders_pass_strict_schema_validation(
    rendered: dict[str, Manifests], with_operator: Manifests, version: str
) -> None:
    paths = [m.path for m in rendered.values()]
    out = run(
        [
            tool("kubernetes-validate"),
            "--strict",
            "--quiet",
            "-k",
            version,
            *paths,
            with_operator.path,
        ]
    )
    # Only the Prometheus Operator's kinds have no schema here.
    unknown = [line for line in out.splitlines() if "Couldn't find schema" in line]
    assert all("PodMonitor" in line for line in unknown), out


def test_every_overlay_renders_its_parts(rendered: dict[str, Manifests]) -> None:
    for manifests in rendered.values():
        kinds = {obj["kind"] for obj in manifests.objects}
        assert {"Namespace", "Deployment", "Service", "ConfigMap", "NetworkPolicy"} <= kinds
        assert {"ServiceAccount", "PodDisruptionBudget"} <= kinds
    assert rendered["prod"].has("HorizontalPodAutoscaler", "inference-gateway")


def test_yamllint_is_clean() -> None:
    run([tool("yamllint"), "--strict", "--config-file", REPO / ".yamllint", "."], cwd=REPO)


def test_hadolint_is_clean() -> None:
    run([tool("hadolint"), "--failure-threshold", "style", DOCKER_DIR / "Dockerfile"])


@pytest.mark.parametrize("profile", [*COMPOSE_PROFILES, None])
def test_compose_accepts_the_stack(profile: str | None) -> None:
    command: list[str | Path] = [compose_binary(), "--file", COMPOSE_DIR / "compose.yaml"]
    if profile is not None:
        command += ["--profile", profile]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    run([*command, "config", "--quiet"], env=env, cwd=COMPOSE_DIR)


def _checkov(args: list[str | Path]) -> dict[str, Any]:
    out = run(
        [checkov_binary(), *args, "--output", "json", "--compact", "--skip-download"],
        timeout_s=300,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    reports = json.loads(out)
    # One report per framework; a bare summary (no check_type) when nothing was found.
    listed = reports if isinstance(reports, list) else [reports]
    return {r["check_type"]: r for r in listed if "check_type" in r}


def test_checkov_manifests_and_dockerfile(
    rendered: dict[str, Manifests], with_operator: Manifests
) -> None:
    files = [*(m.path for m in rendered.values()), with_operator.path, DOCKER_DIR / "Dockerfile"]
    reports = _checkov(
        [arg for f in files for arg in ("--file", f)] + ["--framework", "kubernetes", "dockerfile"]
    )
    assert set(reports) == {"kubernetes", "dockerfile"}, reports.keys()
    for check_type, report in reports.items():
        results = report["results"]
        failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
        assert failed == [], f"{check_type}: checks failed: {failed}"
        assert results["passed_checks"], f"{check_type}: checkov checked nothing"
        for skipped in results["skipped_checks"]:
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason.split()) >= 5, f"{skipped['check_id']} skipped without a reason"


def test_checkov_finds_no_secrets_in_deploy() -> None:
    # The source files, not the renders: the dev overlay's throw-away token is
    # a literal there, base64 (high entropy) only once rendered into a Secret.
    reports = _checkov(["--directory", DEPLOY, "--framework", "secrets"])
    report = reports.get("secrets")
    if report is not None:  # checkov reports nothing at all when it finds nothing
        assert report["results"]["failed_checks"] == []


def test_promtool_accepts_the_compose_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        missing_tool("promtool is not installed (make tools, or apt-get install prometheus)")
    run([promtool, "check", "config", "--syntax-only", COMPOSE_DIR / "prometheus.yml"])
