"""Payments in chat: a ledger transfer and the message that shows it, committed together.

Each operation is one PL/pgSQL call (migration 0003) inside one transaction: it locks the room,
checks membership and the request_id, calls the ledger's `ledger_create_transfers` for the money
and appends the message with chat_append. A failure outcome writes nothing (except an expired
request, which is closed as EXPIRED and that change kept), so insufficient funds leave no message.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import asyncpg

from server.chat.messages import attach_transfers, transfers_by_id
from server.chat.models import MESSAGE_COLUMNS, Message
from server.chat.validation import parse_uuid
from server.db.pool import Connection
from server.errors import (
    FailedPreconditionError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from server.ledger.currencies import check_currency
from server.ledger.models import Transfer
from server.ledger.service import MAX_AMOUNT, MAX_MEMO_CHARS

_SEND_PAYMENT = "SELECT * FROM chat_send_payment($1, $2, $3, $4, $5, $6, $7)"
_REQUEST_PAYMENT = "SELECT * FROM chat_request_payment($1, $2, $3, $4, $5, $6, $7, $8)"
_RESPOND = "SELECT * FROM chat_respond_payment_request($1, $2, $3, $4)"
_EXPIRE_DUE = "SELECT chat_expire_payment_requests()"
log = logging.getLogger(__name__)
_MESSAGE = f"""
SELECT {MESSAGE_COLUMNS}
FROM messages m LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
WHERE m.room_id = $1 AND m.sequence = $2
"""


class RequestAction(StrEnum):
    """What RespondToPaymentRequest does."""

    ACCEPT = "accept"
    DECLINE = "decline"
    CANCEL = "cancel"


@dataclass(frozen=True, slots=True)
class PaymentResult:
    """The message a payment operation posted (or first posted, on a retry) and its transfer."""

    message: Message
    transfer: Transfer | None


class _Checks:
    def __init__(self) -> None:
        self.violations: dict[str, str] = {}

    def uuid(self, raw: str, field: str) -> str:
        try:
            return parse_uuid(raw, field)
        except InvalidArgumentError as exc:
            self.violations.update(exc.violations)
            return ""

    def money(self, currency: str, amount: int, note: str) -> None:
        try:
            check_currency(currency)
        except InvalidArgumentError as exc:
            self.violations.update(exc.violations)
        if not 1 <= amount <= MAX_AMOUNT:
            self.violations["amount_minor"] = f"must be between 1 and {MAX_AMOUNT} minor units"
        if len(note) > MAX_MEMO_CHARS or "\x00" in note:
            self.violations["memo"] = f"must be at most {MAX_MEMO_CHARS} characters, without NUL"

    def done(self) -> None:
        if self.violations:
            raise InvalidArgumentError(self.violations)


def _raise_for(outcome: str, state: str | None = None) -> None:
    if outcome in ("CREATED", "REPLAYED"):
        return
    if outcome == "ROOM_NOT_FOUND":
        raise NotFoundError("room not found")
    if outcome in ("MEMBER_NOT_FOUND", "RECIPIENT_NOT_FOUND"):
        raise NotFoundError("that user is not a member of the room")
    if outcome == "REQUEST_NOT_FOUND":
        raise NotFoundError("payment request not found")
    if outcome == "INSUFFICIENT_FUNDS":
        raise InsufficientFundsError("the available balance is below the amount")
    if outcome == "IDEMPOTENCY_KEY_REUSED":
        raise IdempotencyKeyReusedError()
    if outcome == "WRONG_PARTY":
        raise PermissionDeniedError("only the payer may accept or decline, and only the requester may cancel")
    if outcome == "PAYMENT_REQUEST_EXPIRED":
        raise FailedPreconditionError("the payment request has expired", reason="PAYMENT_REQUEST_EXPIRED")
    if outcome == "PAYMENT_REQUEST_CLOSED":
        raise FailedPreconditionError(
            f"the payment request is {state}",
            reason="PAYMENT_REQUEST_CLOSED",
            metadata={"state": state or ""},
        )
    if outcome == "SELF_TRANSFER":
        raise InvalidArgumentError.field("to_user_id", "must not be the caller")
    raise RuntimeError(f"unknown chat payment outcome {outcome!r}")


async def _run(pool: asyncpg.Pool, sql: str, *args: object) -> PaymentResult:
    async with pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(sql, *args)
            assert row is not None
            outcome = str(row["outcome"])
            if outcome in ("CREATED", "REPLAYED"):
                return await _result(conn, row["room_id"], row["sequence"])
        # Raised after the commit: an expired request's EXPIRED state must be kept.
        _raise_for(outcome, None if row.get("state") is None else str(row["state"]))
    raise AssertionError("unreachable: _raise_for raises for every other outcome")


async def _result(conn: Connection, room_id: object, sequence: object) -> PaymentResult:
    row = await conn.fetchrow(_MESSAGE, room_id, sequence)
    assert row is not None
    message = (await attach_transfers(conn, [Message.from_record(row)]))[0]
    transfer = message.transfer
    request = message.payment_request
    if transfer is None and request is not None and request.transfer_id:
        transfer = (await transfers_by_id(conn, [request.transfer_id])).get(request.transfer_id)
    return PaymentResult(message, transfer)


async def send_payment(
    pool: asyncpg.Pool,
    *,
    user_id: str,
    request_id: str,
    room_id: str,
    recipient_id: str,
    currency: str,
    amount: int,
    note: str,
) -> PaymentResult:
    """Pay a member of a room: the transfer and its PAYMENT message commit together or not at all.

    A retry with the same request_id and body returns the first message and moves no money twice.

    Raises:
        InvalidArgumentError: a malformed field, or the caller as recipient.
        NotFoundError: the room (for the caller), or the recipient is not a member.
        InsufficientFundsError: the caller's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    checks = _Checks()
    rid = checks.uuid(request_id, "request_id")
    room = checks.uuid(room_id, "room_id")
    recipient = checks.uuid(recipient_id, "to_user_id")
    if recipient and recipient == user_id:
        checks.violations["to_user_id"] = "must not be the caller"
    checks.money(currency, amount, note)
    checks.done()
    return await _run(pool, _SEND_PAYMENT, room, user_id, rid, recipient, currency, amount, note)


