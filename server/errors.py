"""Domain errors raised by the service layer; server/status.py maps them to gRPC.

SendInChatError
├── InvalidArgumentError       INVALID_ARGUMENT (+ BadRequest field violations)
├── NotFoundError              NOT_FOUND (also for what the caller may not see)
├── AlreadyExistsError         ALREADY_EXISTS
├── FailedPreconditionError    FAILED_PRECONDITION (+ ErrorInfo reason)
│   ├── InsufficientFundsError       reason INSUFFICIENT_FUNDS
│   └── IdempotencyKeyReusedError    reason IDEMPOTENCY_KEY_REUSED
├── PermissionDeniedError      PERMISSION_DENIED
├── UnauthenticatedError       UNAUTHENTICATED (+ ErrorInfo reason: TOKEN_EXPIRED, SESSION_ENDED, ...)
├── RateLimitedError           RESOURCE_EXHAUSTED (+ RetryInfo)
├── ConflictError              ABORTED (retry with the same request_id)
└── UnavailableError           UNAVAILABLE (database unreachable)
"""

from __future__ import annotations

from collections.abc import Mapping


class SendInChatError(Exception):
    """Base of every error the service layer raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# A request with more wrong fields is told about the first ones: the answer travels in headers,
# which clients cap at 8-16 KB.
MAX_VIOLATIONS = 10
_MAX_FIELD_CHARS = 120


class InvalidArgumentError(SendInChatError):
    """The request is malformed; `violations` maps field names to what is wrong (at most MAX_VIOLATIONS)."""

    def __init__(self, violations: Mapping[str, str]) -> None:
        listed = list(violations.items())
        self.violations = {field[:_MAX_FIELD_CHARS]: why for field, why in listed[:MAX_VIOLATIONS]}
        message = "; ".join(f"{field}: {why}" for field, why in self.violations.items())
        if len(listed) > MAX_VIOLATIONS:
            message += f"; and {len(listed) - MAX_VIOLATIONS} more"
        super().__init__(message)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgumentError:
        """One violation of one field."""
        return cls({field: description})


class NotFoundError(SendInChatError):
    """The thing does not exist, or the caller may not know it exists."""


class AlreadyExistsError(SendInChatError):
    """A unique thing (a username, say) is already taken."""

    def __init__(self, message: str, *, reason: str = "ALREADY_EXISTS") -> None:
        super().__init__(message)
        self.reason = reason


class FailedPreconditionError(SendInChatError):
    """The request is well-formed but the system's state refuses it."""

    def __init__(self, message: str, *, reason: str, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class InsufficientFundsError(FailedPreconditionError):
    """The source account's available balance is below the amount."""

    def __init__(self, message: str = "insufficient funds") -> None:
        super().__init__(message, reason="INSUFFICIENT_FUNDS")


class IdempotencyKeyReusedError(FailedPreconditionError):
    """A request_id was used before with a different request body."""

    def __init__(self, message: str = "request_id was already used for a different request") -> None:
        super().__init__(message, reason="IDEMPOTENCY_KEY_REUSED")


class PermissionDeniedError(SendInChatError):
    """The caller is known but may not do this."""


class UnauthenticatedError(SendInChatError):
    """Credentials are missing, wrong, expired or revoked; `reason` says which, for programs.

    Reasons: TOKEN_MISSING, TOKEN_INVALID, TOKEN_EXPIRED (refresh and retry), SESSION_ENDED (log in
    again), WRONG_CREDENTIALS, REFRESH_TOKEN_REUSED.
    """

    def __init__(self, message: str, *, reason: str = "TOKEN_INVALID") -> None:
        super().__init__(message)
        self.reason = reason


class RateLimitedError(SendInChatError):
    """Too many attempts; retry after `retry_after_seconds`."""

    def __init__(self, message: str, *, retry_after_seconds: float) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class ConflictError(SendInChatError):
    """A concurrent change won; the same request may be retried."""


class UnavailableError(SendInChatError):
    """A dependency (the database) cannot be reached right now."""
