"""Typed settings: defaults, then a TOML file, then ``GATEWAY_*`` environment
variables, then command-line flags (each overriding the one before).

Lists and nested values in the environment are JSON, e.g.
``GATEWAY_TRITON_ENDPOINTS='["127.0.0.1:8001"]'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from scheduler.batching.policy import policy_from_triton_config
from scheduler.routing import DEFAULT_ROUTER, ROUTERS

_DYNAMIC_BATCHING_KEYS = {
    "max_batch_size",
    "max_queue_delay_microseconds",
    "preferred_batch_size",
    "priority_levels",
    "default_priority_level",
    "default_queue_policy",
    "priority_queue_policy",
}
_QUEUE_POLICY_KEYS = {
    "timeout_action",
    "default_timeout_microseconds",
    "allow_timeout_override",
    "max_queue_size",
}


def _snake(key: str) -> str:
    """protobuf JSON's lowerCamelCase name of a field as its proto name."""
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def check_batching_override(model: str, override: dict[str, Any]) -> None:
    """Raise ValueError naming what is wrong with one model's ``batching`` entry."""
    unknown = sorted(k for k in override if _snake(k) not in _DYNAMIC_BATCHING_KEYS)
    if unknown:
        raise ValueError(
            f"batching.{model}: unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_DYNAMIC_BATCHING_KEYS))}"
        )
    policies = [override.get("default_queue_policy") or override.get("defaultQueuePolicy")]
    levels = override.get("priority_queue_policy") or override.get("priorityQueuePolicy") or {}
    if not isinstance(levels, dict):
        raise ValueError(f"batching.{model}.priority_queue_policy must map levels to policies")
    policies += list(levels.values())
    for policy in policies:
        if policy is None:
            continue
        if not isinstance(policy, dict):
            raise ValueError(f"batching.{model}: a queue policy must be a table of fields")
        bad = sorted(k for k in policy if _snake(k) not in _QUEUE_POLICY_KEYS)
        if bad:
            raise ValueError(
                f"batching.{model}: unknown queue policy key(s) {', '.join(bad)}; "
                f"known: {', '.join(sorted(_QUEUE_POLICY_KEYS))}"
            )
    rest = {k: v for k, v in override.items() if _snake(k) != "max_batch_size"}
    try:
        max_batch = int(override.get("max_batch_size", 64))
        if max_batch < 1:
            raise ValueError("max_batch_size must be >= 1")
        policy_from_triton_config({"dynamic_batching": rest}, max_batch)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"batching.{model}: {exc}") from None


class ConfigError(Exception):
    """Configuration that cannot be used; the message says which setting and why."""


class TenantSettings(BaseModel):
    """One tenant: how its callers prove who they are, what they may use, its quota."""

    model_config = ConfigDict(extra="forbid")

    api_keys: list[SecretStr] = Field(default_factory=list, description="its API keys")
    client_cert_names: list[str] = Field(
        default_factory=list, description="common names / SANs of its mTLS client certificates"
    )
    models: list[str] = Field(default_factory=lambda: ["*"], description="models it may use")
    admin: bool = Field(False, description="may call the admin API")
    rate_per_s: float | None = Field(None, gt=0, description="requests per second on average")
    burst: int = Field(10, ge=1, description="requests it may send at once above its rate")
    max_concurrent: int | None = Field(None, gt=0, description="requests in flight at once")
    share: float = Field(
        1.0, ge=0.01, le=100.0, description="its weight in a model's batch queue (fair share)"
    )


