from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Device(_message.Message):
    __slots__ = ("id", "kind", "source", "host", "name", "memory_total_bytes", "memory_used_bytes", "memory_free_bytes", "utilization", "telemetry_age_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: str
    source: str
    host: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int
    memory_free_bytes: int
    utilization: float
    telemetry_age_seconds: float
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., host: _Optional[str] = ..., name: _Optional[str] = ..., memory_total_bytes: _Optional[int] = ..., memory_used_bytes: _Optional[int] = ..., memory_free_bytes: _Optional[int] = ..., utilization: _Optional[float] = ..., telemetry_age_seconds: _Optional[float] = ...) -> None: ...

class ListDevicesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDevicesResponse(_message.Message):
    __slots__ = ("devices",)
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class ServiceTime(_message.Message):
    __slots__ = ("model", "batch_bucket", "seconds")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_BUCKET_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_bucket: int
    seconds: float
    def __init__(self, model: _Optional[str] = ..., batch_bucket: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class Backend(_message.Message):
    __slots__ = ("id", "tier", "endpoint", "models", "usable", "drained", "breaker_state", "last_error", "in_flight", "service_times", "worker", "origin")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    USABLE_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    BREAKER_STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    SERVICE_TIMES_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    tier: str
    endpoint: str
    models: _containers.RepeatedScalarFieldContainer[str]
    usable: bool
    drained: bool
    breaker_state: str
    last_error: str
    in_flight: int
    service_times: _containers.RepeatedCompositeFieldContainer[ServiceTime]
    worker: int
    origin: str
    def __init__(self, id: _Optional[str] = ..., tier: _Optional[str] = ..., endpoint: _Optional[str] = ..., models: _Optional[_Iterable[str]] = ..., usable: _Optional[bool] = ..., drained: _Optional[bool] = ..., breaker_state: _Optional[str] = ..., last_error: _Optional[str] = ..., in_flight: _Optional[int] = ..., service_times: _Optional[_Iterable[_Union[ServiceTime, _Mapping]]] = ..., worker: _Optional[int] = ..., origin: _Optional[str] = ...) -> None: ...

class ListBackendsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListBackendsResponse(_message.Message):
    __slots__ = ("backends",)
    BACKENDS_FIELD_NUMBER: _ClassVar[int]
    backends: _containers.RepeatedCompositeFieldContainer[Backend]
    def __init__(self, backends: _Optional[_Iterable[_Union[Backend, _Mapping]]] = ...) -> None: ...

class Queue(_message.Message):
    __slots__ = ("model", "priority", "depth", "batches_in_flight", "worker")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    BATCHES_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    model: str
    priority: int
    depth: int
    batches_in_flight: int
    worker: int
    def __init__(self, model: _Optional[str] = ..., priority: _Optional[int] = ..., depth: _Optional[int] = ..., batches_in_flight: _Optional[int] = ..., worker: _Optional[int] = ...) -> None: ...

class ListQueuesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQueuesResponse(_message.Message):
    __slots__ = ("queues",)
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    queues: _containers.RepeatedCompositeFieldContainer[Queue]
    def __init__(self, queues: _Optional[_Iterable[_Union[Queue, _Mapping]]] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("model", "batch_size", "verdict", "backend_id", "predicted_seconds", "runner_up", "runner_up_seconds", "reason", "telemetry_age_seconds", "age_seconds", "trace_id", "worker")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RUNNER_UP_FIELD_NUMBER: _ClassVar[int]
    RUNNER_UP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    AGE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    model: str
    batch_size: int
    verdict: str
    backend_id: str
    predicted_seconds: float
    runner_up: str
    runner_up_seconds: float
    reason: str
    telemetry_age_seconds: float
    age_seconds: float
    trace_id: str
    worker: int
    def __init__(self, model: _Optional[str] = ..., batch_size: _Optional[int] = ..., verdict: _Optional[str] = ..., backend_id: _Optional[str] = ..., predicted_seconds: _Optional[float] = ..., runner_up: _Optional[str] = ..., runner_up_seconds: _Optional[float] = ..., reason: _Optional[str] = ..., telemetry_age_seconds: _Optional[float] = ..., age_seconds: _Optional[float] = ..., trace_id: _Optional[str] = ..., worker: _Optional[int] = ...) -> None: ...

class ListDecisionsRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class ListDecisionsResponse(_message.Message):
    __slots__ = ("decisions",)
    DECISIONS_FIELD_NUMBER: _ClassVar[int]
    decisions: _containers.RepeatedCompositeFieldContainer[Decision]
    def __init__(self, decisions: _Optional[_Iterable[_Union[Decision, _Mapping]]] = ...) -> None: ...

class DrainBackendRequest(_message.Message):
    __slots__ = ("backend_id",)
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    def __init__(self, backend_id: _Optional[str] = ...) -> None: ...

class DrainBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ...) -> None: ...

class UndrainBackendRequest(_message.Message):
    __slots__ = ("backend_id",)
    BACKEND_ID_FIELD_NUMBER: _ClassVar[int]
    backend_id: str
    def __init__(self, backend_id: _Optional[str] = ...) -> None: ...

class UndrainBackendResponse(_message.Message):
    __slots__ = ("backend",)
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    backend: Backend
    def __init__(self, backend: _Optional[_Union[Backend, _Mapping]] = ...) -> None: ...
