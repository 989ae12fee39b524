"""`chat ROOM`: the room's recent history, then live messages; lines you type are sent, /pay pays.

Standard input is read with the event loop's reader (no thread blocked in readline), so Ctrl-C
cancels everything at once and the process leaves without waiting for Enter.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncGenerator

from sendinchat.cli.money import Currencies
from sendinchat.cli.output import CliError, Names, explain, shown, when
from sendinchat.cli.rooms import find_room, title
from sendinchat.client import ChatConnection, Client
from sendinchat.errors import SendInChatError
from sendinchat.v1 import chat_pb2, users_pb2

HELP = """\
  text                                   send a message
  /pay [USER] AMOUNT CURRENCY [memo]     pay (USER only in a group), e.g. /pay 2.50 USD coffee
  /request [USER] AMOUNT CURRENCY [memo] ask for money
  /accept, /decline                      answer the latest request made to you
  /cancel                                withdraw your latest open request
  /help, /quit (or Ctrl-C, Ctrl-D)       this help; leave"""

_CLEAR_TYPED_LINE = "\x1b[1A\x1b[2K"  # the terminal echoed the line; the room shows it as sent


async def _lines() -> AsyncGenerator[str, None]:
    """Lines of standard input, read without a thread (a tty, a pipe; a file is read at once)."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    fd = sys.stdin.fileno()
    buffer = bytearray()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            if buffer:
                queue.put_nowait(buffer.decode(errors="replace"))
            queue.put_nowait(None)
            return
        buffer.extend(data)
        while (end := buffer.find(b"\n")) >= 0:
            queue.put_nowait(buffer[:end].decode(errors="replace").rstrip("\r"))
            del buffer[: end + 1]

    try:
        loop.add_reader(fd, readable)
    except PermissionError:  # a regular file: epoll refuses it, and reading it cannot block
        for line in sys.stdin.read().splitlines():
            queue.put_nowait(line)
        queue.put_nowait(None)
    try:
        while (line := await queue.get()) is not None:
            yield line
    finally:
        loop.remove_reader(fd)


