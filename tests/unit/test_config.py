"""gateway.config.load_settings and gateway.backends.build_backends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.backends import build_backends
from gateway.config import ConfigError, Settings, load_settings
from scheduler.backends.cpu import CpuBackend
from scheduler.backends.cpu_models import Execution


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read GATEWAY_* variables; the caller's must not leak in."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.host == "127.0.0.1" and settings.port == 8001
    assert settings.triton_endpoints == []
    assert settings.cpu_models == [
        "builtin:add_sub",
        "builtin:mlp_classifier",
        "builtin:text_upper",
    ]
    assert settings.log_level == "INFO"
    assert settings.port_file is None and settings.cpu_workers is None


def test_toml_file(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'port = 9100\ntriton_endpoints = ["10.0.0.1:8001", "triton-0.triton:8001"]\n'
        'log_level = "debug"\ncpu_workers = 3\n',
    )
    settings = load_settings(path)
    assert settings.port == 9100
    assert settings.triton_endpoints == ["10.0.0.1:8001", "triton-0.triton:8001"]
    assert settings.log_level == "DEBUG"  # normalised
    assert settings.cpu_workers == 3


def test_gateway_config_variable_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_CONFIG", str(_toml(tmp_path, "port = 9200\n")))
    assert load_settings().port == 9200


def test_environment_beats_file_and_overrides_beat_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(tmp_path, 'port = 9100\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("GATEWAY_PORT", "9300")
    monkeypatch.setenv("GATEWAY_TRITON_ENDPOINTS", '["h:1"]')
    settings = load_settings(path)
    assert (settings.port, settings.host, settings.triton_endpoints) == (9300, "0.0.0.0", ["h:1"])
    settings = load_settings(path, port=9400, host=None)  # None: the flag was not given
    assert (settings.port, settings.host) == (9400, "0.0.0.0")


@pytest.mark.parametrize(
    ("toml", "words"),
    [
        ("port = 70000\n", ["port", "65535"]),
        ("port = -1\n", ["port", "0"]),
        ('port = "eighty"\n', ["port", "integer"]),
        ('triton_endpoints = ["localhost"]\n', ["triton_endpoints", "'localhost'", "host:port"]),
        ('triton_endpoints = [":8001"]\n', ["triton_endpoints", "host:port"]),
        ('triton_endpoints = ["h:port"]\n', ["triton_endpoints", "'h:port'"]),
        ("prot = 8001\n", ["prot", "not permitted"]),
        ('log_level = "LOUD"\n', ["log_level", "'LOUD'", "DEBUG, INFO, WARNING or ERROR"]),
        ("cpu_workers = 0\n", ["cpu_workers", "greater than 0"]),
    ],
)
def test_bad_settings_in_file(tmp_path: Path, toml: str, words: list[str]) -> None:
    path = _toml(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_bad_setting_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "not-a-port")
    with pytest.raises(ConfigError, match=r"environment GATEWAY_\*\): port: .*integer"):
        load_settings()


def test_every_problem_is_named() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(port=99999, log_level="nope")
    assert "port:" in str(info.value) and "log_level:" in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=f"configuration file {missing} does not exist"):
        load_settings(missing)


def test_toml_syntax_error(tmp_path: Path) -> None:
    path = _toml(tmp_path, "port = \n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert f"cannot read configuration file {path}" in str(info.value)
    assert "line 1" in str(info.value)


def test_endpoint_port_out_of_range(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="triton_endpoints"):
        load_settings(triton_endpoints=["triton:99999"])


def test_build_backends_default_cpu_pool() -> None:
    backends = build_backends(load_settings(cpu_workers=2))
    assert len(backends) == 1 and isinstance(backends[0], CpuBackend)
    assert sorted(backends[0].models()) == ["add_sub", "mlp_classifier", "text_upper"]


def test_cpu_execution_defaults_and_overrides() -> None:
    settings = load_settings(cpu_execution={"mlp_classifier": "process"})
    (backend,) = build_backends(settings)
    assert isinstance(backend, CpuBackend)
    assert backend.execution("add_sub") is Execution.INLINE  # the built-in's default
    assert backend.execution("mlp_classifier") is Execution.PROCESS
    assert backend.execution("text_upper") is Execution.INLINE


def test_cpu_execution_of_an_unknown_model_or_mode() -> None:
    with pytest.raises(ConfigError, match=r"cpu_execution: no CPU model named resnet"):
        build_backends(load_settings(cpu_execution={"resnet": "thread"}))
    with pytest.raises(ConfigError, match=r"cpu_execution\.add_sub"):
        load_settings(cpu_execution={"add_sub": "gpu"})


def test_build_backends_unknown_builtin() -> None:
    settings = load_settings(cpu_models=["builtin:add_sub", "builtin:resnet50"])
    with pytest.raises(ConfigError) as info:
        build_backends(settings)
    assert str(info.value).startswith("cpu_models: ")
    assert "'resnet50'" in str(info.value) and "add_sub" in str(info.value)


def test_build_backends_nothing_to_serve() -> None:
    settings: Settings = load_settings(cpu_models=[], triton_endpoints=[])
    with pytest.raises(ConfigError, match=r"nothing to serve.*triton_endpoints.*cpu_models"):
        build_backends(settings)
