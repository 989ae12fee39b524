"""The typed SDK's ChatService methods against a real server: rooms, history, payments, the stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import jwt
import pytest

from sendinchat import ChatConnection, Client, InsufficientFundsError, NotFoundError, PermissionDeniedError
from sendinchat.v1 import chat_pb2
from tests import harness
from tests.sdk.conftest import logged_in
from tests.sdk.lossy import LossyProxy, proxied
from tests.sdk.test_client import expired_copy
from tests.sdk.test_ledger import _user_id

WAIT = 10.0


async def _direct(client: Client, other: Client) -> chat_pb2.Room:
    reply = await client.create_room(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[await _user_id(other)])
    return reply.room


async def _until(connection: ChatConnection, kind: str, count: int = 1) -> list[chat_pb2.ConnectResponse]:
    """Every event up to and including the count-th one of `kind`."""
    seen: list[chat_pb2.ConnectResponse] = []
    async with asyncio.timeout(WAIT):
        async for event in connection.events():
            seen.append(event)
            if sum(e.WhichOneof("event") == kind for e in seen) == count:
                return seen
    raise AssertionError(f"the stream ended after {seen}")


async def _kinds(connection: ChatConnection) -> list[str | None]:
    """The kinds of the events the connection yields until events() ends."""
    return [event.WhichOneof("event") async for event in connection.events()]


@contextlib.asynccontextmanager
async def _following_through_a_proxy(
    server: harness.TestServer, alice: Client
) -> AsyncIterator[tuple[LossyProxy, chat_pb2.Room, ChatConnection]]:
    """A reader behind a proxy whose connection follows its direct room with Alice, one message read."""
    async with proxied(server.address) as proxy, logged_in(proxy.address) as reader:
        room = await _direct(alice, reader)
        connection = reader.connect()
        await connection.subscribe(room.id, after_sequence=0)
        await alice.send_message(room.id, "before")
        await _until(connection, "message")
        yield proxy, room, connection


class TestRooms:
    async def test_creates_gets_and_lists_rooms_across_pages(self, alice, bob):
        bob_id = await _user_id(bob)
        created = await alice.create_room(
            kind=chat_pb2.ROOM_KIND_GROUP, name="team", member_user_ids=[bob_id]
        )
        direct = await _direct(alice, bob)
        assert created.created
        assert (
            await alice.create_room(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[bob_id])
        ).room.id == (direct.id)
        fetched = await bob.get_room(created.room.id)
        assert {m.user_id for m in fetched.members} == {await _user_id(alice), bob_id}
        listed = [room.id async for room in bob.list_rooms(page_size=1)]
        assert sorted(listed) == sorted([created.room.id, direct.id])

    async def test_adds_removes_and_leaves_members(self, server, alice, bob):
        async with logged_in(server.address) as carol:
            room = (await alice.create_room(kind=chat_pb2.ROOM_KIND_GROUP, name="g", member_user_ids=[])).room
            carol_id, bob_id = await _user_id(carol), await _user_id(bob)
            after_add = await alice.add_members(room.id, [bob_id, carol_id])
            assert len(after_add.members) == 3
            with pytest.raises(PermissionDeniedError):
                await bob.remove_member(room.id, carol_id)
            after_remove = await alice.remove_member(room.id, carol_id)
            assert {m.user_id for m in after_remove.members} == {await _user_id(alice), bob_id}
            await bob.leave_room(room.id)
            with pytest.raises(NotFoundError):
                await bob.get_room(room.id)


class TestMessages:
    async def test_history_pages_newest_first_or_oldest_first_after_a_sequence(self, alice, bob):
        room = await _direct(alice, bob)
        sent = [await alice.send_message(room.id, f"m{n}") for n in range(5)]
        newest_first = [m.text async for m in bob.list_messages(room.id, page_size=2)]
        assert newest_first == ["m4", "m3", "m2", "m1", "m0"]
        after = [m.sequence async for m in bob.list_messages(room.id, after_sequence=sent[2].sequence)]
        assert after == [sent[3].sequence, sent[4].sequence]

    async def test_send_message_returns_the_first_message_when_repeated_with_its_id(self, alice, bob):
        room = await _direct(alice, bob)
        first = await alice.send_message(room.id, "once", client_message_id="c-1")
        assert await alice.send_message(room.id, "once", client_message_id="c-1") == first

    async def test_mark_read_never_moves_backwards(self, alice, bob):
        room = await _direct(alice, bob)
        sent = [await alice.send_message(room.id, f"m{n}") for n in range(3)]
        assert await bob.mark_read(room.id, sent[2].sequence) == sent[2].sequence
        assert await bob.mark_read(room.id, sent[0].sequence) == sent[2].sequence
        assert (await bob.get_room(room.id)).unread_count == 0


class TestPayments:
    async def test_send_payment_moves_money_and_posts_a_payment_message(self, alice, bob):
        room = await _direct(alice, bob)
        paid = await alice.send_payment(
            room_id=room.id, to_user_id=await _user_id(bob), currency="USD", amount_minor=125, memo="lunch"
        )
        assert paid.message.kind == chat_pb2.MESSAGE_KIND_PAYMENT
        assert paid.message.payment.transfer.id == paid.transfer.id
        assert (await bob.get_account(currency="USD")).balance_minor == 125

    async def test_accepting_a_request_pays_it_and_declining_or_cancelling_closes_it(
        self, alice: Client, bob: Client
    ) -> None:
        room = await _direct(alice, bob)
        alice_id = await _user_id(alice)

        async def ask(amount: int) -> str:
            message = await bob.request_payment(
                room_id=room.id, from_user_id=alice_id, currency="USD", amount_minor=amount
            )
            assert message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_OPEN
            return message.payment_request.id

        accepted = await alice.accept_payment_request(await ask(300))
        assert accepted.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_PAID
        assert accepted.transfer.amount_minor == 300
        declined = await alice.decline_payment_request(await ask(1))
        assert declined.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_DECLINED
        cancelled = await bob.cancel_payment_request(await ask(2))
        assert cancelled.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_CANCELLED
        assert (await bob.get_account(currency="USD")).balance_minor == 300

    async def test_accepting_without_funds_raises_insufficient_funds(self, alice, bob):
        room = await _direct(alice, bob)
        message = await alice.request_payment(
            room_id=room.id, from_user_id=await _user_id(bob), currency="USD", amount_minor=1
        )
        with pytest.raises(InsufficientFundsError):
            await bob.accept_payment_request(message.payment_request.id)
        with pytest.raises(PermissionDeniedError):
            await alice.accept_payment_request(message.payment_request.id)


class TestChatConnection:
    async def test_first_subscribe_sends_one_subscribe_frame(self, alice, bob):
        room = await _direct(alice, bob)
        await alice.send_message(room.id, "earlier")
        connection = alice.connect()
        await connection.subscribe(room.id, after_sequence=0)
        await connection.ping("after-subscribe")
        events = await _until(connection, "pong")
        await connection.close()
        kinds = [e.WhichOneof("event") for e in events]
        assert kinds.count("subscribed") == 1
        assert [e.message.text for e in events if e.HasField("message")] == ["earlier"]

    async def test_resumes_after_the_connection_drops_without_gaps_or_duplicates(self, server, alice):
        async with _following_through_a_proxy(server, alice) as (proxy, room, connection):
            proxy.drop()
            for text in ("during", "after"):
                await alice.send_message(room.id, text)
            events = await _until(connection, "message", 2)
            await connection.close()
            assert proxy.accepted >= 2
        assert [e.message.text for e in events if e.HasField("message")] == ["during", "after"]

    async def test_keeps_reconnecting_while_the_server_is_down_and_resumes_when_it_is_back(
        self, server, alice
    ):
        async with _following_through_a_proxy(server, alice) as (proxy, room, connection):
            proxy.refusing = True
            proxy.drop()
            waiting = asyncio.ensure_future(_until(connection, "message"))
            await asyncio.sleep(1.5)  # several reconnections fail meanwhile
            assert not waiting.done(), waiting
            await alice.send_message(room.id, "while down")
            proxy.refusing = False
            events = await waiting
            await connection.close()
        assert [e.message.text for e in events if e.HasField("message")] == ["while down"]

    async def test_close_while_it_waits_to_reconnect_ends_events(self, server, alice):
        async with _following_through_a_proxy(server, alice) as (proxy, room, connection):
            proxy.refusing = True
            proxy.drop()
            reader = asyncio.ensure_future(_kinds(connection))
            await asyncio.sleep(0.8)  # between two reconnections
            await connection.close()
            proxy.refusing = False
            await alice.send_message(room.id, "after the close")
            async with asyncio.timeout(WAIT):
                assert await reader == []

    async def test_close_while_its_token_refresh_hangs_ends_events_and_the_session_goes_on(
        self, server, alice
    ):
        async with proxied(server.address) as proxy, logged_in(proxy.address) as reader_client:
            room = await _direct(alice, reader_client)
            assert reader_client.tokens is not None
            reader_client.tokens = expired_copy(reader_client.tokens)  # opening refreshes it first
            proxy.stall()  # the refresh reaches the server; its answer never comes back
            jti = jwt.decode(reader_client.tokens.refresh_token, options={"verify_signature": False})["jti"]
            connection = reader_client.connect()
            reader = asyncio.ensure_future(_kinds(connection))
            async with asyncio.timeout(WAIT):  # the server has rotated it: the answer is on its way
                used = "SELECT used_at IS NOT NULL FROM refresh_tokens WHERE jti = $1"
                while True:
                    if await server.pool.fetchval(used, jti):
                        break
                    await asyncio.sleep(0.02)
            await connection.close()
            async with asyncio.timeout(3):  # well before the refresh's own deadline
                assert await reader == []
            proxy.stall(False)
            await reader_client.refresh_token()  # the same request as the one given up
            assert (await reader_client.get_room(room.id)).id == room.id

    async def test_closing_the_client_ends_events_for_the_task_reading_them(self, server, alice):
        async with logged_in(server.address) as reader_client:
            room = await _direct(alice, reader_client)
            connection = reader_client.connect()
            await connection.subscribe(room.id, after_sequence=0)
            await _until(connection, "subscribed")
            reader = asyncio.ensure_future(_kinds(connection))
            await asyncio.sleep(0.2)
            await reader_client.close()
            async with asyncio.timeout(WAIT):
                assert await reader == []

    async def test_close_ends_events_for_the_task_reading_them(self, alice, bob):
        room = await _direct(alice, bob)
        connection = bob.connect()
        await connection.subscribe(room.id, after_sequence=0)
        await _until(connection, "subscribed")

        async def read_all() -> int:
            return len([event async for event in connection.events()])

        reader = asyncio.ensure_future(read_all())
        await asyncio.sleep(0.2)
        await connection.close()
        async with asyncio.timeout(WAIT):
            assert await reader >= 0  # ended, neither cancelled nor failed

    async def test_refreshes_the_token_and_resubscribes_when_the_stream_expires(self, servers, server, alice):
        short: harness.TestServer = await servers.start(
            database_url=server.database_url, access_token_ttl_seconds=1
        )
        async with logged_in(short.address) as reader:
            room = await _direct(alice, reader)
            first_tokens = reader.tokens
            connection = reader.connect()
            await connection.subscribe(room.id, after_sequence=0)
            await _until(connection, "subscribed")
            waiting = asyncio.ensure_future(_until(connection, "message"))
            await asyncio.sleep(2.5)  # the stream's token expires meanwhile
            sent = await alice.send_message(room.id, "still here")
            events = await waiting
            await connection.close()
            assert reader.tokens is not first_tokens
        assert [e.message.sequence for e in events if e.HasField("message")] == [sent.sequence]
