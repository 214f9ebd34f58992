"""A Triton server's Prometheus endpoint as a telemetry provider.

Triton publishes, per GPU it drives (label ``gpu_uuid``), ``nv_gpu_utilization``
(0..1), ``nv_gpu_memory_total_bytes``, ``nv_gpu_memory_used_bytes`` and
``nv_gpu_power_usage`` (W), and per model (labels ``model``, ``version``) the gauge
``nv_inference_pending_request_count`` and cumulative counters such as
``nv_inference_queue_duration_us``. Reading them lets the scheduler see GPUs on hosts
where it cannot call NVML. The exposition text is parsed by ``prometheus_client``.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections import defaultdict
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

from scheduler.telemetry.snapshot import BackendLoad, DeviceSnapshot, ProviderSample

__all__ = ["TritonMetricsError", "TritonMetricsProvider", "parse_triton_metrics"]

# Triton family name -> DeviceSnapshot field, for the per-GPU gauges.
_GPU_FAMILIES = {
    "nv_gpu_utilization": "utilization",
    "nv_gpu_memory_total_bytes": "memory_total_bytes",
    "nv_gpu_memory_used_bytes": "memory_used_bytes",
    "nv_gpu_power_usage": "power_w",
}
# Triton family name -> BackendLoad field, for the per-model series.
_MODEL_FAMILIES = {
    "nv_inference_pending_request_count": "pending_requests",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_compute_infer_duration_us": "compute_infer_us",
    "nv_inference_request_success": "request_success",
}
# The largest exposition text accepted; Triton's is a few tens of KiB per hundred models.
_MAX_BODY_BYTES = 16 * 1024 * 1024


class TritonMetricsError(RuntimeError):
    """The metrics endpoint could not be read or its text could not be parsed."""


def parse_triton_metrics(
    text: str, *, backend_id: str, host: str, sampled_at: float
) -> ProviderSample:
    """Turn Triton's exposition text into GPU devices and one ``BackendLoad``.

    GPUs are keyed ``f"{backend_id}:{gpu_uuid}"``; a CPU-only Triton has no
    ``nv_gpu_*`` families and yields no devices, but still its load. Per-model series
    are summed over versions (and over ``gpu_uuid``, which some Triton releases add
    to per-model counters). ``prometheus_client`` reports counter samples as
    ``<family>_total``, so families are matched by the family name.
    """
    gpus: dict[str, dict[str, float]] = defaultdict(dict)
    models: dict[str, dict[str, float]] = {
        field: defaultdict(float) for field in _MODEL_FAMILIES.values()
    }
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise TritonMetricsError(f"Triton metrics of {backend_id}: unparsable text: {exc}") from exc
    for family in families:
        gpu_field = _GPU_FAMILIES.get(family.name)
        model_field = _MODEL_FAMILIES.get(family.name)
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            if gpu_field is not None and "gpu_uuid" in sample.labels:
                gpus[sample.labels["gpu_uuid"]][gpu_field] = float(sample.value)
            elif model_field is not None and "model" in sample.labels:
                models[model_field][sample.labels["model"]] += float(sample.value)
    devices = tuple(
        _gpu(uuid, values, backend_id, host, sampled_at) for uuid, values in sorted(gpus.items())
    )
    counts = {field: {m: int(v) for m, v in series.items()} for field, series in models.items()}
    load = BackendLoad(
        backend_id=backend_id,
        sampled_at=sampled_at,
        pending_requests=counts["pending_requests"],
        queue_us=counts["queue_us"],
        compute_infer_us=counts["compute_infer_us"],
        request_success=counts["request_success"],
    )
    return ProviderSample(devices=devices, loads=(load,))


def _gpu(
    uuid: str, values: dict[str, float], backend_id: str, host: str, sampled_at: float
) -> DeviceSnapshot:
    total = values.get("memory_total_bytes")
    used = values.get("memory_used_bytes")
    utilization = values.get("utilization")
    power = values.get("power_w")
    return DeviceSnapshot(
        device_id=f"{backend_id}:{uuid}",
        kind="gpu",
        source="triton-metrics",
        sampled_at=sampled_at,
        host=host,
        uuid=uuid,
        memory_total_bytes=int(total) if total is not None else None,
        memory_used_bytes=int(used) if used is not None else None,
        memory_free_bytes=max(0, int(total - used))
        if total is not None and used is not None
        else None,
        # Clamp: a rounding artefact above 1.0 must not reject the whole reading.
        utilization=min(1.0, max(0.0, utilization)) if utilization is not None else None,
        power_w=power,
    )


class TritonMetricsProvider:
    """Polls one Triton's ``/metrics`` over HTTP; ``name`` is ``"triton-metrics:<backend_id>"``.

    Each ``sample`` is one bounded GET (``timeout_s``) followed by a parse; an
    unreachable endpoint, an HTTP error or unparsable text raises
    ``TritonMetricsError`` naming the URL, and the monitor keeps the previous
    readings ageing. ``backend_id`` should be the Triton backend's id
    (``"triton@host:port"``) so devices and loads line up with the backend.
    """

    def __init__(self, metrics_url: str, backend_id: str, timeout_s: float = 1.0) -> None:
        parts = urlsplit(metrics_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"metrics_url must be an http(s) URL, got {metrics_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self._url = metrics_url
        self._backend_id = backend_id
        self._host = parts.hostname
        self._timeout_s = timeout_s
        self.name = f"triton-metrics:{backend_id}"

    @property
    def metrics_url(self) -> str:
        return self._url

    def sample(self, now: float) -> ProviderSample:
        return parse_triton_metrics(
            self._fetch(), backend_id=self._backend_id, host=self._host, sampled_at=now
        )

    def close(self) -> None:
        # Nothing held between polls: each GET opens and closes its own connection.
        pass

    def _fetch(self) -> str:
        try:
            with urllib.request.urlopen(self._url, timeout=self._timeout_s) as response:
                body: bytes = response.read(_MAX_BODY_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise TritonMetricsError(
                f"Triton metrics at {self._url}: HTTP {exc.code} {exc.reason}"
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise TritonMetricsError(
                f"Triton metrics at {self._url} unreachable: {reason or type(exc).__name__}"
            ) from exc
        if len(body) > _MAX_BODY_BYTES:
            raise TritonMetricsError(
                f"Triton metrics at {self._url}: body over {_MAX_BODY_BYTES} bytes"
            )
        return body.decode("utf-8", errors="replace")
