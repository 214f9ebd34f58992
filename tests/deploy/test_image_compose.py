"""The image and the compose stack agree with the code: the Dockerfile's base,
user, ports, healthcheck and pinned requirements, and compose's settings,
drain and wiring, read through the gateway's own ``load_settings``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.deploy.manifests import (
    COMPOSE_DIR,
    COMPOSE_PROFILES,
    CONFIG_VARIABLE,
    DOCKER_DIR,
    REPO,
    SHUTDOWN_MARGIN_S,
    command_flag,
    compose_config,
    compose_gateway_settings,
    dockerfile,
    image_settings,
)

# -- the image ---------------------------------------------------------------------


def test_image_base_is_pinned_and_shared() -> None:
    bases = dockerfile()["FROM"]
    assert len(bases) == 2 and len(set(bases)) == 1, f"both stages use one base: {bases}"
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-[a-z]+(@sha256:[0-9a-f]{64})?", bases[0])


def test_image_runs_unprivileged_and_stops_with_a_drain() -> None:
    image = dockerfile()
    user = image["USER"].split(":")
    assert all(part.isdigit() and int(part) >= 10000 for part in user), image["USER"]
    assert image["STOPSIGNAL"] == "SIGTERM"
    assert "healthcheck.py" in image["HEALTHCHECK"] and image["HEALTHCHECK"].startswith("--")
    assert image["ENTRYPOINT"] == '["inference-gateway"]' and image["CMD"] == '["serve"]'


def test_image_config_path_ports_and_healthcheck_files(tmp_path: Path) -> None:
    image = dockerfile()
    copied = {target: sources for sources, target in image["COPY"]}
    assert copied[image["ENV"][CONFIG_VARIABLE]] == ["deploy/docker/gateway.toml"]
    healthcheck = re.search(r"(/\S+healthcheck\.py)", image["HEALTHCHECK"])
    assert healthcheck and copied[healthcheck.group(1)] == ["deploy/docker/healthcheck.py"]
    settings = image_settings(tmp_path)
    assert settings.host == "0.0.0.0"
    assert settings.metrics_port is not None
    assert sorted(image["EXPOSE"]) == sorted([settings.port, settings.metrics_port])


def test_dockerignore_lets_in_exactly_what_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything is left out unless named"
    let_in = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for sources, _ in dockerfile()["COPY"]
        for source in sources
        if not source.startswith("/")  # from the build stage
    }
    # Each copied path is let in itself or through a folder above it.
    for source in copied:
        parts = Path(source).parts
        assert any("/".join(parts[:i]) in let_in for i in range(1, len(parts) + 1)), source


def test_image_requirements_pin_the_whole_runtime_and_nothing_else() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    runtime = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    pins: dict[str, str] = {}
    for line in (DOCKER_DIR / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep, f"not pinned exactly: {line}"
            pins[_normal(name)] = version
    for requirement in runtime:
        name = _normal(requirement.name)
        assert name in pins, f"requirements.txt misses {requirement}"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            requirement,
            pins[name],
        )
    dev_only = {
        _normal(Requirement(r).name) for r in pyproject["project"]["optional-dependencies"]["dev"]
    }
    dev_only -= {_normal(r.name) for r in runtime}
    dev_only -= {"numpy"}  # the dev extra only narrows numpy's range
    dev_only |= {"nvidia-pytriton", "tritonserver"}
    assert not dev_only & set(pins), f"test or build tools in the image: {dev_only & set(pins)}"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- compose ---------------------------------------------------------------------------


def test_compose_gateway_config_path_ports_and_drain(tmp_path: Path) -> None:
    settings = compose_gateway_settings(tmp_path)
    gateway = compose_config(None)["services"]["gateway"]
    assert [p["target"] for p in gateway["ports"]] == [settings.port]
    assert all(p.get("host_ip") == "127.0.0.1" for p in gateway["ports"])
    assert gateway["stop_signal"] == "SIGTERM"
    stop_s = _seconds(gateway["stop_grace_period"])
    assert stop_s >= settings.grace_period_s + SHUTDOWN_MARGIN_S
    assert gateway["read_only"] is True and gateway["cap_drop"] == ["ALL"]
    assert settings.admin_host == "127.0.0.1"


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration))


@pytest.mark.parametrize("profile", COMPOSE_PROFILES)
def test_compose_triton_is_found_by_name_in_each_profile(profile: str, tmp_path: Path) -> None:
    settings = compose_gateway_settings(tmp_path)
    services = compose_config(profile)["services"]
    tritons = {k: v for k, v in services.items() if k.startswith("triton")}
    assert list(tritons) == [f"triton-{profile}"]
    [triton] = tritons.values()
    [endpoint] = settings.triton_endpoints
    match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", endpoint)
    assert match and match.group(1) in triton["networks"]["default"]["aliases"]
    assert int(match.group(2)) == command_flag(triton["command"], "--grpc-port")
    assert settings.triton_metrics_port == command_flag(triton["command"], "--metrics-port")
    gpus = triton.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert bool(gpus) == (profile == "gpu")
    if gpus:
        assert gpus[0]["capabilities"] == ["gpu"]
    exit_timeout = command_flag(triton["command"], "--exit-timeout-secs")
    assert _seconds(triton["stop_grace_period"]) >= exit_timeout + SHUTDOWN_MARGIN_S


def test_compose_traces_and_metrics_reach_their_backends(tmp_path: Path) -> None:
    settings = compose_gateway_settings(tmp_path)
    stack = compose_config("cpu")["services"]
    collector = yaml.safe_load((COMPOSE_DIR / "otel-collector.yaml").read_text())
    protocols = collector["receivers"]["otlp"]["protocols"]
    grpc_port = int(protocols["grpc"]["endpoint"].rsplit(":", 1)[1])
    http_port = int(protocols["http"]["endpoint"].rsplit(":", 1)[1])
    gateway_env = stack["gateway"]["environment"]
    assert gateway_env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{grpc_port}"
    trace_url = next(a for a in stack["triton-cpu"]["command"] if ",url=" in a)
    assert trace_url.endswith(f"//otel-collector:{http_port}/v1/traces")
    pipeline = collector["service"]["pipelines"]["traces"]
    for exporter in pipeline["exporters"]:
        host = collector["exporters"][exporter]["endpoint"].split(":")[0]
        assert host in stack, f"the collector exports to {host}, which is no service"
    assert set(pipeline["receivers"]) <= set(collector["receivers"])
    assert set(pipeline["processors"]) <= set(collector["processors"])
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = {
        name: config["port"]
        for job in prometheus["scrape_configs"]
        for config in job["dns_sd_configs"]
        for name in config["names"]
    }
    assert targets["gateway"] == settings.metrics_port
    assert targets["triton"] == settings.triton_metrics_port
