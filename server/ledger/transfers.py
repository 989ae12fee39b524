"""Transfers between users: immediate and two-phase (reserve, then post or void), and reading them.

Every operation that moves money is one call of a PL/pgSQL function (server/db/functions/), so one
round trip and one short transaction; creations go through the TransferBatcher (group commit).
Those functions report each request's outcome as a word (server/outcomes.py). A refused request
stays refused for its request_id (server/db/functions/requests.sql).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import asyncpg

from server import outcomes, pagetokens
from server.auth.principal import Principal
from server.db.pool import Connection
from server.errors import NotFoundError
from server.ledger import rules
from server.ledger.batching import TransferBatcher, TransferOrder
from server.ledger.models import TRANSFER_COLUMNS, Transfer
from server.validation import INT64_MAX, Fields

Direction = Literal["all", "sent", "received"]

_RESOLVE_PENDING = "SELECT * FROM ledger_resolve_pending($1, $2, $3, $4, $5)"
_EXPIRE_DUE = "SELECT ledger_expire_due()"
_GET_TRANSFER = f"""
SELECT {TRANSFER_COLUMNS} FROM transfers t
WHERE t.id = $1 AND (t.from_user_id = $2 OR t.to_user_id = $2)
"""
# Two index range scans (sent, received) merged: a user's transfers are never both.
_LIST_TRANSFERS = f"""
SELECT * FROM (
    (SELECT t.seq, {TRANSFER_COLUMNS} FROM transfers t
     WHERE $5 AND t.from_user_id = $1 AND t.seq < $2 AND ($3::text IS NULL OR t.currency = $3)
     ORDER BY t.seq DESC LIMIT $4)
    UNION ALL
    (SELECT t.seq, {TRANSFER_COLUMNS} FROM transfers t
     WHERE $6 AND t.to_user_id = $1 AND t.seq < $2 AND ($3::text IS NULL OR t.currency = $3)
     ORDER BY t.seq DESC LIMIT $4)
) page ORDER BY seq DESC LIMIT $4
"""


async def submit(
    batcher: TransferBatcher, order: TransferOrder, *, other_party_field: str = "to_user_id"
) -> Transfer:
    """Create one validated order through the batcher; its transfer, or the error its outcome means."""
    outcome, transfer = await batcher.submit(order)
    outcomes.raise_for(outcome, other_party_field=other_party_field)
    assert transfer is not None
    return transfer


async def create_transfer(
    batcher: TransferBatcher,
    *,
    principal: Principal,
    money: rules.Money,
    pending: bool = False,
    expires_at: datetime | None = None,
) -> Transfer:
    """Send (or, if `pending`, reserve) money from the caller to another user.

    A retry with the same request_id and body returns the first transfer and moves nothing; a
    retry of a refused request gets the same refusal.

    Raises:
        InvalidArgumentError: a malformed field, an expiry not within 365 days ahead, or the caller
            as recipient.
        NotFoundError: no such recipient.
        InsufficientFundsError: the caller's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    fields = Fields()
    checked = rules.money(fields, money, party_prefix="to")
    if checked.user_id is not None and checked.user_id == principal.user_id:
        fields.add("to_user_id", "must not be the caller")
    expiry = fields.expiry("expire_time", expires_at) if pending else None
    fields.done()
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=checked.request_id,
        kind="transfer",
        two_phase=pending,
        from_user_id=principal.user_id,
        to_user_id=checked.user_id,
        to_username=checked.username,
        currency=checked.currency,
        amount=checked.amount,
        memo=checked.memo,
        expires_at=expiry,
    )
    return await submit(batcher, order, other_party_field="to_username" if checked.username else "to_user_id")


async def post_pending_transfer(
    pool: Connection | asyncpg.Pool, *, principal: Principal, request_id: str, transfer_id: str, amount: int
) -> Transfer:
    """Settle one of the caller's pending transfers for `amount` (0: all); the rest is released.

    Raises:
        InvalidArgumentError: malformed ids, or an amount out of range.
        NotFoundError: no such transfer of the caller's.
        PermissionDeniedError: the caller is the recipient.
        FailedPreconditionError: reason TRANSFER_NOT_PENDING, TRANSFER_EXPIRED or IDEMPOTENCY_KEY_REUSED.
    """
    return await _resolve(pool, principal, request_id, transfer_id, "post", amount)


async def void_pending_transfer(
    pool: Connection | asyncpg.Pool, *, principal: Principal, request_id: str, transfer_id: str
) -> Transfer:
    """Release a pending transfer the caller sent or would receive.

    Raises:
        InvalidArgumentError: malformed ids.
        NotFoundError: no such transfer of the caller's.
        FailedPreconditionError: reason TRANSFER_NOT_PENDING or IDEMPOTENCY_KEY_REUSED.
    """
    return await _resolve(pool, principal, request_id, transfer_id, "void", 0)


async def _resolve(
    pool: Connection | asyncpg.Pool,
    principal: Principal,
    request_id: str,
    transfer_id: str,
    action: str,
    amount: int,
) -> Transfer:
    fields = Fields()
    rid = fields.uuid("request_id", request_id)
    tid = fields.uuid("transfer_id", transfer_id)
    rules.amount(fields, amount, allow_zero=True)
    fields.done()
    row = await pool.fetchrow(_RESOLVE_PENDING, principal.user_id, rid, tid, action, amount)
    assert row is not None
    outcomes.raise_for(row["outcome"], state=row["named_state"])
    return Transfer.from_record(row["transfer"])


async def get_transfer(
    pool: Connection | asyncpg.Pool, *, principal: Principal, transfer_id: str
) -> Transfer:
    """A transfer the caller sent or received.

    Raises:
        InvalidArgumentError: a malformed id.
        NotFoundError: no such transfer, or the caller is not a party to it.
    """
    fields = Fields()
    tid = fields.uuid("transfer_id", transfer_id)
    fields.done()
    row = await pool.fetchrow(_GET_TRANSFER, tid, principal.user_id)
    if row is None:
        raise NotFoundError("transfer not found")
    return Transfer.from_record(row)


async def list_transfers(
    pool: Connection | asyncpg.Pool,
    *,
    principal: Principal,
    page_size: int,
    page_token: str,
    direction: Direction = "all",
    currency: str = "",
) -> tuple[list[Transfer], str]:
    """A page of the caller's transfers, newest first, and the next page's token ('' at the end).

    Pages are keyed by the transfer sequence, so transfers created meanwhile never shift them.

    Raises:
        InvalidArgumentError: bad page size, token or currency.
    """
    fields = Fields()
    code = rules.currency(fields, currency) if currency else ""
    size = fields.page_size(page_size)
    before = INT64_MAX
    if page_token:
        seq, token_direction, token_currency = fields.check(
            lambda: pagetokens.TRANSFERS.decode(page_token), (INT64_MAX, direction, code)
        )
        if (token_direction, token_currency) != (direction, code):
            fields.add("page_token", "was issued for other filters")
        before = seq
    fields.done()
    rows = await pool.fetch(
        _LIST_TRANSFERS,
        principal.user_id,
        before,
        code or None,
        size + 1,
        direction in ("all", "sent"),
        direction in ("all", "received"),
    )
    transfers = [Transfer.from_record(row) for row in rows[:size]]
    token = pagetokens.TRANSFERS.encode(rows[size - 1]["seq"], direction, code) if len(rows) > size else ""
    return transfers, token


async def expire_due(pool: asyncpg.Pool) -> int:
    """Record every pending transfer past its expiry as expired (its funds are free already)."""
    return int(await pool.fetchval(_EXPIRE_DUE))
