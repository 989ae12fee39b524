"""The ledger's domain values: accounts, transfers, the columns that select them, how rows bind to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.db.records import bind
from server.ledger.currencies import exponent

# Every query that returns accounts selects these, from `accounts a`. What pending transfers
# reserve and promise leaves out reservations past their expiry, before the sweeper records them so.
ACCOUNT_COLUMNS = """
a.id, a.user_id, a.currency, a.balance, a.created_at,
a.pending_debit - coalesce((SELECT sum(t.amount) FROM transfers t WHERE t.from_account_id = a.id
    AND t.state = 'pending' AND t.expires_at <= now()), 0)::bigint AS pending_debit,
coalesce((SELECT sum(t.amount) FROM transfers t WHERE t.to_account_id = a.id
    AND t.state = 'pending' AND (t.expires_at IS NULL OR t.expires_at > now())), 0)::bigint AS pending_credit
"""
# Every query that returns transfers selects these, from `transfers t` (chat's payment messages
# too). A reservation past its expiry is shown as expired before the sweeper records it so.
TRANSFER_COLUMNS = """
t.id, t.request_id, t.kind,
CASE WHEN t.state = 'pending' AND t.expires_at <= now() THEN 'expired' ELSE t.state END AS state,
t.from_user_id, t.to_user_id, t.from_account_id, t.to_account_id, t.currency, t.amount,
t.posted_amount, t.memo, t.created_at, t.expires_at,
CASE WHEN t.state = 'pending' AND t.expires_at <= now() THEN t.expires_at ELSE t.resolved_at END
    AS resolved_at
"""


@dataclass(frozen=True, slots=True)
class Account:
    """One user's money in one currency, with what pending transfers reserve and promise."""

    id: str
    user_id: str
    currency: str
    balance: int
    pending_debit: int
    pending_credit: int
    created_at: datetime

    @property
    def exponent(self) -> int:
        """Digits after the decimal point in this account's currency."""
        return exponent(self.currency)

    @property
    def available(self) -> int:
        """What can be sent now: the balance less outgoing reservations."""
        return self.balance - self.pending_debit

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Account:
        """Bind a row selected with ACCOUNT_COLUMNS."""
        return bind(cls, row)


@dataclass(frozen=True, slots=True)
class Transfer:
    """A movement (or reservation) of money.

    Kind is transfer, deposit or withdrawal; state is pending, posted, voided or expired. A None
    user is the system account.
    """

    id: str
    request_id: str
    kind: str
    state: str
    from_user_id: str | None
    to_user_id: str | None
    from_account_id: str
    to_account_id: str
    currency: str
    amount: int
    posted_amount: int
    memo: str
    created_at: datetime
    expires_at: datetime | None
    resolved_at: datetime | None

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Transfer:
        """Bind a row selected with TRANSFER_COLUMNS, or a transfers row as the ledger functions return it."""
        return bind(cls, row)
