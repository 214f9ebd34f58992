"""Per-model batching and queueing policy, and how it is read from Triton's model config.

The policy is plain frozen data: the queue and the batcher read it, nothing
in it does I/O. Priority follows Triton: levels are 1..``priority_levels``
with 1 the highest; a request priority of 0, or one outside the range, means
``default_priority_level`` (as Triton's ``InferenceRequest::SetPriority`` does).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: What happens to a request whose queue timeout passes before it is batched.
TimeoutAction = Literal["reject", "delay"]
#: Which layer merges a model's requests: the gateway, the backend (Triton's own
#: dynamic batcher), or neither.
BatchLayer = Literal["gateway", "backend", "none"]

#: Per priority level. Triton's default (0) is "unbounded"; ours is finite so
#: that overload sheds with RESOURCE_EXHAUSTED instead of growing memory.
DEFAULT_MAX_QUEUE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """How one priority level's queue behaves (Triton's ``ModelQueuePolicy``).

    ``default_timeout_us`` (0 = none) bounds the time a request may wait in
    the queue. When ``allow_timeout_override`` is true, a request that brings
    its own deadline (the gRPC deadline or the ``timeout`` parameter, already
    folded into ``InferRequest.deadline``) uses that instead of the default.
    On timeout, ``reject`` ends the request with DEADLINE_EXCEEDED; ``delay``
    keeps it queued behind every not-yet-timed-out request of its level. The
    request's own deadline is always enforced: past it, nobody is waiting.
    """

    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    default_timeout_us: int = 0
    timeout_action: TimeoutAction = "reject"
    allow_timeout_override: bool = True

    def __post_init__(self) -> None:
        if self.max_queue_size < 1:
            raise ValueError(f"max_queue_size must be >= 1, got {self.max_queue_size}")
        if self.default_timeout_us < 0:
            raise ValueError(f"default_timeout_us must be >= 0, got {self.default_timeout_us}")
        if self.timeout_action not in ("reject", "delay"):
            raise ValueError(
                f"timeout_action must be 'reject' or 'delay', not {self.timeout_action!r}"
            )


@dataclass(frozen=True, slots=True)
class BatchingPolicy:
    """How the gateway batches one model.

    ``enabled`` false means the gateway does not batch this model: the
    dispatcher sends each request through alone (and Triton's own dynamic
    batcher merges them, if the model has one). A batch is dispatched when it
    is full (``max_batch_size`` rows), reaches a preferred size, its oldest
    member has waited ``max_queue_delay_us``, its earliest deadline would
    otherwise be missed, or a backend is idle (work-conserving).
    ``max_message_bytes`` (0: none), the backends' message limit, caps a
    batch's tensor bytes as well (``batch_bytes_for``): the executor runs a
    larger batch as consecutive sub-batches that each fit.
    """

    enabled: bool = True
    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 0
    priority_levels: int = 1
    default_priority_level: int = 1
    default_queue_policy: QueuePolicy = field(default_factory=QueuePolicy)
    #: Overrides of ``default_queue_policy`` by level.
    level_queue_policies: Mapping[int, QueuePolicy] = field(default_factory=dict)
    max_message_bytes: int = 0

    def __post_init__(self) -> None:
        if self.enabled and self.max_batch_size < 1:
            raise ValueError("batching needs max_batch_size >= 1 (0 means the model cannot batch)")
        bad = [p for p in self.preferred_batch_sizes if not 1 <= p <= self.max_batch_size]
        if bad:
            raise ValueError(
                f"preferred batch sizes {bad} are outside 1..max_batch_size ({self.max_batch_size})"
            )
        if self.max_message_bytes < 0:
            raise ValueError(f"max_message_bytes must be >= 0, got {self.max_message_bytes}")
        if self.max_queue_delay_us < 0:
            raise ValueError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")
        if self.priority_levels < 1:
            raise ValueError(f"priority_levels must be >= 1, got {self.priority_levels}")
        if not 1 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is outside "
                f"1..{self.priority_levels}"
            )
        stray = sorted(set(self.level_queue_policies) - set(range(1, self.priority_levels + 1)))
        if stray:
            raise ValueError(f"queue policies for levels {stray} outside 1..{self.priority_levels}")

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_us / 1e6

    def level_of(self, priority: int) -> int:
        """The queue level of a request priority (0 or out of range: the default level)."""
        if 1 <= priority <= self.priority_levels:
            return priority
        return self.default_priority_level

    def queue_policy(self, level: int) -> QueuePolicy:
        return self.level_queue_policies.get(level, self.default_queue_policy)


#: What a merged request's message holds besides its tensors: names, shapes,
#: datatypes, parameters and field framing, a few hundred bytes in practice.
MESSAGE_ROOM_BYTES = 64 * 1024


def batch_bytes_for(max_message_bytes: int) -> int:
    """The tensor bytes a batch may hold so that its message fits in
    ``max_message_bytes`` (0: no limit, no cap). A tiny limit keeps half for tensors."""
    if max_message_bytes <= 0:
        return 0
    return max(max_message_bytes - MESSAGE_ROOM_BYTES, max_message_bytes // 2)


def _get(config: Mapping[str, Any], snake: str) -> Any:
    """A field by its proto name, or by the lowerCamelCase name protobuf's JSON also uses."""
    if snake in config:
        return config[snake]
    head, *rest = snake.split("_")
    return config.get(head + "".join(part.title() for part in rest))