class ChatRoom:
    """One room on screen: renders what arrives, turns what is typed into messages and payments."""

    def __init__(
        self, client: Client, me: users_pb2.User, room: chat_pb2.Room, currencies: Currencies
    ) -> None:
        self._client = client
        self._me = me
        self._room = room
        self._currencies = currencies
        self._names = Names(client, {m.user_id: m.username for m in room.members})
        self._open_requests: dict[str, chat_pb2.PaymentRequestInfo] = {}
        self._erase_typed = sys.stdin.isatty() and sys.stdout.isatty()

    async def show(self, connection: ChatConnection) -> None:
        """Print every event worth a line until the stream ends; what is shown is marked read."""
        async for event in connection.events():
            kind = event.WhichOneof("event")
            if kind == "message":
                print(await self.render(event.message), flush=True)
                with contextlib.suppress(SendInChatError):
                    await connection.mark_read(self._room.id, event.message.sequence)
            elif kind == "error":
                print(f"! {event.error.message}", flush=True)
            elif kind == "presence" and event.presence.user_id != self._me.id:
                state = "here" if event.presence.online else "gone"
                print(f"  · {await self._names.of(event.presence.user_id)} is {state}", flush=True)

    async def render(self, message: chat_pb2.Message) -> str:
        """One message as a line: time, who, what."""
        stamp = f"[{when(message.create_time)}]"
        if message.kind == chat_pb2.MESSAGE_KIND_PAYMENT:
            transfer = message.payment.transfer
            amount = self._currencies.format(transfer.amount_minor, transfer.currency)
            payer, payee = (
                await self._names.of(transfer.from_user_id),
                await self._names.of(transfer.to_user_id),
            )
            return f"{stamp} {payer} paid {payee} {amount}" + _memo(message.payment.memo)
        if message.kind == chat_pb2.MESSAGE_KIND_PAYMENT_REQUEST:
            return f"{stamp} {await self._request_line(message.payment_request)}"
        if message.kind == chat_pb2.MESSAGE_KIND_SYSTEM or not message.sender_user_id:
            return f"{stamp} * {_lines_of(message.text)}"
        return f"{stamp} {await self._names.of(message.sender_user_id)}: {_lines_of(message.text)}"

    async def _request_line(self, request: chat_pb2.PaymentRequestInfo) -> str:
        amount = self._currencies.format(request.amount_minor, request.currency)
        asker, payer = await self._names.of(request.to_user_id), await self._names.of(request.from_user_id)
        if request.state != chat_pb2.PAYMENT_REQUEST_STATE_OPEN:
            self._open_requests.pop(request.id, None)
            done = {
                chat_pb2.PAYMENT_REQUEST_STATE_PAID: f"{payer} paid {asker}'s request for {amount}",
                chat_pb2.PAYMENT_REQUEST_STATE_DECLINED: f"{payer} declined {asker}'s request for {amount}",
                chat_pb2.PAYMENT_REQUEST_STATE_CANCELLED: f"{asker} cancelled the request for {amount}",
            }
            return done.get(request.state, f"{asker}'s request to {payer} for {amount} expired")
        self._open_requests[request.id] = request
        hint = ""
        if request.from_user_id == self._me.id:
            hint = "  (/accept or /decline)"
        elif request.to_user_id == self._me.id:
            hint = "  (/cancel to withdraw)"
        return f"{asker} asks {payer} for {amount}" + _memo(request.memo) + hint

    async def handle(self, line: str) -> bool:
        """Act on one typed line; False when the user leaves."""
        if self._erase_typed:
            print(_CLEAR_TYPED_LINE, end="", flush=True)
        text = line.strip()
        if not text:
            return True
        try:
            if not text.startswith("/"):
                await self._client.send_message(self._room.id, text)
                return True
            command, *words = text.split()
            if command in ("/quit", "/exit", "/leave"):
                return False
            await self._command(command, words)
        except (SendInChatError, CliError) as exc:
            print(f"! {explain(exc) if isinstance(exc, SendInChatError) else exc}", flush=True)
        return True

    async def _command(self, command: str, words: list[str]) -> None:
        if command == "/pay":
            other, amount_minor, code, memo = await self._money(words, "/pay")
            await self._client.send_payment(
                room_id=self._room.id, to_user_id=other, currency=code, amount_minor=amount_minor, memo=memo
            )
        elif command == "/request":
            other, amount_minor, code, memo = await self._money(words, "/request")
            await self._client.request_payment(
                room_id=self._room.id, from_user_id=other, currency=code, amount_minor=amount_minor, memo=memo
            )
        elif command in ("/accept", "/decline"):
            request = self._latest_request(payer=self._me.id)
            if command == "/accept":
                await self._client.accept_payment_request(request.id)
            else:
                await self._client.decline_payment_request(request.id)
        elif command == "/cancel":
            await self._client.cancel_payment_request(self._latest_request(asker=self._me.id).id)
        elif command == "/help":
            print(HELP, flush=True)
        else:
            raise CliError(f"unknown command {command}; /help lists them")

    async def _money(self, words: list[str], command: str) -> tuple[str, int, str, str]:
        """Who, how much (minor units), which currency and why, from `[USER] AMOUNT CURRENCY [memo]`."""
        others = [m for m in self._room.members if m.user_id != self._me.id]
        named = bool(words) and words[0][0] not in "0123456789.,"
        if named:
            wanted = words.pop(0).removeprefix("@").lower()
            chosen = [m for m in others if m.username == wanted]
            if not chosen:  # maybe someone who joined since the chat opened
                self._room = await self._client.get_room(self._room.id)
                chosen = [m for m in self._room.members if m.username == wanted and m.user_id != self._me.id]
            if not chosen:
                raise CliError(f"{wanted} is not in this room")
        elif self._room.kind == chat_pb2.ROOM_KIND_DIRECT and others:
            chosen = others
        else:
            raise CliError(f"in a group, say who: {command} USER AMOUNT CURRENCY [memo]")
        if len(words) < 2:
            raise CliError(f"usage: {command} {'USER ' if named else ''}AMOUNT CURRENCY [memo]")
        amount_minor, code = self._currencies.parse(words[0], words[1])
        return chosen[0].user_id, amount_minor, code, " ".join(words[2:])

    def _latest_request(self, *, payer: str = "", asker: str = "") -> chat_pb2.PaymentRequestInfo:
        for request in reversed(self._open_requests.values()):
            if (payer and request.from_user_id == payer) or (asker and request.to_user_id == asker):
                return request
        raise CliError("no open payment request " + ("to you" if payer else "of yours") + " here")


def _lines_of(text: str) -> str:
    """A message's text, its later lines indented: none of them passes for a line of its own."""
    return shown(text).replace("\n", "\n    │ ")


def _memo(memo: str) -> str:
    return f": {shown(memo)}" if memo else ""


async def run(client: Client, args: argparse.Namespace) -> None:
    """`chat ROOM`: until Ctrl-C, Ctrl-D or /quit."""
    currencies = await Currencies.fetch(client)
    me = await client.get_me()
    room = await find_room(client, args.room, me.id, create_direct=True)
    screen = ChatRoom(client, me, room, currencies)
    pay = "/pay USER AMOUNT CURRENCY" if room.kind == chat_pb2.ROOM_KIND_GROUP else "/pay AMOUNT CURRENCY"
    print(f"── {title(room, me.id)} ── type to send · {pay} · /help · Ctrl-C leaves", flush=True)
    connection = client.connect()
    await connection.subscribe(room.id, after_sequence=max(0, room.last_sequence - args.history))
    showing = asyncio.create_task(screen.show(connection))

    async def typed() -> None:
        async with contextlib.aclosing(_lines()) as lines:
            async for line in lines:
                if not await screen.handle(line):
                    return

    reading = asyncio.create_task(typed())
    try:
        done, _ = await asyncio.wait({showing, reading}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # the stream's end (session over, server gone) is the user's to see
    finally:
        for task in (showing, reading):
            task.cancel()
        await asyncio.gather(showing, reading, return_exceptions=True)
        with contextlib.suppress(SendInChatError):
            await connection.close()