async def request_payment(
    pool: asyncpg.Pool,
    *,
    user_id: str,
    request_id: str,
    room_id: str,
    payer_id: str,
    currency: str,
    amount: int,
    note: str,
    expire_at: datetime | None,
) -> PaymentResult:
    """Ask a member of a room for money with a PAYMENT_REQUEST message (state OPEN).

    Raises:
        InvalidArgumentError: a malformed field, an expiry in the past, or the caller as payer.
        NotFoundError: the room (for the caller), or the payer is not a member.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    checks = _Checks()
    rid = checks.uuid(request_id, "request_id")
    room = checks.uuid(room_id, "room_id")
    payer = checks.uuid(payer_id, "from_user_id")
    if payer and payer == user_id:
        checks.violations["from_user_id"] = "must not be the caller"
    checks.money(currency, amount, note)
    if expire_at is not None and expire_at <= datetime.now(UTC):
        checks.violations["expire_time"] = "must be in the future"
    checks.done()
    return await _run(pool, _REQUEST_PAYMENT, room, user_id, rid, payer, currency, amount, note, expire_at)


async def respond_to_payment_request(
    pool: asyncpg.Pool,
    *,
    user_id: str,
    request_id: str,
    payment_request_id: str,
    action: RequestAction | None,
) -> PaymentResult:
    """Accept (the payer pays, atomically with the state change), decline, or cancel a request.

    Raises:
        InvalidArgumentError: malformed ids or no action.
        NotFoundError: no such request in a room of the caller's.
        PermissionDeniedError: the caller is not the party the action needs.
        FailedPreconditionError: reason PAYMENT_REQUEST_CLOSED or PAYMENT_REQUEST_EXPIRED.
        InsufficientFundsError: accepting, and the payer's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    checks = _Checks()
    rid = checks.uuid(request_id, "request_id")
    pr = checks.uuid(payment_request_id, "payment_request_id")
    if action is None:
        checks.violations["action"] = "must be ACCEPT, DECLINE or CANCEL"
    checks.done()
    assert action is not None
    return await _run(pool, _RESPOND, user_id, rid, pr, action.value)


async def expire_due_requests(pool: asyncpg.Pool) -> int:
    """Close open payment requests past their expiry (with an EXPIRED message); how many."""
    closed: int = await pool.fetchval(_EXPIRE_DUE)
    return closed


async def sweep_expired_requests(pool: asyncpg.Pool, *, interval_seconds: float = 5.0) -> None:
    """Run expire_due_requests every `interval_seconds` until cancelled (acting on one checks too)."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            while await expire_due_requests(pool) > 0:
                pass
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            log.warning("could not expire payment requests; will retry", exc_info=True)
