"""sendinchat-cli, a terminal client: `login alice`, `balance`, `pay bob 2.50 USD`, `chat bob`.

`login` keeps the session (access and refresh token) in the user's config directory and every
command refreshes it by itself; SENDINCHAT_TOKEN (an access token) overrides it for scripts.
The server is --target, or SENDINCHAT_TARGET, or 127.0.0.1:50051.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence

from sendinchat.cli import chat, commands, rooms
from sendinchat.cli.output import CliError, explain
from sendinchat.cli.session import SessionFile
from sendinchat.client import Client
from sendinchat.errors import SendInChatError
from sendinchat.v1 import users_pb2

__all__ = ["build_parser", "main"]

_DEFAULT_TARGET = "127.0.0.1:50051"


def _add(
    commands_: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    summary: str,
    details: str = "",
    aliases: Sequence[str] = (),
) -> argparse.ArgumentParser:
    return commands_.add_parser(
        name,
        aliases=aliases,
        help=summary,
        description=summary[0].upper() + summary[1:] + "." + (f"\n\n{details}" if details else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand with its help."""
    parser = argparse.ArgumentParser(
        prog="sendinchat-cli",
        description="Chat and send money from a terminal. Start with: sendinchat-cli login USERNAME",
        epilog="Every command has --help. Sessions live in $SENDINCHAT_CONFIG_DIR, "
        "$XDG_CONFIG_HOME/sendinchat or ~/.config/sendinchat.",
    )
    parser.add_argument(
        "--target",
        default=os.environ.get("SENDINCHAT_TARGET", _DEFAULT_TARGET),
        help=f"server host:port (default: $SENDINCHAT_TARGET or {_DEFAULT_TARGET})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    register = _add(sub, "register", "create a user and log in as it", "Asks for the password twice.")
    register.add_argument("username", help="3-32 characters of a-z 0-9 _ . -")
    register.add_argument("--display-name", default="", help="the name others see")
    register.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    login = _add(
        sub, "login", "log in and keep the session", "The session is saved (mode 0600) and refreshed."
    )
    login.add_argument("username", nargs="?", help="asked for when omitted")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")

    logout = _add(sub, "logout", "end the session and forget it", "Its tokens stop working at once.")
    logout.add_argument("--all", action="store_true", help="end every session of the user, on every device")

    _add(sub, "me", "show who is logged in")

    balance = _add(sub, "balance", "show what you hold", "Amounts are in major units: 50.00 USD.")
    balance.add_argument("currency", nargs="?", help="one currency only, e.g. USD")

    pay = _add(sub, "pay", "send money to a user", "Example: sendinchat-cli pay bob 2.50 USD lunch on friday")
    pay.add_argument("username", help="who receives it")
    pay.add_argument("amount", help="in major units, e.g. 2.50")
    pay.add_argument("currency", help="ISO-4217 code, e.g. USD")
    pay.add_argument("memo", nargs="*", help="a note for the recipient")
    pay.add_argument("--request-id", help="a UUID: running the command again with it pays once")

    history = _add(sub, "history", "list your latest transfers, newest first", aliases=["transfers"])
    history.add_argument("--limit", type=_at_least(1), default=20, help="how many (default 20)")
    history.add_argument("--currency", help="only this currency")
    direction = history.add_mutually_exclusive_group()
    direction.add_argument("--sent", dest="direction", action="store_const", const="sent", help="only sent")
    direction.add_argument(
        "--received", dest="direction", action="store_const", const="received", help="only received"
    )

    rooms_ = _add(sub, "rooms", "list and manage rooms", "ROOM is a group's name, a username or a room id.")
    room_commands = rooms_.add_subparsers(dest="rooms_command", required=True, metavar="ROOMS_COMMAND")
    listing = _add(room_commands, "list", "list your rooms, most recently active first")
    listing.add_argument("--ids", action="store_true", help="show each room's id")
    create = _add(
        room_commands, "create", "create a group room", "For a direct room: sendinchat-cli chat USERNAME"
    )
    create.add_argument("name", help="the group's name")
    create.add_argument("usernames", nargs="*", help="who else is in it")
    _add(room_commands, "members", "list a room's members").add_argument("room", help="the room")
    add = _add(room_commands, "add", "add users to a group room")
    add.add_argument("room", help="the room")
    add.add_argument("usernames", nargs="+", help="who to add")
    _add(room_commands, "leave", "leave a group room").add_argument("room", help="the room")

    talk = _add(
        sub, "chat", "chat in a room, live", chat.HELP + "\n\nROOM: a group's name, a username, a room id."
    )
    talk.add_argument("room", help="where; a username opens (or creates) your direct room with that user")
    talk.add_argument(
        "--history", type=_at_least(0), default=20, help="how many earlier messages to show (default 20)"
    )
    return parser


def _at_least(lowest: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if value < lowest:
            raise argparse.ArgumentTypeError(f"must be at least {lowest}")
        return value

    parse.__name__ = "number"  # argparse names the type in its message: "invalid number value"
    return parse


async def _run(args: argparse.Namespace) -> None:
    session = SessionFile(args.target)
    token = os.environ.get("SENDINCHAT_TOKEN")
    async with Client(args.target, token_store=None if token else session) as client:
        if token:
            client.tokens = users_pb2.TokenPair(access_token=token)
        if args.command == "register":
            await commands.register(client, session, args)
        elif args.command == "login":
            await commands.login(client, session, args)
        elif args.command == "logout":
            # SENDINCHAT_TOKEN's session is ended; the saved one (perhaps another user's) is kept.
            await commands.logout(client, None if token else session, args)
        elif args.command == "me":
            await commands.me(client, args)
        elif args.command == "balance":
            await commands.balance(client, args)
        elif args.command == "pay":
            await commands.pay(client, args)
        elif args.command in ("history", "transfers"):
            await commands.history(client, args)
        elif args.command == "rooms":
            await rooms.run(client, args)
        elif args.command == "chat":
            await chat.run(client, args)


def main(argv: list[str] | None = None) -> None:
    """Entry point of `sendinchat-cli`."""
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("login", "register"):
            commands.ask_credentials(args)
        asyncio.run(_run(args))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(1) from None
    except (CliError, SendInChatError) as exc:
        message = explain(exc) if isinstance(exc, SendInChatError) else str(exc)
        print(f"sendinchat-cli: {message}", file=sys.stderr)
        raise SystemExit(1) from None
