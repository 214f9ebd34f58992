"""One inference request and its result, as the scheduler sees them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.context import Context

from scheduler.spec import ModelSpec, Tensor

#: Request parameters (KServe ``parameters``): bool, int, float or str values.
Parameters = Mapping[str, bool | int | float | str]


@dataclass(slots=True)
class InferRequest:
    """A decoded, validated request. Tensors are numpy arrays, never protobuf:
    for raw contents, views of the received bytes (of a copy made by parsing,
    for messages the codec parses whole; see ``gateway.codec``).

    ``deadline`` is absolute, on the scheduler's monotonic clock, or None for
    no deadline. ``requested_outputs`` empty means "all outputs".
    ``trace_context`` is the OpenTelemetry context the request's scheduler
    spans descend from (the gateway's server span, or the caller's extracted
    context when tracing is off); None means the current context.
    ``served_by`` is set by the scheduler: the backend that ran (or last
    tried) the request's batch; so are ``queued_s``, the time from entering
    the batch queue until its batch was cut (0 for a request the gateway
    does not batch), and ``backend_s``, the time its batch spent in backend
    calls, failed tries included (0 for a stateful model's request, whose
    backend stream is not timed here); both for the access log.

    ``wire`` is the request as the caller encoded it (a KServe v2
    ``ModelInferRequest``), when the front end has it. A backend that speaks
    the protocol forwards it unchanged when the request runs alone, instead of
    encoding ``inputs`` again; ``inputs`` are views into the same bytes.

    ``received_ns`` is when (Unix ns) a tracing front end got the request, 0
    otherwise: the queue span starts there, so decoding is inside a span.

    ``checked`` is the spec the front end already validated the inputs and
    requested outputs against (the scheduler does not check them again when it
    is the model's current spec, the very object).
    """

    model_name: str
    inputs: dict[str, Tensor]
    model_version: str = ""
    requested_outputs: tuple[str, ...] = ()
    parameters: Parameters = field(default_factory=dict)
    id: str = ""
    priority: int = 0
    deadline: float | None = None
    trace_context: Context | None = None
    served_by: str = ""
    queued_s: float = 0.0
    backend_s: float = 0.0
    wire: bytes | None = None
    checked: ModelSpec | None = None
    received_ns: int = 0
    #: The larger of the message it came in and its response's tensor bytes
    #: where the model fixes them (0: not known): a batch whose members' sizes
    #: fit the message limit fits it both ways, with no tensor count.
    size_bytes: int = 0
    #: Who sent it (from the caller's credentials); "" when the gateway has no tenants.
    tenant: str = ""
    #: Its tenant's weight in fair share (``batching.fair_share``).
    share: float = 1.0


#: What a backend call yields for a request: its outputs by name, or, when the
#: request was forwarded in its wire form, the backend's encoded KServe v2
#: ``ModelInferResponse``, to be returned to the caller unchanged.
Outputs = dict[str, Tensor] | bytes


@dataclass(slots=True)
class InferResult:
    """Outputs of one request, in the order the model declares them, or
    ``wire``: the backend's encoded response (then ``outputs`` is empty)."""

    model_name: str
    model_version: str
    outputs: dict[str, Tensor]
    id: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    backend_id: str = ""
    wire: bytes | None = None