class Settings(BaseSettings):
    """Everything the gateway reads at start-up. Validated once, then passed in."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", toml_file=None)

    host: str = Field("127.0.0.1", description="address to listen on (0.0.0.0 in containers)")
    port: int = Field(8001, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    port_file: Path | None = Field(None, description="write the bound port here once serving")
    max_message_bytes: int = Field(64 * 1024 * 1024, gt=0, description="largest message in/out")
    grace_period_s: float = Field(10.0, ge=0, description="in-flight work allowed at shutdown")
    drain_delay_s: float = Field(
        0.0,
        ge=0,
        description="at shutdown, keep serving this long after health turns NOT_SERVING "
        "(time for a load balancer to notice; e.g. 5 behind Kubernetes)",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="gateway processes sharing the port (SO_REUSEPORT); about one per core",
    )
    triton_endpoints: list[str] = Field(
        default_factory=list, description="Triton gRPC endpoints, host:port"
    )
    cpu_models: list[str] = Field(
        default_factory=lambda: [
            "builtin:add_sub",
            "builtin:mlp_classifier",
            "builtin:text_upper",
        ],
        description="CPU models: builtin:NAME or package.module:factory",
    )
    cpu_workers: int | None = Field(
        None, gt=0, description="CPU backend threads (and processes, for models run in them)"
    )
    cpu_execution: dict[str, Literal["inline", "thread", "process"]] = Field(
        default_factory=dict,
        description="per CPU model: run inline on the event loop, on a thread, or in a process",
    )
    request_log_rate_per_s: float = Field(
        10.0, gt=0, description="most per-request log lines a second (errors, sampled OK)"
    )
    request_log_ok_sample: float = Field(
        0.0, ge=0, le=1, description="fraction of OK requests that get a log line too"
    )
    onnx_repository: Path | None = Field(
        None,
        description="Triton-layout repository whose ONNX models the gateway runs on its CPUs",
    )
    onnx_workers: int | None = Field(None, gt=0, description="ONNX Runtime worker threads")
    health_interval_s: float = Field(2.0, gt=0, description="backend health probe period")
    rediscover_interval_s: float = Field(
        30.0, gt=0, description="re-read each backend's models this often"
    )
    dns_interval_s: float = Field(10.0, gt=0, description="re-resolve dns:/// endpoints this often")
    triton_metrics_port: int | None = Field(
        8002, ge=1, le=65535, description="Triton's metrics port on each endpoint's host"
    )
    triton_metrics_urls: dict[str, str] = Field(
        default_factory=dict, description="metrics URL per endpoint, overriding the port rule"
    )
    nvml: bool = Field(True, description="read local GPUs through NVML")
    telemetry_interval_s: float = Field(1.0, gt=0, description="telemetry poll period")
    telemetry_max_age_s: float = Field(5.0, gt=0, description="older readings count as unknown")
    memory_headroom_bytes: int = Field(512 * 1024 * 1024, ge=0, description="GPU memory spare")
    model_memory_bytes: dict[str, int] = Field(
        default_factory=dict, description="memory a model needs on a GPU, by model name"
    )
    max_in_flight_per_backend: int = Field(256, gt=0, description="calls a backend may hold")
    max_gpu_utilization: float = Field(0.98, gt=0, le=1, description="busier GPUs are skipped")
    breaker_failure_threshold: int = Field(5, gt=0, description="failures that eject a backend")
    breaker_base_backoff_s: float = Field(1.0, gt=0, description="first ejection period")
    breaker_max_backoff_s: float = Field(30.0, gt=0, description="longest ejection period")
    batching_layer: Literal["gateway", "backend", "none"] = Field(
        "gateway", description="who batches: the gateway, Triton's own batcher, or nobody"
    )
    batching_layer_by_model: dict[str, Literal["gateway", "backend", "none"]] = Field(
        default_factory=dict, description="batching_layer per model"
    )
    batching: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per model, Triton dynamic_batching fields overriding its config",
    )
    routing: str = Field(DEFAULT_ROUTER, description=f"routing policy: one of {', '.join(ROUTERS)}")
    routing_by_model: dict[str, str] = Field(
        default_factory=dict, description="routing policy per model"
    )
    default_max_queue_delay_us: int = Field(
        0, ge=0, description="gateway batching delay for models whose config sets none"
    )
    max_bytes_in_flight: int = Field(
        1 << 30, gt=0, description="bytes of requests held at once; more are RESOURCE_EXHAUSTED"
    )
    max_tensor_dims: int = Field(
        32, ge=1, le=32, description="dimensions an input tensor may declare"
    )
    max_tensor_elements: int = Field(
        1 << 28, gt=0, description="elements an input tensor may declare (checked before decoding)"
    )
    outlier_factor: float = Field(
        10.0, ge=1, description="a call running this many times its predicted time is an outlier"
    )
    outlier_min_s: float = Field(
        0.5, gt=0, description="...plus this much: an outlier call is retried elsewhere"
    )
    probe_timeout_s: float = Field(1.0, gt=0, description="how long a health probe may take")
    control_timeout_s: float = Field(
        5.0, gt=0, description="how long a Triton control call (discovery, statistics) may take"
    )
    stale_estimate_s: float = Field(
        10.0, gt=0, description="an estimate unmeasured this long moves toward the best (retried)"
    )
    admit_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="queue a request only if the work ahead ends within this share of its deadline",
    )
    default_slo_s: float | None = Field(
        None, gt=0, description="deadline admission assumes for requests that carry none"
    )
    stream_max_in_flight: int = Field(64, gt=0, description="concurrent requests per stream")
    server_name: str = Field(
        "inference-gateway",
        min_length=1,
        description="the name ServerMetadata answers (clients that expect 'triton' may check it)",
    )
    max_concurrent_rpcs: int | None = Field(
        4096, gt=0, description="rpcs served at once; more are refused with RESOURCE_EXHAUSTED"
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")
    log_format: Literal["text", "json"] = Field(
        "text", description="text lines, or one JSON object per line; both carry trace ids"
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Prometheus /metrics HTTP port on `host`; 0 = any free"
    )
    metrics_port_file: Path | None = Field(None, description="write the bound metrics port here")
    admin_host: str = Field("127.0.0.1", description="address of the admin gRPC service")
    admin_port: int | None = Field(
        None, ge=0, le=65535, description="admin gRPC port (None = off; 0 = any free)"
    )
    admin_port_file: Path | None = Field(None, description="write the bound admin port here")
    admin_token: str | None = Field(
        None, min_length=1, description="if set, admin calls need 'authorization: Bearer TOKEN'"
    )
    admin_allow_unauthenticated: bool = Field(
        False, description="allow an admin API on a non-loopback address without credentials"
    )
    tenants: dict[str, TenantSettings] = Field(
        default_factory=dict,
        description="callers by name; when set, every inference call needs credentials",
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate: TLS on gRPC and metrics")
    tls_key_file: Path | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA: clients must present a certificate it signed (mutual TLS)"
    )
    triton_tls_ca_file: Path | None = Field(
        None, description="PEM CA that signed the Tritons' certificates: TLS towards Triton"
    )
    triton_tls_cert_file: Path | None = Field(None, description="client certificate for Triton")
    triton_tls_key_file: Path | None = Field(None, description="its private key")

    @field_validator("triton_endpoints")
    @classmethod
    def _endpoints(cls, value: list[str]) -> list[str]:
        for endpoint in value:
            host, sep, port = endpoint.rpartition(":")
            if endpoint.startswith("dns:///"):
                host, sep, port = endpoint.removeprefix("dns:///").rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
                raise ValueError(
                    f"Triton endpoint {endpoint!r} must look like host:port or dns:///name:port"
                )
        return value

    @field_validator("routing")
    @classmethod
    def _routing(cls, value: str) -> str:
        if value not in ROUTERS:
            raise ValueError(f"routing policy {value!r} must be one of {', '.join(ROUTERS)}")
        return value

    @field_validator("routing_by_model")
    @classmethod
    def _routing_by_model(cls, value: dict[str, str]) -> dict[str, str]:
        for model, name in value.items():
            if name not in ROUTERS:
                known = ", ".join(ROUTERS)
                raise ValueError(
                    f"routing policy {name!r} of model {model!r} must be one of {known}"
                )
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file needs tls_cert_file and tls_key_file")
        if (self.triton_tls_cert_file is None) != (self.triton_tls_key_file is None):
            raise ValueError("triton_tls_cert_file and triton_tls_key_file go together")
        if self.triton_tls_cert_file is not None and self.triton_tls_ca_file is None:
            raise ValueError("triton_tls_cert_file needs triton_tls_ca_file")
        seen: dict[str, str] = {}
        for name, tenant in self.tenants.items():
            for key in tenant.api_keys:
                other = seen.setdefault(key.get_secret_value(), name)
                if other != name:
                    raise ValueError(f"tenants {other} and {name} share an API key")
        return self

    @field_validator("batching")
    @classmethod
    def _batching(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # Checked here, once: a bad value would otherwise fail every request of
        # the model, and a misspelt key would be ignored without a word.
        for model, override in value.items():
            check_batching_override(model, override)
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log level {value!r} must be DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML source reads ``model_config["toml_file"]``, set per load below.
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read and validate settings, or raise ConfigError naming every problem.

    ``config_file`` defaults to ``$GATEWAY_CONFIG``; ``overrides`` (from the
    command line) win over both file and environment.
    """
    path = config_file or (Path(p) if (p := os.environ.get("GATEWAY_CONFIG")) else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=path)

    try:
        loaded = _FromFile(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        where = f" (file {path}, environment GATEWAY_*)" if path else " (environment GATEWAY_*)"
        raise ConfigError(f"invalid configuration{where}: {problems}") from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read configuration file {path}: {exc}") from None
    return loaded
