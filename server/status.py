"""The one table from domain errors to gRPC status codes with google.rpc details."""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from server import errors

ERROR_DOMAIN = "sendinchat.v1"

_CODES: tuple[tuple[type[errors.SendInChatError], grpc.StatusCode], ...] = (
    (errors.InvalidArgumentError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFoundError, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExistsError, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPreconditionError, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED),
    (errors.UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED),
    (errors.RateLimitedError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ConflictError, grpc.StatusCode.ABORTED),
    (errors.UnavailableError, grpc.StatusCode.UNAVAILABLE),
)


def code_of(error: errors.SendInChatError) -> grpc.StatusCode:
    """The gRPC code for a domain error."""
    for error_type, code in _CODES:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]  # every detail here is a protobuf Message
    return packed


def _details(error: errors.SendInChatError) -> list[any_pb2.Any]:
    if isinstance(error, errors.InvalidArgumentError):
        violations = [
            error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
            for field, why in error.violations.items()
        ]
        return [_pack(error_details_pb2.BadRequest(field_violations=violations))]
    if isinstance(
        error, errors.FailedPreconditionError | errors.AlreadyExistsError | errors.UnauthenticatedError
    ):
        metadata = error.metadata if isinstance(error, errors.FailedPreconditionError) else {}
        return [
            _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata))
        ]
    if isinstance(error, errors.RateLimitedError):
        seconds = max(0.0, error.retry_after_seconds)
        whole = math.floor(seconds)
        delay = duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))
        return [_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
    return []


def to_status(error: errors.SendInChatError) -> grpc.Status:
    """A grpc.Status carrying the code, message and google.rpc details of a domain error."""
    code = code_of(error)
    proto = status_pb2.Status(code=code.value[0], message=error.message, details=_details(error))
    return rpc_status.to_status(proto)


def internal_status(correlation_id: str) -> grpc.Status:
    """The status sent for anything unexpected: no trace, no SQL, just an id to find the log line."""
    proto = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (correlation id {correlation_id})"
    )
    return rpc_status.to_status(proto)
