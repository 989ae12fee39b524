"""The one place that classifies database errors: unavailable, a retryable conflict, or the client's fault.

Everything that meets an asyncpg error asks here (the interceptor, the batcher, background jobs,
the listeners) instead of keeping its own tuple of classes. Classes are asyncpg's public ones,
grouped by SQLSTATE class where PostgreSQL groups them.
"""

from __future__ import annotations

import asyncpg
from asyncpg import exceptions as pg

from server.errors import ConflictError, InvalidArgumentError, SendInChatError, UnavailableError

# The database (or the connection to it) is not there now; the same request may succeed later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,
    pg.PostgresConnectionError,  # class 08
    pg.InsufficientResourcesError,  # class 53: too many connections, disk full, out of memory
    pg.OperatorInterventionError,  # class 57: shutdown, crash, cannot connect now, statement timeout
    pg.ReadOnlySQLTransactionError,  # 25006: connected to a standby (a failover is under way)
    pg.IdleInTransactionSessionTimeoutError,  # 25P03: the server ended the session (rolled back)
    pg.TransactionTimeoutError,  # 25P04: the same, for transaction_timeout
    pg.InterfaceError,  # the connection closed or is in an unusable state
    pg.InternalClientError,  # "cannot switch to state ...": a connection a failed call left broken
    UnavailableError,
)
# A concurrent transaction won; retrying the same request (same request_id) is safe.
_CONFLICT: tuple[type[BaseException], ...] = (
    pg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    pg.LockNotAvailableError,  # 55P03: lock_timeout
)
# What the database refuses in a value (class 22, an index row too large): the boundary
# (server/validation.py, server/boundary.py) should have refused it first.
_CLIENT_FAULT: tuple[type[BaseException], ...] = (
    pg.DataError,
    pg.ProgramLimitExceededError,
)


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached or used right now (UNAVAILABLE: retry later)."""
    if _is_encoding_error(exc):
        return False
    return isinstance(exc, _UNAVAILABLE)


def is_conflict(exc: BaseException) -> bool:
    """A concurrent change won (ABORTED: retry with the same request_id)."""
    return isinstance(exc, _CONFLICT)


def is_transient(exc: BaseException) -> bool:
    """Retrying the same statement later can succeed (for background work)."""
    return is_unavailable(exc) or is_conflict(exc)


def is_connect_failure(exc: BaseException) -> bool:
    """A connection could not be opened now, and a later attempt may succeed (retry with backoff).

    The database is unavailable (refused, reset, timed out; or no host of a multi-host URL accepts
    writes yet, in a failover), or the server refused this attempt (not accepting connections,
    too many clients, the database not there yet). Credentials the server refuses (SQLSTATE class
    28) are a configuration error no retry mends.
    """
    if isinstance(exc, pg.InvalidAuthorizationSpecificationError):
        return False
    return is_unavailable(exc) or isinstance(exc, asyncpg.PostgresError)


def is_client_fault(exc: BaseException) -> bool:
    """The database refused a value of the request (a gap in the boundary's checks)."""
    return isinstance(exc, _CLIENT_FAULT) or _is_encoding_error(exc)


def translate(exc: BaseException) -> SendInChatError | None:
    """The domain error a database error stands for, or None when it is a server fault."""
    if isinstance(exc, SendInChatError):
        return exc
    if is_conflict(exc):
        return ConflictError(
            "the request conflicted with a concurrent one; retry it with the same request_id"
        )
    if is_client_fault(exc):
        return InvalidArgumentError.field("request", "holds a value the database cannot store")
    if is_unavailable(exc):
        return UnavailableError("the database is unavailable; retry later")
    return None


def _is_encoding_error(exc: BaseException) -> bool:
    # asyncpg's client-side DataError (an argument it cannot encode) is an InterfaceError and a ValueError.
    return isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
