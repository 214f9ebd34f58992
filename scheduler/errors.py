"""The one error family of the gateway and scheduler.

Every way a request can end other than with a result is one of these, and
each carries the name of the gRPC status code it maps to. ``scheduler`` knows
nothing of gRPC, so the code is kept by name; the gateway turns it into a
``grpc.StatusCode`` in exactly one place. Third-party errors (tritonclient,
numpy, the OS) are translated into this family where they are caught, at the
boundary that calls the third party, and raised ``from`` the original.

    GatewayError                      INTERNAL (the base; never raised bare)
    ├── InvalidArgument               INVALID_ARGUMENT  bad tensors, shapes, parameters
    │   └── MessageTooLarge           INVALID_ARGUMENT  over the backends' message limit
    ├── ModelNotFound                 NOT_FOUND         unknown model or version
    ├── Unimplemented                 UNIMPLEMENTED     a feature the gateway does not offer
    ├── Unauthenticated               UNAUTHENTICATED   no valid credentials
    ├── PermissionDenied              PERMISSION_DENIED the identity may not do this
    ├── DeadlineExceeded              DEADLINE_EXCEEDED the deadline passed, or cannot be met
    ├── ResourceExhausted             RESOURCE_EXHAUSTED overload, shed early with a retry hint
    ├── Cancelled                     CANCELLED         the caller went away
    ├── SequenceLost                  ABORTED           a sequence's backend (and its state) is gone
    ├── Unavailable                   UNAVAILABLE       no healthy backend / backend down
    │   └── BackendUnavailable        UNAVAILABLE       one backend is down (retryable elsewhere)
    └── BackendError                  INTERNAL or the backend's own code
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the family: a message a caller can act on, and a status code."""

    code: str = "INTERNAL"
    #: Whether the same work may succeed on another backend.
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(GatewayError):
    code = "INVALID_ARGUMENT"


class MessageTooLarge(InvalidArgument):
    """A request (or its response) over the gRPC message limit of the gateway's
    backend calls: no backend can take it as it is, fewer rows per request can.
    Not the backend's fault and not worth a retry elsewhere; a merged batch
    that meets it is split (its members may each fit)."""


class ModelNotFound(GatewayError):
    code = "NOT_FOUND"


class Unimplemented(GatewayError):
    code = "UNIMPLEMENTED"


class Unauthenticated(GatewayError):
    code = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    code = "PERMISSION_DENIED"


class DeadlineExceeded(GatewayError):
    code = "DEADLINE_EXCEEDED"


class ResourceExhausted(GatewayError):
    """Overload. ``retry_after_ms`` becomes the ``grpc-retry-pushback-ms`` hint."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Cancelled(GatewayError):
    code = "CANCELLED"


class SequenceLost(GatewayError):
    """The backend that holds a live sequence's state died or left: the state
    is gone, and running the next step elsewhere would give wrong results, so
    the caller must start the sequence again (ABORTED: retry at a higher level)."""

    code = "ABORTED"


class Unavailable(GatewayError):
    code = "UNAVAILABLE"


def model_not_ready(model: str, versions: tuple[str, ...], detail: str) -> Unavailable:
    """UNAVAILABLE worded as Triton words it (``'m' version 1 is not at ready
    state``), so clients matching Triton's text match ours; ``detail`` follows.
    The version named is the newest one, the one a request without a version gets."""
    version = max(versions, key=lambda v: (len(v), v)) if versions else "1"
    return Unavailable(f"'{model}' version {version} is not at ready state: {detail}")


class BackendUnavailable(Unavailable):
    """One backend could not be reached; another backend may serve the work."""

    retryable = True

    def __init__(self, message: str, *, backend_id: str) -> None:
        super().__init__(message)
        self.backend_id = backend_id


class BackendError(GatewayError):
    """A backend failed the work. The code is the backend's own when it gave one."""

    def __init__(
        self, message: str, *, backend_id: str, code: str = "INTERNAL", retryable: bool = False
    ) -> None:
        super().__init__(message)
        self.backend_id = backend_id
        self.code = code
        self.retryable = retryable
