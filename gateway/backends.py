"""The backends the settings describe: Triton endpoints, the CPU pool, the ONNX tier."""

from __future__ import annotations

from gateway import security
from gateway.config import ConfigError, Settings
from scheduler.backends.base import Backend
from scheduler.backends.cpu import CpuBackend
from scheduler.backends.cpu_models import Execution, default_execution, load_cpu_model
from scheduler.backends.triton import TritonBackend
from scheduler.discovery import parse_dns_endpoint


def build_backends(settings: Settings) -> list[Backend]:
    """The static backends the settings describe: one per ``host:port`` Triton
    endpoint, one CPU pool. ``dns:///`` endpoints become backends at run time."""
    backends: list[Backend] = []
    static = [e for e in settings.triton_endpoints if parse_dns_endpoint(e) is None]
    if twice := sorted({e for e in static if static.count(e) > 1}):
        raise ConfigError(f"triton_endpoints: {', '.join(twice)} listed more than once")
    for endpoint in static:
        backends.append(triton_backend(settings, endpoint))
    if settings.cpu_models:
        backends.append(cpu_backend(settings))
    if settings.onnx_repository is not None:
        # Imported here: ONNX Runtime takes a while to import, and most gateways do not use it.
        from scheduler.backends.onnx import OnnxBackend, OnnxModelError

        try:
            backends.append(OnnxBackend(settings.onnx_repository, workers=settings.onnx_workers))
        except OnnxModelError as exc:
            raise ConfigError(f"onnx_repository: {exc}") from None
    if not settings.triton_endpoints and not backends:
        raise ConfigError(
            "nothing to serve: set triton_endpoints, cpu_models and/or onnx_repository"
        )
    return backends


def cpu_backend(settings: Settings) -> CpuBackend:
    """The CPU pool of ``cpu_models``, each run as ``cpu_execution`` (or its default) says."""
    try:
        models = [load_cpu_model(ref) for ref in settings.cpu_models]
    except ValueError as exc:
        raise ConfigError(f"cpu_models: {exc}") from None
    refs = {model.spec.name: ref for model, ref in zip(models, settings.cpu_models, strict=True)}
    if unknown := sorted(set(settings.cpu_execution) - set(refs)):
        raise ConfigError(
            f"cpu_execution: no CPU model named {', '.join(unknown)}; "
            f"the CPU models are {', '.join(sorted(refs)) or 'none'}"
        )
    execution = {name: default_execution(ref) for name, ref in refs.items()}
    execution.update({name: Execution(mode) for name, mode in settings.cpu_execution.items()})
    try:
        return CpuBackend(models, workers=settings.cpu_workers, execution=execution, refs=refs)
    except ValueError as exc:
        raise ConfigError(f"cpu_models: {exc}") from None


def triton_backend(settings: Settings, target: str) -> TritonBackend:
    tls = security.triton_tls(settings)
    return TritonBackend(
        target,
        max_message_bytes=settings.max_message_bytes,
        tls=tls,
        control_timeout_s=settings.control_timeout_s,
    )


def metrics_url(settings: Settings, endpoint: str) -> str | None:
    """Where a Triton endpoint's Prometheus metrics are, if anywhere."""
    if endpoint in settings.triton_metrics_urls:
        return settings.triton_metrics_urls[endpoint]
    if settings.triton_metrics_port is None:
        return None
    host = endpoint.rpartition(":")[0]
    return f"http://{host}:{settings.triton_metrics_port}/metrics"
