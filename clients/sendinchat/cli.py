"""A terminal client: `sendinchat-cli login alice`, `… pay bob 2.50 USD`, `… chat ROOM_ID`.

The access token is read from SENDINCHAT_TOKEN (print one with `login`); the server address from
SENDINCHAT_TARGET (default 127.0.0.1:50051).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import os
import sys
from decimal import Decimal, InvalidOperation

from sendinchat.client import Client
from sendinchat.errors import SendInChatError
from sendinchat.v1 import users_pb2


def _minor_units(amount: str, currency: str, exponent: int) -> int:
    try:
        value = Decimal(amount) * (10**exponent)
    except InvalidOperation:
        raise SystemExit(f"not an amount: {amount}") from None
    if value != value.to_integral_value():
        raise SystemExit(f"{currency} has {exponent} decimal places")
    return int(value)


def _client(target: str) -> Client:
    client = Client(target)
    token = os.environ.get("SENDINCHAT_TOKEN")
    if token:
        client.tokens = users_pb2.TokenPair(access_token=token)
    return client


async def _chat(client: Client, room_id: str) -> None:
    connection = client.connect()
    await connection.subscribe(room_id, after_sequence=0)

    async def print_events() -> None:
        async for event in connection.events():
            kind = event.WhichOneof("event")
            if kind == "message":
                m = event.message
                print(f"[{m.sequence}] {m.sender_user_id[:8]}: {m.text}", flush=True)
            elif kind == "error":
                print(f"! {event.error.message}", file=sys.stderr, flush=True)

    printer = asyncio.create_task(print_events())
    loop = asyncio.get_running_loop()
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        if line.strip():
            await connection.send(room_id, line.rstrip("\n"))
    await connection.close()
    printer.cancel()


async def _run(args: argparse.Namespace) -> None:
    async with _client(args.target) as client:
        if args.command == "register":
            user = await client.register(args.username, getpass.getpass("password: "))
            print(f"registered {user.username} ({user.id})")
        elif args.command == "login":
            await client.login(args.username, getpass.getpass("password: "))
            assert client.tokens is not None
            print(f"export SENDINCHAT_TOKEN={client.tokens.access_token}")
        elif args.command == "me":
            print(await client.get_me())
        elif args.command == "logout":
            ended = await client.logout(all_sessions=args.all)
            print(f"ended {ended} session{'' if ended == 1 else 's'}; unset SENDINCHAT_TOKEN")
        elif args.command == "balance":
            account = await client.get_account(currency=args.currency.upper())
            print(f"{account.currency}: {account.available_minor} available ({account.balance_minor} posted)")
        elif args.command == "pay":
            currency = args.currency.upper()
            # The server knows each currency's minor unit (2 for USD, 0 for JPY, ...).
            exponent = (await client.get_account(currency=currency)).minor_unit_exponent
            amount_minor = _minor_units(args.amount, currency, exponent)
            transfer = await client.create_transfer(
                to_username=args.username, currency=currency, amount_minor=amount_minor
            )
            print(f"sent: transfer {transfer.id}")
        elif args.command == "rooms":
            async for room in client.list_rooms():
                print(f"{room.id}  {room.name or '(direct)'}  unread={room.unread_count}")
        elif args.command == "chat":
            await _chat(client, args.room_id)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `sendinchat-cli`."""
    parser = argparse.ArgumentParser(prog="sendinchat-cli", description="SendInChat terminal client")
    parser.add_argument("--target", default=os.environ.get("SENDINCHAT_TARGET", "127.0.0.1:50051"))
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("register").add_argument("username")
    commands.add_parser("login").add_argument("username")
    commands.add_parser("me")
    logout = commands.add_parser("logout", help="end this session (its token stops working at once)")
    logout.add_argument("--all", action="store_true", help="end every session of the user")
    commands.add_parser("balance").add_argument("currency")
    pay = commands.add_parser("pay")
    pay.add_argument("username")
    pay.add_argument("amount", help="in major units, e.g. 2.50")
    pay.add_argument("currency")
    commands.add_parser("rooms")
    commands.add_parser("chat").add_argument("room_id")
    args = parser.parse_args(argv)
    try:
        asyncio.run(_run(args))
    except SendInChatError as exc:
        print(f"sendinchat-cli: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
