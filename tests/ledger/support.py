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


def transfer_request(
    to: Account, amount: int, currency: str = "USD", **fields: Any
) -> ledger_pb2.CreateTransferRequest:
    """A CreateTransferRequest to `to` with a fresh request_id unless one is given."""
    fields.setdefault("request_id", request_id())
    return ledger_pb2.CreateTransferRequest(
        to_user_id=to.id, currency=currency, amount_minor=amount, **fields
    )
