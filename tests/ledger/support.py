"""Ledger test support: funding accounts and reading balances through the RPCs."""

from __future__ import annotations

from typing import Any

from sendinchat.v1 import ledger_pb2
from tests.helpers import Account, request_id


async def deposit(server: Any, admin: Account, user: Account, amount: int, currency: str = "USD") -> None:
    """Mint `amount` into `user`'s account as `admin`."""
    await server.stubs.ledger.Deposit(
        ledger_pb2.DepositRequest(
            request_id=request_id(), to_user_id=user.id, currency=currency, amount_minor=amount
        ),
        metadata=admin.auth,
    )


async def account(stubs: Any, user: Account, currency: str = "USD") -> ledger_pb2.Account:
    """The user's account in `currency`, as GetAccount returns it."""
    reply = await stubs.ledger.GetAccount(ledger_pb2.GetAccountRequest(currency=currency), metadata=user.auth)
    found: ledger_pb2.Account = reply.account
    return found


async def balance(stubs: Any, user: Account, currency: str = "USD") -> int:
    """The user's posted balance in `currency`."""
    return (await account(stubs, user, currency)).balance_minor


async def held(stubs: Any, user: Account, currency: str = "USD") -> int:
    """The user's posted balance in `currency`, 0 when no money ever came (no account was opened)."""
    reply = await stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(), metadata=user.auth)
    return next((a.balance_minor for a in reply.accounts if a.currency == currency), 0)


def transfer_request(
    to: Account, amount: int, currency: str = "USD", **fields: Any
) -> ledger_pb2.CreateTransferRequest:
    """A CreateTransferRequest to `to` with a fresh request_id unless one is given."""
    fields.setdefault("request_id", request_id())
    return ledger_pb2.CreateTransferRequest(
        to_user_id=to.id, currency=currency, amount_minor=amount, **fields
    )


async def one_call_of_ledger_create_transfers(
    conn: Any, initiator: str, items: list[tuple[str, str | None, str, str, int]]
) -> list[Any]:
    """Call the SQL function with one batch of immediate (kind, from user, to user, currency, amount)."""
    n = len(items)
    kinds, payers, payees, currencies, amounts = (list(column) for column in zip(*items, strict=True))
    rows: list[Any] = await conn.fetch(
        "SELECT idx, outcome FROM ledger_create_transfers($1::uuid[], $2::uuid[], $3::text[],"
        " $4::boolean[], $5::uuid[], $6::text[], $7::uuid[], $8::text[], $9::text[], $10::bigint[],"
        " $11::text[], $12::timestamptz[])",
        [initiator] * n,
        [request_id() for _ in items],
        kinds,
        [False] * n,
        payers,
        [None] * n,
        payees,
        [None] * n,
        currencies,
        amounts,
        [""] * n,
        [None] * n,
    )
    return rows
