"""The outcome words of the ledger's and chat's PL/pgSQL functions, turned into domain errors in one table.

The functions (server/db/functions/) decide each request with checks, not exceptions, and report a
word; this is the only place that knows what each word means to a client.
"""

from __future__ import annotations

from collections.abc import Callable

from server.errors import (
    FailedPreconditionError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    SendInChatError,
)

SUCCESS = frozenset({"CREATED", "REPLAYED", "DONE"})


def _closed(state: str) -> SendInChatError:
    return FailedPreconditionError(
        f"the payment request is {state}", reason="PAYMENT_REQUEST_CLOSED", metadata={"state": state}
    )


def _not_pending(state: str) -> SendInChatError:
    return FailedPreconditionError(
        f"the transfer is {state}, not pending", reason="TRANSFER_NOT_PENDING", metadata={"state": state}
    )


# outcome -> the error, given the state the outcome names (if any) and the field naming the other party.
_ERRORS: dict[str, Callable[[str, str], SendInChatError]] = {
    "INSUFFICIENT_FUNDS": lambda _s, _f: InsufficientFundsError("the available balance is below the amount"),
    "IDEMPOTENCY_KEY_REUSED": lambda _s, _f: IdempotencyKeyReusedError(),
    "ISSUANCE_LIMIT": lambda _s, _f: FailedPreconditionError(
        "the currency's money in circulation would pass 2^63 - 1 minor units", reason="ISSUANCE_LIMIT_REACHED"
    ),
    "RECIPIENT_NOT_FOUND": lambda _s, _f: NotFoundError("recipient not found"),
    "SOURCE_NOT_FOUND": lambda _s, _f: NotFoundError("user not found"),
    "SELF_TRANSFER": lambda _s, field: InvalidArgumentError.field(field, "must not be the caller"),
    "NOT_FOUND": lambda _s, _f: NotFoundError("transfer not found"),
    "PERMISSION_DENIED": lambda _s, _f: PermissionDeniedError("only the sender may post a pending transfer"),
    "TRANSFER_EXPIRED": lambda _s, _f: FailedPreconditionError(
        "the pending transfer has expired", reason="TRANSFER_EXPIRED"
    ),
    "TRANSFER_NOT_PENDING": lambda state, _f: _not_pending(state),
    "AMOUNT_TOO_LARGE": lambda _s, _f: InvalidArgumentError.field(
        "amount_minor", "must not exceed the reserved amount"
    ),
    "EXPIRY_PASSED": lambda _s, _f: InvalidArgumentError.field("expire_time", "must be in the future"),
    "ROOM_NOT_FOUND": lambda _s, _f: NotFoundError("room not found"),
    "MEMBER_NOT_FOUND": lambda _s, _f: NotFoundError("that user is not a member of the room"),
    "REQUEST_NOT_FOUND": lambda _s, _f: NotFoundError("payment request not found"),
    "WRONG_PARTY": lambda _s, _f: PermissionDeniedError(
        "only the payer may accept or decline, and only the requester may cancel"
    ),
    "PAYMENT_REQUEST_EXPIRED": lambda _s, _f: FailedPreconditionError(
        "the payment request has expired", reason="PAYMENT_REQUEST_EXPIRED"
    ),
    "PAYMENT_REQUEST_CLOSED": lambda state, _f: _closed(state),
}


def raise_for(outcome: str, *, state: str | None = None, other_party_field: str = "to_user_id") -> None:
    """Return for a success word; raise the domain error any other word stands for."""
    if outcome in SUCCESS:
        return
    make = _ERRORS.get(outcome)
    if make is None:
        raise RuntimeError(f"unknown outcome {outcome!r} from the database")
    raise make(state or "", other_party_field)
