"""SendInChat client SDK: generated stubs in sendinchat.v1, a typed async Client, typed errors."""

from sendinchat.client import ChatConnection, Client
from sendinchat.errors import (
    AlreadyExistsError,
    ConflictError,
    FailedPreconditionError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    SendInChatError,
    UnauthenticatedError,
    UnavailableError,
)
from sendinchat.tokens import KeepsRotation, TokenStore

__all__ = [
    "AlreadyExistsError",
    "ChatConnection",
    "Client",
    "ConflictError",
    "FailedPreconditionError",
    "IdempotencyKeyReusedError",
    "InsufficientFundsError",
    "InternalError",
    "InvalidArgumentError",
    "KeepsRotation",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitedError",
    "SendInChatError",
    "TokenStore",
    "UnauthenticatedError",
    "UnavailableError",
]
