"""Typed exceptions for the SDK: a gRPC status and its google.rpc details, as the server sent them.

SendInChatError
├── InvalidArgumentError       INVALID_ARGUMENT (.field_violations)
├── NotFoundError              NOT_FOUND
├── AlreadyExistsError         ALREADY_EXISTS (.reason)
├── FailedPreconditionError    FAILED_PRECONDITION (.reason)
│   ├── InsufficientFundsError       reason INSUFFICIENT_FUNDS
│   └── IdempotencyKeyReusedError    reason IDEMPOTENCY_KEY_REUSED
├── PermissionDeniedError      PERMISSION_DENIED
├── UnauthenticatedError       UNAUTHENTICATED (.reason: TOKEN_EXPIRED, SESSION_ENDED, ...)
├── RateLimitedError           RESOURCE_EXHAUSTED (.retry_after_seconds)
├── ConflictError              ABORTED: retry with the same request_id
├── UnavailableError           UNAVAILABLE: retry with the same request_id
└── InternalError              INTERNAL and anything else
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

# The reason of the client's own UnauthenticatedError when an access token given alone (no
# refresh token) has expired: nothing can renew it, log in again.
REFRESH_TOKEN_MISSING = "REFRESH_TOKEN_MISSING"

__all__ = [
    "REFRESH_TOKEN_MISSING",
    "AlreadyExistsError",
    "ConflictError",
    "FailedPreconditionError",
    "IdempotencyKeyReusedError",
    "InsufficientFundsError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SendInChatError",
    "UnauthenticatedError",
    "UnavailableError",
    "from_rpc_error",
]


class SendInChatError(Exception):
    """A failed call: its gRPC code, the server's message, and the details it attached."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        field_violations: dict[str, str] | None = None,
        retry_after_seconds: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.field_violations = field_violations or {}
        self.retry_after_seconds = retry_after_seconds


class InvalidArgumentError(SendInChatError):
    """The request was malformed; see field_violations."""


class NotFoundError(SendInChatError):
    """No such thing, or not visible to the caller."""


class AlreadyExistsError(SendInChatError):
    """A unique thing is taken."""


class FailedPreconditionError(SendInChatError):
    """The state of the system refuses the request; see reason."""


class InsufficientFundsError(FailedPreconditionError):
    """Not enough available balance."""


class IdempotencyKeyReusedError(FailedPreconditionError):
    """The request_id was used before for a different request."""


class PermissionDeniedError(SendInChatError):
    """The caller may not do this."""


class UnauthenticatedError(SendInChatError):
    """Missing, expired or revoked credentials."""


class RateLimitedError(SendInChatError):
    """Too many requests (or a slow chat consumer); wait retry_after_seconds."""


class ConflictError(SendInChatError):
    """A concurrent change won; retrying with the same request_id is safe."""


class UnavailableError(SendInChatError):
    """The server or its database is unavailable; retrying with the same request_id is safe."""


class InternalError(SendInChatError):
    """A server bug; the message has a correlation id for its log."""


_BY_CODE: dict[grpc.StatusCode, type[SendInChatError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitedError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}
_BY_REASON: dict[str, type[SendInChatError]] = {
    "INSUFFICIENT_FUNDS": InsufficientFundsError,
    "IDEMPOTENCY_KEY_REUSED": IdempotencyKeyReusedError,
}


def from_rpc_error(error: grpc.aio.AioRpcError) -> SendInChatError:
    """The typed exception for a failed call, with its details unpacked."""
    code = error.code()
    reason = ""
    violations: dict[str, str] = {}
    retry_after: float | None = None
    status = rpc_status.from_call(error)  # type: ignore[arg-type]  # AioRpcError offers the Call accessors
    for detail in [] if status is None else status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = {v.field: v.description for v in bad.field_violations}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    error_type = _BY_REASON.get(reason) or _BY_CODE.get(code, InternalError)
    return error_type(
        code,
        error.details() or "",
        reason=reason,
        field_violations=violations,
        retry_after_seconds=retry_after,
    )
