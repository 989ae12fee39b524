"""What only an admin may do: mint money (deposit), burn it (withdraw), and audit the ledger."""

from __future__ import annotations

import asyncpg

from server.auth.principal import Principal
from server.errors import PermissionDeniedError
from server.ledger import rules
from server.ledger.audit import AuditReport, audit_ledger
from server.ledger.batching import TransferBatcher, TransferOrder
from server.ledger.models import Transfer
from server.ledger.transfers import submit
from server.validation import Fields


async def deposit(
    batcher: TransferBatcher,
    *,
    principal: Principal,
    request_id: str,
    to_user_id: str | None,
    to_username: str | None,
    currency: str,
    amount: int,
    memo: str = "",
) -> Transfer:
    """Mint money from the currency's system account into a user's account (admin only).

    Raises:
        PermissionDeniedError: the caller is not an admin.
        InvalidArgumentError: a malformed field.
        NotFoundError: no such user.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    _require_admin(principal)
    fields = Fields()
    rid, code = rules.money(
        fields, request_id=request_id, currency_code=currency, amount_minor=amount, memo=memo
    )
    to_id, to_name = rules.party(fields, to_user_id, to_username, "to")
    fields.done()
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=rid,
        kind="deposit",
        two_phase=False,
        from_user_id=None,
        to_user_id=to_id,
        to_username=to_name,
        currency=code,
        amount=amount,
        memo=memo,
    )
    return await submit(batcher, order)


async def withdraw(
    batcher: TransferBatcher,
    *,
    principal: Principal,
    request_id: str,
    from_user_id: str | None,
    from_username: str | None,
    currency: str,
    amount: int,
    memo: str = "",
) -> Transfer:
    """Burn money from a user's account into the currency's system account (admin only).

    Raises:
        PermissionDeniedError: the caller is not an admin.
        InvalidArgumentError: a malformed field.
        NotFoundError: no such user.
        InsufficientFundsError: the user's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    _require_admin(principal)
    fields = Fields()
    rid, code = rules.money(
        fields, request_id=request_id, currency_code=currency, amount_minor=amount, memo=memo
    )
    from_id, from_name = rules.party(fields, from_user_id, from_username, "from")
    fields.done()
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=rid,
        kind="withdrawal",
        two_phase=False,
        from_user_id=from_id,
        from_username=from_name,
        to_user_id=None,
        to_username=None,
        currency=code,
        amount=amount,
        memo=memo,
    )
    return await submit(batcher, order)


async def audit(pool: asyncpg.Pool, *, principal: Principal) -> AuditReport:
    """Recompute every balance from the transfers and check the invariants (admin only).

    Raises:
        PermissionDeniedError: the caller is not an admin.
    """
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin may audit the ledger")
    return await audit_ledger(pool)


def _require_admin(principal: Principal) -> None:
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin may mint or burn money")
