"""sendinchat-cli in a real terminal (a pty): login with a password prompt, balance, pay, and chat."""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping

from sendinchat.v1 import chat_pb2
from tests.helpers import PASSWORD
from tests.sdk.cli import cli_env, logged_in_env
from tests.sdk.terminal import Terminal


@contextlib.asynccontextmanager
async def _terminal(env: Mapping[str, str], *args: str) -> AsyncIterator[Terminal]:
    terminal = Terminal()
    await terminal.start(*args, env=env)
    try:
        yield terminal
    finally:
        await terminal.close()


class TestTerminal:
    async def test_login_balance_and_pay_when_typed_at_a_terminal(self, server, alice, bob, tmp_path):
        alice_name, bob_name = (await alice.get_me()).username, (await bob.get_me()).username
        env = cli_env(server.address, tmp_path)
        async with _terminal(env, "login", alice_name) as login:
            await login.expect("password: ")
            login.type(PASSWORD + "\r")
            await login.expect(f"Logged in to .* as {alice_name}")
            assert await login.exit_status() == 0
        assert PASSWORD not in login.screen  # the prompt does not echo
        async with _terminal(env, "balance") as balance:
            await balance.expect(r"100\.00 USD")
            assert await balance.exit_status() == 0
        async with _terminal(env, "pay", bob_name, "12.34", "USD", "books") as pay:
            await pay.expect(rf"Sent 12\.34 USD to {bob_name}\. \(books\)")
            assert await pay.exit_status() == 0
        assert (await bob.get_account(currency="USD")).balance_minor == 1234

    async def test_chat_shows_usernames_sends_pays_and_leaves_at_once_on_ctrl_c(
        self, server, alice, bob, tmp_path
    ):
        alice_name, bob_name = (await alice.get_me()).username, (await bob.get_me()).username
        env = await logged_in_env(server.address, tmp_path, alice_name)
        room = (
            await bob.create_room(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[(await alice.get_me()).id])
        ).room
        await bob.send_message(room.id, "sent before you came")
        async with _terminal(env, "chat", bob_name) as chat:
            await chat.expect(f"── {bob_name} ──")
            await chat.expect(rf"\[\d\d:\d\d\] {bob_name}: sent before you came")  # history on open
            await bob.send_message(room.id, "hello alice")
            await chat.expect(f"{bob_name}: hello alice")

            chat.type("hi bob\r")
            await chat.expect(f"{alice_name}: hi bob")
            chat.type("/pay 2.50 USD coffee\r")
            await chat.expect(rf"{alice_name} paid {bob_name} 2\.50 USD: coffee")

            asked = await bob.request_payment(
                room_id=room.id, from_user_id=(await alice.get_me()).id, currency="USD", amount_minor=100
            )
            await chat.expect(rf"{bob_name} asks {alice_name} for 1\.00 USD  \(/accept or /decline\)")
            chat.type("/accept\r")
            await chat.expect(rf"{alice_name} paid {bob_name}'s request for 1\.00 USD")

            chat.type("/pay 1000 USD\r")
            await chat.expect("! insufficient funds")
            chat.type("half a line, not sent")
            chat.interrupt()
            assert await chat.exit_status() == 130
        texts = [m.text async for m in bob.list_messages(room.id) if m.kind == chat_pb2.MESSAGE_KIND_TEXT]
        assert texts == ["hi bob", "hello alice", "sent before you came"]
        assert (await bob.get_account(currency="USD")).balance_minor == 350
        closed = await bob.get_room(room.id)
        assert closed.last_message.payment_request.id == asked.payment_request.id
        assert not re.search(r"\b[0-9a-f]{8}: ", chat.screen)  # names, never ids

    async def test_chat_in_a_group_pays_the_member_named(self, server, alice, bob, tmp_path):
        alice_name, bob_name = (await alice.get_me()).username, (await bob.get_me()).username
        env = await logged_in_env(server.address, tmp_path, alice_name)
        await alice.create_room(
            kind=chat_pb2.ROOM_KIND_GROUP, name="crew", member_user_ids=[(await bob.get_me()).id]
        )
        async with _terminal(env, "chat", "crew") as chat:
            await chat.expect("── crew ──")
            chat.type("/pay 1 USD\r")
            await chat.expect("in a group, say who")
            chat.type(f"/pay {bob_name} 1 USD\r")
            await chat.expect(rf"{alice_name} paid {bob_name} 1\.00 USD")
            chat.type("/quit\r")
            assert await chat.exit_status() == 0
        assert (await bob.get_account(currency="USD")).balance_minor == 100
