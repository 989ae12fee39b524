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


async def deposit(batcher: TransferBatcher, *, principal: Principal, money: rules.Money) -> Transfer:
    """Mint money from the currency's system account into a user's account (admin only).

    Raises:
        PermissionDeniedError: the caller is not an admin.
        InvalidArgumentError: a malformed field.
        NotFoundError: no such user.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    return await _mint_or_burn(batcher, principal, money, "deposit")


async def withdraw(batcher: TransferBatcher, *, principal: Principal, money: rules.Money) -> Transfer:
    """Burn money from a user's account into the currency's system account (admin only).

    Raises:
        PermissionDeniedError: the caller is not an admin.
        InvalidArgumentError: a malformed field.
        NotFoundError: no such user.
        InsufficientFundsError: the user's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    return await _mint_or_burn(batcher, principal, money, "withdrawal")


async def _mint_or_burn(
    batcher: TransferBatcher, principal: Principal, money: rules.Money, kind: str
) -> Transfer:
    if not principal.is_admin:
        raise PermissionDeniedError("only an admin may mint or burn money")
    fields = Fields()
    deposit = kind == "deposit"
    checked = rules.money(fields, money, party_prefix="to" if deposit else "from")
    fields.done()
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=checked.request_id,
        kind=kind,
        two_phase=False,
        from_user_id=None if deposit else checked.user_id,
        from_username=None if deposit else checked.username,
        to_user_id=checked.user_id if deposit else None,
        to_username=checked.username if deposit else None,
        currency=checked.currency,
        amount=checked.amount,
        memo=checked.memo,
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
