"""Payments in chat: a ledger transfer and the message that shows it, committed together.

Each operation is one PL/pgSQL call (server/db/functions/chat_payments.sql) inside one
transaction: it locks the request key and the room, checks membership and the request_id, calls the
ledger's `ledger_create_transfers` for the money and appends the message with chat_append. A refusal
writes nothing but itself (and an expired request, closed as EXPIRED), so insufficient funds leave
no message, and a retry of a refused request gets the same refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from server import outcomes
from server.chat import events
from server.chat.bus import Publisher
from server.chat.messages import attach_transfers, transfers_by_id
from server.chat.models import MESSAGE_COLUMNS, Message
from server.db.pool import Connection
from server.ledger import rules
from server.ledger.models import Transfer
from server.validation import Fields

_SEND_PAYMENT = "SELECT * FROM chat_send_payment($1, $2, $3, $4, $5, $6, $7)"
_REQUEST_PAYMENT = "SELECT * FROM chat_request_payment($1, $2, $3, $4, $5, $6, $7, $8)"
_RESPOND = "SELECT * FROM chat_respond_payment_request($1, $2, $3, $4)"
_EXPIRE_DUE = "SELECT room_id, sequence FROM chat_expire_due_payment_requests()"
_ROOM_OF_REQUEST = "SELECT room_id FROM payment_requests WHERE id = $1"
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


async def _run(
    pool: asyncpg.Pool, sql: str, *args: object, other_party_field: str, bus: Publisher
) -> PaymentResult:
    async with pool.acquire() as conn:
        # The function is the whole transaction (its locks go at its commit); what it wrote is read
        # after. The message (also an expired request's EXPIRED one) then goes on the bus, and a
        # refusal is raised only now, since it (and that EXPIRED state) is kept.
        row = await conn.fetchrow(sql, *args)
        assert row is not None
        outcome = str(row["outcome"])
        result = None
        if outcome in outcomes.SUCCESS:
            result = await _result(conn, row["room_id"], row["sequence"])
    if row["sequence"] is not None:
        await bus.publish(events.MessageStored(str(row["room_id"]), int(row["sequence"])))
    if result is not None:
        return result
    outcomes.raise_for(outcome, state=row.get("state"), other_party_field=other_party_field)
    raise AssertionError("unreachable: raise_for raises for every other outcome")


def _arguments(
    fields: Fields, *, user_id: str, room_id: str, money: rules.Money, party: str
) -> tuple[object, ...]:
    """The room, the caller and the checked money, as the chat payment functions take them."""
    room = fields.uuid("room_id", room_id)
    checked = rules.money(fields, money, party_prefix=party)
    if checked.user_id == user_id:
        fields.add(f"{party}_user_id", "must not be the caller")
    return room, user_id, checked.request_id, checked.user_id, checked.currency, checked.amount, checked.memo


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
    pool: asyncpg.Pool, *, user_id: str, room_id: str, money: rules.Money, bus: Publisher
) -> PaymentResult:
    """Pay a member of a room (money.user_id): the transfer and its PAYMENT message commit together.

    A retry with the same request_id and body returns the first message and moves no money twice;
    a retry of a refused request gets the same refusal.

    Raises:
        InvalidArgumentError: a malformed field, or the caller as recipient.
        NotFoundError: the room (for the caller), or the recipient is not a member.
        InsufficientFundsError: the caller's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    fields = Fields()
    arguments = _arguments(fields, user_id=user_id, room_id=room_id, money=money, party="to")
    fields.done()
    return await _run(pool, _SEND_PAYMENT, *arguments, other_party_field="to_user_id", bus=bus)


async def request_payment(
    pool: asyncpg.Pool,
    *,
    user_id: str,
    room_id: str,
    money: rules.Money,
    expire_at: datetime | None,
    bus: Publisher,
) -> PaymentResult:
    """Ask a member of a room (money.user_id) for money with a PAYMENT_REQUEST message (state OPEN).

    Raises:
        InvalidArgumentError: a malformed field, an expiry not within 365 days ahead, or the caller
            as payer.
        NotFoundError: the room (for the caller), or the payer is not a member.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    fields = Fields()
    arguments = _arguments(fields, user_id=user_id, room_id=room_id, money=money, party="from")
    expiry = fields.expiry("expire_time", expire_at)
    fields.done()
    return await _run(pool, _REQUEST_PAYMENT, *arguments, expiry, other_party_field="from_user_id", bus=bus)


async def respond_to_payment_request(
    pool: asyncpg.Pool,
    *,
    user_id: str,
    request_id: str,
    payment_request_id: str,
    action: RequestAction | None,
    bus: Publisher,
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
    fields = Fields()
    rid = fields.uuid("request_id", request_id)
    pr = fields.uuid("payment_request_id", payment_request_id)
    if action is None:
        fields.add("action", "must be ACCEPT, DECLINE or CANCEL")
    fields.done()
    assert action is not None
    return await _run(
        pool, _RESPOND, user_id, rid, pr, action.value, other_party_field="from_user_id", bus=bus
    )


async def room_of_request(pool: asyncpg.Pool, payment_request_id: str) -> str | None:
    """The room a payment request was posted in, or None (a malformed id, no such request).

    Only where the caller waits for the room's turn: it says nothing about who may see the request.
    """
    key = Fields().uuid("payment_request_id", payment_request_id)
    room_id = await pool.fetchval(_ROOM_OF_REQUEST, key) if key else None
    return None if room_id is None else str(room_id)


async def expire_due_requests(pool: asyncpg.Pool, bus: Publisher) -> int:
    """Close a round of open payment requests past their expiry (each with an EXPIRED message).

    Each message goes on the chat bus after the round's commit; returns how many were closed.
    """
    rows = await pool.fetch(_EXPIRE_DUE)
    await bus.publish(*(events.MessageStored(str(r["room_id"]), int(r["sequence"])) for r in rows))
    return len(rows)
