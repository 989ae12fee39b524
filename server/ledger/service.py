"""The ledger: accounts, transfers (immediate and two-phase), deposits and withdrawals.

Every operation that moves money is one call of a PL/pgSQL function (migration 0002), so one round
trip and one short transaction; creations go through the TransferBatcher (group commit). Those
functions report each request's outcome as a word, which `_raise_for` turns into a domain error.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Literal

import asyncpg

from server.auth.principal import Principal
from server.db.pool import Connection
from server.errors import (
    FailedPreconditionError,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
)
from server.ledger import pagination
from server.ledger.audit import AuditReport, audit_ledger
from server.ledger.batching import TransferBatcher, TransferOrder
from server.ledger.currencies import check_currency
from server.ledger.models import Account, Transfer
from server.users.validation import normalize_username

MAX_MEMO_CHARS = 256
MAX_AMOUNT = 10**15  # far beyond any real payment, far from int64 overflow of summed balances

Direction = Literal["all", "sent", "received"]

_ACCOUNT_COLUMNS = """
a.id, a.user_id, a.currency, a.balance, a.created_at,
a.pending_debit - coalesce((SELECT sum(t.amount) FROM transfers t WHERE t.from_account_id = a.id
    AND t.state = 'pending' AND t.expires_at <= now()), 0)::bigint AS pending_debit,
coalesce((SELECT sum(t.amount) FROM transfers t WHERE t.to_account_id = a.id
    AND t.state = 'pending' AND (t.expires_at IS NULL OR t.expires_at > now())), 0)::bigint AS pending_credit
"""
# A reservation past its expiry is shown as expired before the sweeper records it so.
_TRANSFER_COLUMNS = """
t.id, t.request_id, t.kind,
CASE WHEN t.state = 'pending' AND t.expires_at <= now() THEN 'expired' ELSE t.state END AS state,
t.from_user_id, t.to_user_id, t.from_account_id, t.to_account_id, t.currency, t.amount,
t.posted_amount, t.memo, t.created_at, t.expires_at,
CASE WHEN t.state = 'pending' AND t.expires_at <= now() THEN t.expires_at ELSE t.resolved_at END
    AS resolved_at
