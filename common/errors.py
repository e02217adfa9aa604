"""Domain errors and their one mapping to gRPC status codes.

Every failure a user can cause or meet has its own exception class carrying a
gRPC status code, a machine-readable ``reason`` (UPPER_SNAKE_CASE, the
``google.rpc.ErrorInfo.reason`` on the wire) and a sentence a person
understands. Servers turn them into a status with ``ErrorInfo`` details
(see :mod:`common.rpc`); clients turn the status back into the same class
with :func:`from_rpc_error`, so a caller can ``except ConsentRevoked``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import grpc

DOMAIN = "fedcredit.v1"

# reason -> most specific class registered for it
_REGISTRY: dict[str, type[FedcreditError]] = {}
# status code -> generic base class
_BY_CODE: dict[grpc.StatusCode, type[FedcreditError]] = {}


class FedcreditError(Exception):
    """Base of every fedcredit error. Subclass it once per failure reason."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    reason: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None, **metadata: Any) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            # An instance-level reason overrides the class default (used when a
            # client meets a reason whose class it does not know).
            self.reason = reason  # type: ignore[misc]
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        reason = cls.__dict__.get("reason")
        if reason is not None:
            _REGISTRY[reason] = cls

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code.name,
            "reason": self.reason,
            "message": self.message,
            "metadata": dict(self.metadata),
        }


class InvalidArgument(FedcreditError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"


class Unauthenticated(FedcreditError):
    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(FedcreditError):
    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class NotFound(FedcreditError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class AlreadyExists(FedcreditError):
    code = grpc.StatusCode.ALREADY_EXISTS
    reason = "ALREADY_EXISTS"


class FailedPrecondition(FedcreditError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    reason = "FAILED_PRECONDITION"


class ResourceExhausted(FedcreditError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(FedcreditError):
    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(FedcreditError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class Internal(FedcreditError):
    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


for _cls in (
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    ResourceExhausted,
    Unavailable,
    DeadlineExceeded,
    Internal,
):
    _BY_CODE[_cls.code] = _cls


# Errors shared by several services live here; service-specific ones live in
# their service's package.
class ConfigError(InvalidArgument):
    """A deployment file is missing, unreadable or has a bad value."""

    reason = "CONFIG_INVALID"


class BatchTooLarge(InvalidArgument):
    reason = "BATCH_TOO_LARGE"


class RoleNotAllowed(PermissionDenied):
    reason = "ROLE_NOT_ALLOWED"


class StoreUnavailable(Unavailable):
    """The service's database does not answer."""

    reason = "STORE_UNAVAILABLE"


class UpstreamUnavailable(Unavailable):
    """Another fedcredit service this one depends on does not answer."""

    reason = "UPSTREAM_UNAVAILABLE"


def error_class_for(reason: str, code: grpc.StatusCode) -> type[FedcreditError]:
    """The class registered for ``reason``, else the generic class of ``code``."""
    cls = _REGISTRY.get(reason)
    if cls is not None and cls.code == code:
        return cls
    return _BY_CODE.get(code, Internal)


def from_rpc_error(err: grpc.RpcError) -> FedcreditError:
    """Rebuild the typed error a server raised, from the status it sent.

    Reads ``google.rpc.Status`` details (``grpc-status-details-bin``); a status
    without ``ErrorInfo`` (e.g. a transport failure) becomes the generic class
    of its code with reason equal to the code's name.
    """
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    message = (err.details() if hasattr(err, "details") else None) or str(err)
    reason = code.name if code is not None else "UNKNOWN"
    metadata: dict[str, str] = {}
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError):
        status = None
    if status is not None:
        message = status.message
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
                metadata = dict(info.metadata)
                break
    if code is None:
        code = grpc.StatusCode.UNKNOWN
    cls = error_class_for(reason, code)
    exc: FedcreditError
    if cls.code != code:  # unknown status code (e.g. UNKNOWN, CANCELLED)
        exc = Internal(message, reason=reason, **metadata)
    else:
        exc = cls(message, reason=reason, **metadata)
    return exc
