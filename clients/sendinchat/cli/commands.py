"""The one-shot subcommands: register, login, logout, me, balance, pay, history."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys

from sendinchat.cli.money import Currencies
from sendinchat.cli.output import CliError, Names, date_time, shown
from sendinchat.cli.session import SessionFile
from sendinchat.client import Client
from sendinchat.errors import (
    REFRESH_TOKEN_MISSING,
    InsufficientFundsError,
    NotFoundError,
    UnauthenticatedError,
)
from sendinchat.v1 import ledger_pb2, users_pb2

_ROLES = {users_pb2.ROLE_USER: "user", users_pb2.ROLE_ADMIN: "admin"}
_STATES = {
    ledger_pb2.TRANSFER_STATE_PENDING: "pending",
    ledger_pb2.TRANSFER_STATE_VOIDED: "voided",
    ledger_pb2.TRANSFER_STATE_EXPIRED: "expired",
}


def ask_credentials(args: argparse.Namespace) -> None:
    """Prompt for what login and register need, before the event loop runs (Ctrl-C then works at once)."""
    if args.command == "login" and not args.username:
        args.username = input("username: ").strip()
    args.password = _password(args, confirm=args.command == "register")


def _password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != password:
        raise CliError("the passwords differ")
    return password


async def register(client: Client, session: SessionFile, args: argparse.Namespace) -> None:
    """Create a user, then log in as it."""
    user = await client.register(args.username, args.password, display_name=args.display_name)
    await client.login(user.username, args.password)
    session.save(client.tokens, username=user.username)
    print(f"Registered and logged in to {session.target} as {user.username}.")


async def login(client: Client, session: SessionFile, args: argparse.Namespace) -> None:
    """Log in and save the session."""
    user = await client.login(args.username, args.password)
    session.save(client.tokens, username=user.username)
    print(f"Logged in to {session.target} as {user.username}.")


async def logout(client: Client, session: SessionFile | None, args: argparse.Namespace) -> None:
    """End the session on the server and forget the saved one, if it was the one used."""
    if client.tokens is None:
        print("Not logged in.")
        return
    try:
        ended = await client.logout(all_sessions=args.all)
    except UnauthenticatedError as exc:
        if exc.reason == REFRESH_TOKEN_MISSING:  # an access token alone, expired: it ends nothing
            raise
        ended = 0  # it had ended already: nothing left to end but the saved copy
    finally:
        if session is not None:
            session.save(None)
    print(f"Logged out of {args.target} (ended {ended} session{'' if ended == 1 else 's'}).")


async def me(client: Client, args: argparse.Namespace) -> None:
    """The logged-in user, readable."""
    user = await client.get_me()
    print(f"{user.username}" + (f" ({shown(user.display_name)})" if user.display_name else ""))
    print(f"  id:            {user.id}")
    print(f"  role:          {_ROLES.get(user.role, 'user')}")
    print(f"  member since:  {date_time(user.create_time)}")


def _account_line(currencies: Currencies, account: ledger_pb2.Account) -> str:
    code = account.currency
    line = f"{currencies.format(account.balance_minor, code):>20}"
    notes = []
    if account.pending_debit_minor:
        held = currencies.format(account.pending_debit_minor, code)
        notes.append(f"{currencies.format(account.available_minor, code)} available, {held} held")
    if account.pending_credit_minor:
        notes.append(f"{currencies.format(account.pending_credit_minor, code)} incoming")
    return line + (f"  ({'; '.join(notes)})" if notes else "")


async def balance(client: Client, args: argparse.Namespace) -> None:
    """Every account, or one currency (0 when it never received money)."""
    currencies = await Currencies.fetch(client)
    if args.currency:
        code = currencies.code(args.currency)
        try:
            print(_account_line(currencies, await client.get_account(currency=code)))
        except NotFoundError:  # no account until money first arrives
            print(f"{currencies.format(0, code):>20}")
        return
    accounts = [account async for account in client.list_accounts()]
    for account in accounts:
        print(_account_line(currencies, account))
    if not accounts:
        print(f"{currencies.format(0, 'USD'):>20}  (no money yet: an account opens when money arrives)")


async def pay(client: Client, args: argparse.Namespace) -> None:
    """Send money to a user, in major units."""
    currencies = await Currencies.fetch(client)
    amount_minor, code = currencies.parse(args.amount, args.currency)
    memo = " ".join(args.memo)
    recipient = args.username.removeprefix("@")
    try:
        await client.create_transfer(
            to_username=recipient,
            currency=code,
            amount_minor=amount_minor,
            memo=memo,
            request_id=args.request_id,
        )
    except InsufficientFundsError:
        raise CliError(f"insufficient funds: you have {await _available(client, currencies, code)}") from None
    except NotFoundError:
        raise CliError(f"no user called {recipient!r}") from None
    print(f"Sent {currencies.format(amount_minor, code)} to {recipient}." + (f" ({memo})" if memo else ""))


async def _available(client: Client, currencies: Currencies, code: str) -> str:
    try:
        available = (await client.get_account(currency=code)).available_minor
    except NotFoundError:
        available = 0
    return f"{currencies.format(available, code)} available"


async def history(client: Client, args: argparse.Namespace) -> None:
    """The latest transfers, newest first, with who and why."""
    currencies = await Currencies.fetch(client)
    me_id = (await client.get_me()).id
    names = Names(client)
    direction = {
        "sent": ledger_pb2.TRANSFER_DIRECTION_SENT,
        "received": ledger_pb2.TRANSFER_DIRECTION_RECEIVED,
    }.get(args.direction, ledger_pb2.TRANSFER_DIRECTION_ALL)
    currency = currencies.code(args.currency) if args.currency else ""
    shown = 0
    transfers = client.list_transfers(direction=direction, currency=currency, page_size=min(args.limit, 100))
    async with contextlib.aclosing(transfers):
        async for transfer in transfers:
            if shown == args.limit:
                break
            print(await _transfer_line(transfer, me_id, names, currencies))
            shown += 1
    if not shown:
        print("No transfers yet.")


async def _transfer_line(
    transfer: ledger_pb2.Transfer, me_id: str, names: Names, currencies: Currencies
) -> str:
    outgoing = transfer.from_user_id == me_id
    moved = transfer.posted_amount_minor or transfer.amount_minor
    amount = currencies.format(-moved if outgoing else moved, transfer.currency, signed=True)
    if transfer.kind == ledger_pb2.TRANSFER_KIND_DEPOSIT:
        party = "deposit"
    elif transfer.kind == ledger_pb2.TRANSFER_KIND_WITHDRAWAL:
        party = "withdrawal"
    elif outgoing:
        party = f"to {await names.of(transfer.to_user_id)}"
    else:
        party = f"from {await names.of(transfer.from_user_id)}"
    state = _STATES.get(transfer.state, "")
    line = f"{date_time(transfer.create_time)}  {amount:>16}  {party:<20}"
    return (
        line + (f" [{state}]" if state else "") + (f"  {shown(transfer.memo)}" if transfer.memo else "")
    ).rstrip()