def _int(value: Any, default: int = 0) -> int:
    # int64 fields arrive as JSON strings ("100"); int32 ones as numbers.
    return default if value is None or value == "" else int(value)


def _queue_policy(raw: Mapping[str, Any] | None) -> QueuePolicy:
    if not raw:
        return QueuePolicy()
    action = str(_get(raw, "timeout_action") or "REJECT").upper()
    # Triton's 0 means "unbounded"; keep the gateway's bound instead.
    size = _int(_get(raw, "max_queue_size")) or DEFAULT_MAX_QUEUE_SIZE
    return QueuePolicy(
        max_queue_size=size,
        default_timeout_us=_int(_get(raw, "default_timeout_microseconds")),
        timeout_action="delay" if action in ("DELAY", "1") else "reject",
        allow_timeout_override=bool(_get(raw, "allow_timeout_override")),
    )


def policy_from_triton_config(
    config: Mapping[str, Any], max_batch_size: int, *, layer: BatchLayer = "gateway"
) -> BatchingPolicy:
    """The batching policy of a model, with defaults read from Triton's model config (JSON).

    ``layer`` says who batches. ``"gateway"`` (default): the gateway merges
    requests using the model's ``dynamic_batching`` settings; a model without
    them is still batched, with no delay (only what arrives while backends are
    busy is merged). ``"backend"``: the gateway passes requests through and
    leaves merging to Triton. ``"none"``: no batching. A model with
    ``max_batch_size`` 0 has no batch dimension and never batches.
    """
    dyn: Mapping[str, Any] = _get(config, "dynamic_batching") or {}
    enabled = layer == "gateway" and max_batch_size > 0
    mbs = max(max_batch_size, 1)
    levels = max(_int(_get(dyn, "priority_levels")), 1)
    default_level = _int(_get(dyn, "default_priority_level")) or 1
    per_level = {
        int(level): _queue_policy(raw)
        for level, raw in (_get(dyn, "priority_queue_policy") or {}).items()
        if 1 <= int(level) <= levels
    }
    return BatchingPolicy(
        enabled=enabled,
        max_batch_size=mbs,
        # Triton rejects a preferred size above max_batch_size; drop it rather than fail.
        preferred_batch_sizes=tuple(
            sorted({p for p in map(int, _get(dyn, "preferred_batch_size") or []) if 1 <= p <= mbs})
        ),
        max_queue_delay_us=_int(_get(dyn, "max_queue_delay_microseconds")),
        priority_levels=levels,
        default_priority_level=min(max(default_level, 1), levels),
        default_queue_policy=_queue_policy(_get(dyn, "default_queue_policy")),
        level_queue_policies=per_level,
    )
