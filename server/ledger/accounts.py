"""Accounts: one per (user, currency), opened on demand, read with what pending transfers hold."""

from __future__ import annotations

import asyncpg

from server import pagetokens
from server.auth.principal import Principal
from server.db.pool import Connection
from server.errors import InvalidArgumentError, NotFoundError
from server.ledger import rules
from server.ledger.models import ACCOUNT_COLUMNS, Account
from server.validation import Fields

_OPEN_ACCOUNT = """
INSERT INTO accounts (user_id, currency) VALUES ($1, $2)
ON CONFLICT ON CONSTRAINT accounts_owner_currency_key DO NOTHING
"""
_ACCOUNT_BY_CURRENCY = f"SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.user_id = $1 AND a.currency = $2"
_ACCOUNT_BY_ID = f"SELECT {ACCOUNT_COLUMNS} FROM accounts a WHERE a.user_id = $1 AND a.id = $2"
_LIST_ACCOUNTS = f"""
SELECT {ACCOUNT_COLUMNS} FROM accounts a
WHERE a.user_id = $1 AND a.currency > coalesce($2, '')
ORDER BY a.currency LIMIT $3
"""


async def open_account(pool: Connection | asyncpg.Pool, *, principal: Principal, currency: str) -> Account:
    """Open the caller's account in `currency`, or return it if it is open.

    Raises:
        InvalidArgumentError: the currency is not supported.
    """
    fields = Fields()
    code = rules.currency(fields, currency)
    fields.done()
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
    fields = Fields()
    if account_id is not None:
        key = fields.uuid("account_id", account_id)
        fields.done()
        row = await pool.fetchrow(_ACCOUNT_BY_ID, principal.user_id, key)
    elif currency is not None:
        code = rules.currency(fields, currency)
        fields.done()
        row = await pool.fetchrow(_ACCOUNT_BY_CURRENCY, principal.user_id, code)
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
    fields = Fields()
    size = fields.page_size(page_size)
    after = fields.check(lambda: pagetokens.ACCOUNTS.decode(page_token)[0] if page_token else None, None)
    fields.done()
    rows = await pool.fetch(_LIST_ACCOUNTS, principal.user_id, after, size + 1)
    accounts = [Account.from_record(row) for row in rows[:size]]
    more = len(rows) > size
    return accounts, pagetokens.ACCOUNTS.encode(accounts[-1].currency) if more else ""
