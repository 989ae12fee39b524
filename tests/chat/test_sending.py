"""Group commit of a room's messages (server/chat/sending.py), against the real database.

Each test drives its own MessageSender over the test server's pool. Messages that share a
transaction share `messages.xid`, which is how the tests see what went together.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from sendinchat.v1 import chat_pb2
from server.chat import sending
from server.chat.models import Message
from server.chat.sending import MessageOrder, MessageSender, Sent
from tests.chat.support import group, room_locked, say
from tests.helpers import Account, lock_waiters, signed_up, waiting_on_a_lock

HANG_GUARD_SECONDS = 10


def _order(room_id: str, sender: Account, text: str, client_message_id: str | None = None) -> MessageOrder:
    return MessageOrder(room_id=room_id, sender_id=sender.id, client_message_id=client_message_id, text=text)


async def _together(sender: MessageSender, orders: list[MessageOrder]) -> list[Sent]:
    return await asyncio.wait_for(asyncio.gather(*(sender.send(o) for o in orders)), HANG_GUARD_SECONDS)


async def _transactions(pool: asyncpg.Pool, room_id: str) -> list[list[int]]:
    """The room's sequences, grouped by the transaction that wrote them, in order."""
    rows = await pool.fetch(
        "SELECT array_agg(sequence ORDER BY sequence) AS seqs FROM messages WHERE room_id = $1"
        " GROUP BY xid ORDER BY min(sequence)",
        room_id,
    )
    return [list(row["seqs"]) for row in rows]


async def _group_and_sender(server: Any) -> tuple[Account, Account, chat_pb2.Room, MessageSender]:
    """Alice's group with Bob, and a MessageSender of its own over the server's pool and bus."""
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    room = await group(server.stubs, alice, bob)
    return alice, bob, room, MessageSender(server.pool, server.running.chat_bus)


class TestMessageSender:
    async def test_messages_that_wait_for_a_room_commit_together(self, server: Any) -> None:
        alice, bob, room, sender = await _group_and_sender(server)
        async with room_locked(server, room.id) as holder:
            first = asyncio.create_task(sender.send(_order(room.id, alice, "first")))
            await waiting_on_a_lock(holder)  # the first batch is in flight, behind the lock
            rest = asyncio.gather(*(sender.send(_order(room.id, bob, f"m{n}")) for n in range(5)))
            await asyncio.sleep(0.1)  # they queue behind the batch in flight
        sent = await asyncio.wait_for(asyncio.gather(first, rest), HANG_GUARD_SECONDS)
        assert sent[0] is not None and sent[0].sequence == 1
        assert [m.sequence for m in sent[1] if m is not None] == [2, 3, 4, 5, 6]
        assert await _transactions(server.pool, room.id) == [[1], [2, 3, 4, 5, 6]]

    async def test_each_message_of_a_batch_gets_its_own_answer(self, server: Any, stubs: Any) -> None:
        alice, bob, room, sender = await _group_and_sender(server)
        carol = await signed_up(stubs)
        sent = await _together(
            sender,
            [
                _order(room.id, alice, "one", "c-1"),
                _order(room.id, carol, "not a member"),
                _order(room.id, alice, "one again", "c-1"),
                _order(room.id, bob, "two", "c-1"),
            ],
        )
        first, outsider, retry, other = sent
        assert outsider is None
        assert first is not None and retry == first and first.body == "one"
        assert other is not None and (other.sequence, other.sender_id) == (2, bob.id)
        assert await _transactions(server.pool, room.id) == [[1, 2]]
        assert sender.busy_rooms == 0

    async def test_a_message_the_database_refuses_fails_alone(self, server: Any) -> None:
        alice, _, room, sender = await _group_and_sender(server)
        texts = ["fine", "nul \x00", "ok"]  # PostgreSQL's text cannot hold NUL (the RPC refuses it first)
        orders = [_order(room.id, alice, text) for text in texts]
        sent = await asyncio.wait_for(
            asyncio.gather(*(sender.send(o) for o in orders), return_exceptions=True), HANG_GUARD_SECONDS
        )
        assert isinstance(sent[1], asyncpg.PostgresError)
        stored = [m for m in (sent[0], sent[2]) if isinstance(m, Message)]
        assert [m.body for m in stored] == ["fine", "ok"]
        assert await _transactions(server.pool, room.id) == [[1], [2]]
        assert sender.busy_rooms == 0

    async def test_a_room_is_forgotten_when_its_callers_gave_up(self, server: Any) -> None:
        alice, bob, room, sender = await _group_and_sender(server)
        async with room_locked(server, room.id) as holder:
            in_flight = asyncio.create_task(sender.send(_order(room.id, alice, "in flight")))
            await waiting_on_a_lock(holder)
            queued = asyncio.create_task(sender.send(_order(room.id, bob, "queued")))
            await asyncio.sleep(0.05)
            in_flight.cancel()
            queued.cancel()
        for _ in range(200):  # the batch in flight still runs to its end
            if sender.busy_rooms == 0:
                break
            await asyncio.sleep(0.01)
        assert sender.busy_rooms == 0
        # The batch in flight was stored (its caller had given up); the queued message never left.
        assert await _transactions(server.pool, room.id) == [[1]]

    async def test_a_failure_after_the_commit_is_not_retried(
        self, server: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        alice, _, room, sender = await _group_and_sender(server)

        def fail_to_read(row: asyncpg.Record) -> Sent:
            raise RuntimeError("cannot read the stored row")

        monkeypatch.setattr(sending, "_sent", fail_to_read)
        [outcome] = await asyncio.wait_for(
            asyncio.gather(sender.send(_order(room.id, alice, "once")), return_exceptions=True),
            HANG_GUARD_SECONDS,
        )
        assert isinstance(outcome, RuntimeError)
        assert await _transactions(server.pool, room.id) == [[1]]


class TestABusyRoom:
    async def test_takes_one_connection_however_many_messages_wait(self, server: Any, stubs: Any) -> None:
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        flood = server.config.db_pool_size * 2
        async with room_locked(server, room.id) as holder:
            sends = asyncio.gather(*(say(stubs, alice, room.id, f"m{n}") for n in range(flood)))
            await waiting_on_a_lock(holder)
            await asyncio.sleep(0.2)  # every send has reached the server
            waiting = len(await lock_waiters(holder))
            # The pool is not exhausted: the other rooms' calls are answered meanwhile.
            other = await asyncio.wait_for(group(stubs, bob, alice, name="elsewhere"), HANG_GUARD_SECONDS)
            await asyncio.wait_for(say(stubs, bob, other.id, "still served"), HANG_GUARD_SECONDS)
        sent = await asyncio.wait_for(sends, HANG_GUARD_SECONDS)
        assert waiting == 1
        assert sorted(m.sequence for m in sent) == list(range(1, flood + 1))
