"""AuditLedger: recompute every balance from the transfers and check the ledger's invariants."""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

# Per account: stored balance and reservation against what the transfers say they must be.
_ACCOUNTS = """
WITH flows AS (
    SELECT from_account_id AS account_id, -posted_amount AS posted,
           CASE WHEN state = 'pending' THEN amount ELSE 0 END AS reserved
    FROM transfers
    UNION ALL
    SELECT to_account_id, posted_amount, 0 FROM transfers
), sums AS (
    SELECT account_id, sum(posted)::bigint AS posted, sum(reserved)::bigint AS reserved
    FROM flows GROUP BY account_id
)
SELECT coalesce(a.id, s.account_id)::text AS id, a.id IS NULL AS missing, a.user_id IS NULL AS system,
       coalesce(a.currency, '') AS currency, coalesce(a.balance, 0) AS balance,
       coalesce(a.pending_debit, 0) AS pending_debit,
       coalesce(s.posted, 0) AS expected_balance, coalesce(s.reserved, 0) AS expected_pending
FROM accounts a FULL JOIN sums s ON s.account_id = a.id
ORDER BY a.currency, a.user_id NULLS FIRST
"""
_TRANSFERS = "SELECT count(*) FROM transfers"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken invariant."""

    kind: str
    currency: str
    detail: str
    account_id: str = ""


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    """The sum of one currency's balances (must be 0) and the money issued in it."""

    currency: str
    sum: int
    issued: int


@dataclass(frozen=True)
class AuditReport:
    """The verdict: ok when no invariant is broken."""

    violations: list[Violation] = field(default_factory=list)
    totals: list[CurrencyTotal] = field(default_factory=list)
    accounts_checked: int = 0
    transfers_checked: int = 0

    @property
    def ok(self) -> bool:
        """True when there are no violations."""
        return not self.violations


async def audit_ledger(pool: asyncpg.Pool) -> AuditReport:
    """Check the ledger's invariants on one consistent snapshot.

    Every balance must equal the sum of its posted transfers, every reservation the sum of its
    pending ones; no user account may be below zero (or reserve more than it holds); each
    currency's balances must sum to zero.
    """
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(_ACCOUNTS)
        transfers = await conn.fetchval(_TRANSFERS)
    violations: list[Violation] = []
    sums: dict[str, int] = {}
    issued: dict[str, int] = {}
    for row in rows:
        account_id, currency, balance = row["id"], row["currency"], row["balance"]
        if row["missing"]:
            violations.append(
                Violation(
                    "BALANCE_MISMATCH",
                    currency,
                    f"transfers move {row['expected_balance']} through an account that does not exist",
                    account_id,
                )
            )
            continue
        sums[currency] = sums.get(currency, 0) + balance
        if row["system"]:
            issued[currency] = -balance
        if balance != row["expected_balance"]:
            violations.append(
                Violation(
                    "BALANCE_MISMATCH",
                    currency,
                    f"balance {balance} but posted transfers sum to {row['expected_balance']}",
                    account_id,
                )
            )
        if row["pending_debit"] != row["expected_pending"]:
            violations.append(
                Violation(
                    "PENDING_MISMATCH",
                    currency,
                    f"reserved {row['pending_debit']} but pending transfers sum to {row['expected_pending']}",
                    account_id,
                )
            )
        if not row["system"] and (balance < 0 or balance < row["pending_debit"]):
            violations.append(
                Violation(
                    "NEGATIVE_BALANCE",
                    currency,
                    f"balance {balance}, reserved {row['pending_debit']}",
                    account_id,
                )
            )
    for currency, total in sums.items():
        if total != 0:
            violations.append(Violation("CURRENCY_NOT_BALANCED", currency, f"balances sum to {total}, not 0"))
    totals = [CurrencyTotal(c, sums[c], issued.get(c, 0)) for c in sorted(sums)]
    return AuditReport(violations, totals, len(rows), int(transfers))
