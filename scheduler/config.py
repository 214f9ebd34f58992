"""The scheduler's own settings: plain data, validated by the gateway's config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scheduler.batching.policy import BatchLayer
from scheduler.health import BreakerConfig
from scheduler.routing import DEFAULT_ROUTER


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Knobs of placement, health and batching (see README's configuration)."""

    health_interval_s: float = 2.0
    rediscover_interval_s: float = 30.0
    dns_interval_s: float = 10.0
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    #: Telemetry older than this is unknown, never idle.
    telemetry_max_age_s: float = 5.0
    #: A GPU must have this much free memory beyond the model's footprint.
    memory_headroom_bytes: int = 512 * 1024 * 1024
    #: Model name -> bytes it needs on a device (0 or absent: no memory check).
    model_memory_bytes: Mapping[str, int] = field(default_factory=dict)
    max_in_flight_per_backend: int = 256
    max_gpu_utilization: float = 0.98
    #: What placement assumes for a batch it has never seen on a backend: small,
    #: so new backends get tried, but not zero, so in-flight calls still count.
    unknown_service_s: float = 0.001
    decision_log_size: int = 256
    #: Which layer batches (gateway, backend = Triton's own, none), per model.
    batching_layer: BatchLayer = "gateway"
    batching_layer_by_model: Mapping[str, BatchLayer] = field(default_factory=dict)
    #: Per model, fields of Triton's ``dynamic_batching`` (its JSON form, e.g.
    #: ``max_queue_delay_microseconds``, ``preferred_batch_size``,
    #: ``default_queue_policy``) that override the model's own config, plus
    #: ``max_batch_size`` to batch smaller than the model allows.
    batching_by_model: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: The largest message a backend call may carry (the backends' channels'
    #: limit; 0: none): gateway batches are capped to fit (``batch_bytes_for``).
    max_message_bytes: int = 0
    #: Gateway batching delay for models whose config gives none (µs).
    default_max_queue_delay_us: int = 0
    #: Outlier detection: a call running longer than ``outlier_min_s +
    #: outlier_factor * (predicted service + predicted wait)`` is ended, retried
    #: elsewhere and counted against its backend.
    outlier_factor: float = 10.0
    outlier_min_s: float = 0.5
    #: Period of the estimator's ``relax_stale`` sweep: an estimate no call
    #: measured for a period moves halfway toward the model's best, so a
    #: backend that once looked slow is tried, and measured, again.
    stale_estimate_s: float = 10.0
    #: Admission: a request is queued only if the work ahead of it is predicted
    #: to finish within this fraction of the time to its deadline.
    admit_fraction: float = 0.5
    #: The deadline admission assumes for a request without one (None: none).
    default_slo_s: float | None = None
    #: How long a health probe waits for a backend's answer.
    probe_timeout_s: float = 1.0
    #: The routing policy (``scheduler.routing.ROUTERS``), and per model.
    routing: str = DEFAULT_ROUTER
    routing_by_model: Mapping[str, str] = field(default_factory=dict)
    #: How many batches a backend runs at once per model instance.
    pipeline_depth: int = 1
    #: Batches a batcher may send beyond the backends' free slots when a trigger
    #: fires, so a backend that finishes finds the next one already there. A
    #: batch sent ahead waits in the backend's own FIFO, out of reach of the
    #: gateway's queue order: with tenants sharing a model, the gateway sets 0
    #: so fair share decides every batch (see loadtests/results/reliability.md).
    queue_ahead: int = 1
