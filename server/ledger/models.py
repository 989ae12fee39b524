"""The ledger's domain values: accounts, transfers, the columns that select them, how rows bind to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

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


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Account:
    """One user's money in one currency, with what pending transfers reserve and promise."""

    id: str
    user_id: str
    currency: str
    exponent: int
    balance: int
    pending_debit: int
    pending_credit: int
    created_at: datetime

    @property
    def available(self) -> int:
        """What can be sent now: the balance less outgoing reservations."""
        return self.balance - self.pending_debit

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Account:
        """Bind a row selected with the account columns."""
        return cls(
            id=str(row["id"]),
            user_id=str(row["user_id"]),
            currency=row["currency"],
            exponent=exponent(row["currency"]),
            balance=row["balance"],
            pending_debit=row["pending_debit"],
            pending_credit=row["pending_credit"],
            created_at=row["created_at"],
        )


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
        """Bind a row with the transfer columns (as the ledger functions return them)."""
        return cls(
            id=str(row["id"]),
            request_id=str(row["request_id"]),
            kind=row["kind"],
            state=row["state"],
            from_user_id=_text(row["from_user_id"]),
            to_user_id=_text(row["to_user_id"]),
            from_account_id=str(row["from_account_id"]),
            to_account_id=str(row["to_account_id"]),
            currency=row["currency"],
            amount=row["amount"],
            posted_amount=row["posted_amount"],
            memo=row["memo"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
            resolved_at=row["resolved_at"],
        )