"""
_OPEN_ACCOUNT = """
INSERT INTO accounts (user_id, currency) VALUES ($1, $2)
ON CONFLICT ON CONSTRAINT accounts_owner_currency_key DO NOTHING
"""
_ACCOUNT_BY_CURRENCY = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.user_id = $1 AND a.currency = $2"
_ACCOUNT_BY_ID = f"SELECT {_ACCOUNT_COLUMNS} FROM accounts a WHERE a.user_id = $1 AND a.id = $2"
_LIST_ACCOUNTS = f"""
SELECT {_ACCOUNT_COLUMNS} FROM accounts a
WHERE a.user_id = $1 AND a.currency > coalesce($2, '')
ORDER BY a.currency LIMIT $3
"""
_RESOLVE_PENDING = "SELECT * FROM ledger_resolve_pending($1, $2, $3, $4, $5)"
_GET_TRANSFER = f"""
SELECT {_TRANSFER_COLUMNS} FROM transfers t
WHERE t.id = $1 AND (t.from_user_id = $2 OR t.to_user_id = $2)
"""
# Two index range scans (sent, received) merged: a user's transfers are never both.
_LIST_TRANSFERS = f"""
SELECT * FROM (
    (SELECT t.seq, {_TRANSFER_COLUMNS} FROM transfers t
     WHERE $5 AND t.from_user_id = $1 AND t.seq < $2 AND ($3::text IS NULL OR t.currency = $3)
     ORDER BY t.seq DESC LIMIT $4)
    UNION ALL
    (SELECT t.seq, {_TRANSFER_COLUMNS} FROM transfers t
     WHERE $6 AND t.to_user_id = $1 AND t.seq < $2 AND ($3::text IS NULL OR t.currency = $3)
     ORDER BY t.seq DESC LIMIT $4)
) page ORDER BY seq DESC LIMIT $4
"""
_USER_ID_BY_NAME = "SELECT id FROM users WHERE username = $1"
_EXPIRE_DUE = "SELECT ledger_expire_due()"

# What a background job may meet when the database is away; it retries later.


def _raise_for(outcome: str, *, recipient_field: str = "recipient", state: str | None = None) -> None:
    if outcome in ("CREATED", "REPLAYED", "DONE"):
        return
    if outcome == "INSUFFICIENT_FUNDS":
        raise InsufficientFundsError("the available balance is below the amount")
    if outcome == "IDEMPOTENCY_KEY_REUSED":
        raise IdempotencyKeyReusedError()
    if outcome == "RECIPIENT_NOT_FOUND":
        raise NotFoundError("recipient not found")
    if outcome == "SOURCE_NOT_FOUND":
        raise NotFoundError("user not found")
    if outcome == "SELF_TRANSFER":
        raise InvalidArgumentError.field(recipient_field, "must not be the caller")
    if outcome == "NOT_FOUND":
        raise NotFoundError("transfer not found")
    if outcome == "PERMISSION_DENIED":
        raise PermissionDeniedError("only the sender may post a pending transfer")
    if outcome == "TRANSFER_EXPIRED":
        raise FailedPreconditionError("the pending transfer has expired", reason="TRANSFER_EXPIRED")
    if outcome == "TRANSFER_NOT_PENDING":
        raise FailedPreconditionError(
            f"the transfer is {state}, not pending",
            reason="TRANSFER_NOT_PENDING",
            metadata={"state": state or ""},
        )
    if outcome == "AMOUNT_TOO_LARGE":
        raise InvalidArgumentError.field("amount_minor", "must not exceed the reserved amount")
    raise RuntimeError(f"unknown ledger outcome {outcome!r}")


async def _submit(
    batcher: TransferBatcher, order: TransferOrder, recipient_field: str = "to_user_id"
) -> Transfer:
    outcome, transfer = await batcher.submit(order)
    _raise_for(outcome, recipient_field=recipient_field)
    assert transfer is not None
    return transfer


class _Checks:
    """Collects every field violation of a request, so the caller learns them all at once."""

    def money(self, request_id: str, currency: str, amount: int, memo: str) -> tuple[str, str]:
        """The fields every money-moving request has: the canonical request_id and currency code."""
        rid = self.uuid(request_id, "request_id")
        code = self.currency(currency)
        self.amount(amount)
        self.memo(memo)
        return rid, code

    def __init__(self) -> None:
        self.violations: dict[str, str] = {}

    def uuid(self, raw: str, field: str) -> str:
        try:
            return str(uuid.UUID(raw))
        except ValueError:
            self.violations[field] = "must be a UUID"
            return ""

    def currency(self, raw: str) -> str:
        try:
            return check_currency(raw)
        except InvalidArgumentError as exc:
            self.violations.update(exc.violations)
            return raw

    def amount(self, value: int, *, allow_zero: bool = False) -> int:
        low = 0 if allow_zero else 1
        if not low <= value <= MAX_AMOUNT:
            self.violations["amount_minor"] = f"must be between {low} and {MAX_AMOUNT} minor units"
        return value

    def memo(self, raw: str) -> str:
        if len(raw) > MAX_MEMO_CHARS:
            self.violations["memo"] = f"must be at most {MAX_MEMO_CHARS} characters"
        elif "\x00" in raw:
            self.violations["memo"] = "must not contain NUL characters"
        return raw

    def user(self, user_id: str | None, username: str | None, prefix: str) -> tuple[str | None, str | None]:
        if user_id is not None:
            return self.uuid(user_id, f"{prefix}_user_id"), None
        if username is not None:
            try:
                return None, normalize_username(username, f"{prefix}_username")
            except InvalidArgumentError as exc:
                self.violations.update(exc.violations)
                return None, None
        self.violations[f"{prefix}_user_id"] = f"set {prefix}_user_id or {prefix}_username"
        return None, None

    def done(self) -> None:
        if self.violations:
            raise InvalidArgumentError(self.violations)


async def open_account(pool: Connection | asyncpg.Pool, *, principal: Principal, currency: str) -> Account:
    """Open the caller's account in `currency`, or return it if it is open.

    Raises:
        InvalidArgumentError: the currency is not supported.
    """
    code = check_currency(currency)
    await pool.execute(_OPEN_ACCOUNT, principal.user_id, code)
    row = await pool.fetchrow(_ACCOUNT_BY_CURRENCY, principal.user_id, code)
    assert row is not None
    return Account.from_record(row)


async def get_account(
    pool: Connection | asyncpg.Pool,
    *,
    principal: Principal,
    account_id: str | None = None,
    currency: str | None = None,
) -> Account:
    """One of the caller's accounts, by id or by currency.

    Raises:
        InvalidArgumentError: no key, or a malformed one.
        NotFoundError: the caller has no such account.
    """
    if account_id is not None:
        checks = _Checks()
        key = checks.uuid(account_id, "account_id")
        checks.done()
        row = await pool.fetchrow(_ACCOUNT_BY_ID, principal.user_id, key)
    elif currency is not None:
        row = await pool.fetchrow(_ACCOUNT_BY_CURRENCY, principal.user_id, check_currency(currency))
    else:
        raise InvalidArgumentError.field("key", "set account_id or currency")
    if row is None:
        raise NotFoundError("account not found")
    return Account.from_record(row)


async def list_accounts(
    pool: Connection | asyncpg.Pool, *, principal: Principal, page_size: int, page_token: str
) -> tuple[list[Account], str]:
    """A page of the caller's accounts by currency, and the next page's token ('' at the end).

    Raises:
        InvalidArgumentError: bad page size or token.
    """
    size = pagination.page_size(page_size)
    after = pagination.decode_accounts_token(page_token)
    rows = await pool.fetch(_LIST_ACCOUNTS, principal.user_id, after, size + 1)
    accounts = [Account.from_record(row) for row in rows[:size]]
    more = len(rows) > size
    return accounts, pagination.encode_accounts_token(accounts[-1].currency) if more else ""


async def create_transfer(
    batcher: TransferBatcher,
    *,
    principal: Principal,
    request_id: str,
    to_user_id: str | None,
    to_username: str | None,
    currency: str,
    amount: int,
    memo: str = "",
    pending: bool = False,
    expires_at: datetime | None = None,
) -> Transfer:
    """Send (or, if `pending`, reserve) money from the caller to another user.

    A retry with the same request_id and body returns the first transfer and moves nothing.

    Raises:
        InvalidArgumentError: a malformed field, an expiry in the past, or the caller as recipient.
        NotFoundError: no such recipient.
        InsufficientFundsError: the caller's available balance is below the amount.
        IdempotencyKeyReusedError: request_id was used for a different request.
    """
    checks = _Checks()
    rid, code = checks.money(request_id, currency, amount, memo)
    to_id, to_name = checks.user(to_user_id, to_username, "to")
    if to_id is not None and to_id == principal.user_id:
        checks.violations["to_user_id"] = "must not be the caller"
    if pending and expires_at is not None and expires_at <= datetime.now(UTC):
        checks.violations["expire_time"] = "must be in the future"
    checks.done()
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=rid,
        kind="transfer",
        two_phase=pending,
        from_user_id=principal.user_id,
        to_user_id=to_id,
        to_username=to_name,
        currency=code,
        amount=amount,
        memo=memo,
        expires_at=expires_at if pending else None,
    )
    return await _submit(batcher, order, recipient_field="to_username" if to_name else "to_user_id")


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
    checks = _Checks()
    rid = checks.uuid(request_id, "request_id")
    tid = checks.uuid(transfer_id, "transfer_id")
    checks.amount(amount, allow_zero=True)
    checks.done()
    row = await pool.fetchrow(_RESOLVE_PENDING, principal.user_id, rid, tid, action, amount)
    assert row is not None
    _raise_for(row["outcome"], state=row["state"])
    return Transfer.from_record(row)


async def get_transfer(
    pool: Connection | asyncpg.Pool, *, principal: Principal, transfer_id: str
) -> Transfer:
    """A transfer the caller sent or received.

    Raises:
        InvalidArgumentError: a malformed id.
        NotFoundError: no such transfer, or the caller is not a party to it.
    """
    checks = _Checks()
    tid = checks.uuid(transfer_id, "transfer_id")
    checks.done()
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
    checks = _Checks()
    code = checks.currency(currency) if currency else None
    try:
        size = pagination.page_size(page_size)
    except InvalidArgumentError as exc:
        checks.violations.update(exc.violations)
        size = 1
    filters = f"{direction}:{code or ''}"
    try:
        before = pagination.decode_transfers_token(page_token, filters)
    except InvalidArgumentError as exc:
        checks.violations.update(exc.violations)
        before = None
    checks.done()
    rows = await pool.fetch(
        _LIST_TRANSFERS,
        principal.user_id,
        before if before is not None else 2**63 - 1,
        code,
        size + 1,
        direction in ("all", "sent"),
        direction in ("all", "received"),
    )
    transfers = [Transfer.from_record(row) for row in rows[:size]]
    token = pagination.encode_transfers_token(rows[size - 1]["seq"], filters) if len(rows) > size else ""
    return transfers, token


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
    checks = _Checks()
    rid, code = checks.money(request_id, currency, amount, memo)
    to_id, to_name = checks.user(to_user_id, to_username, "to")
    checks.done()
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
    return await _submit(batcher, order)


async def withdraw(
    pool: Connection | asyncpg.Pool,
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
    checks = _Checks()
    rid, code = checks.money(request_id, currency, amount, memo)
    from_id, from_name = checks.user(from_user_id, from_username, "from")
    checks.done()
    if from_name is not None:
        found = await pool.fetchval(_USER_ID_BY_NAME, from_name)
        if found is None:
            raise NotFoundError("user not found")
        from_id = str(found)
    order = TransferOrder(
        initiator_id=principal.user_id,
        request_id=rid,
        kind="withdrawal",
        two_phase=False,
        from_user_id=from_id,
        to_user_id=None,
        to_username=None,
        currency=code,
        amount=amount,
        memo=memo,
    )
    return await _submit(batcher, order)


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


async def expire_due(pool: asyncpg.Pool) -> int:
    """Record every pending transfer past its expiry as expired (its funds are free already)."""
    return int(await pool.fetchval(_EXPIRE_DUE))
