"""Connect under faults: a frame that fails for a reason of the server's is answered, and the stream stays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sendinchat.v1 import chat_pb2
from tests.chat.support import Stream, group
from tests.helpers import signed_up
from tests.ops.dbproxy import DatabaseProxy


@contextlib.asynccontextmanager
async def _room_behind_a_proxy(
    servers: Any, postgres: Any
) -> AsyncIterator[tuple[DatabaseProxy, Stream, chat_pb2.Room]]:
    """A server reaching its database through a proxy the test can cut, and alice's stream."""
    proxy = DatabaseProxy(postgres.admin_url)
    await proxy.start()
    try:
        server = await servers.start(proxy.url_for(await servers.database()))
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        stream = Stream(server.stubs, alice)
        try:
            yield proxy, stream, room
        finally:
            await stream.close()
    finally:
        await proxy.close()


class TestFrameErrors:
    async def test_a_frame_the_database_cannot_serve_gets_unavailable_and_the_stream_stays(
        self, servers, postgres
    ):
        async with _room_behind_a_proxy(servers, postgres) as (proxy, stream, room):
            await stream.subscribe(room.id)
            await stream.write(ping=chat_pb2.PingFrame(nonce="replayed"))  # answered after the replay
            assert (await stream.next_of("pong")).pong.nonce == "replayed"
            await proxy.cut()
            await stream.write(send=chat_pb2.SendFrame(room_id=room.id, client_message_id="m1", text="hi"))
            error = (await stream.next_of("error")).error
            assert (error.code, error.client_message_id) == (chat_pb2.ERROR_CODE_UNAVAILABLE, "m1")
            await proxy.start()
            for _ in range(100):  # the pool reconnects on its own; the client sends the frame again
                await stream.write(
                    send=chat_pb2.SendFrame(room_id=room.id, client_message_id="m1", text="hi")
                )
                answer = await stream.next()
                if answer.WhichOneof("event") == "ack":
                    break
                await asyncio.sleep(0.1)
            assert answer.ack.client_message_id == "m1"
            assert stream.error is None

    async def test_a_replay_the_database_cannot_serve_loses_the_room_not_the_stream(self, servers, postgres):
        async with _room_behind_a_proxy(servers, postgres) as (proxy, stream, room):
            await stream.write(ping=chat_pb2.PingFrame(nonce="open"))
            await stream.next_of("pong")
            await proxy.cut()
            await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id))
            error = (await stream.next_of("error")).error
            assert (error.code, error.room_id) == (chat_pb2.ERROR_CODE_UNAVAILABLE, room.id)
            await stream.write(ping=chat_pb2.PingFrame(nonce="still open"))
            assert (await stream.next_of("pong")).pong.nonce == "still open"
            assert stream.error is None


class TestReplayErrors:
    async def test_a_replay_that_fails_loses_its_room_and_the_stream_stays(self, server):
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        stream = Stream(server.stubs, alice)
        try:
            await stream.write(ping=chat_pb2.PingFrame(nonce="open"))
            await stream.next_of("pong")
            # Membership is read from rooms and room_members; the replay reads messages.
            await server.pool.execute("ALTER TABLE messages RENAME TO messages_away")
            try:
                await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id))
                assert (await stream.next_of("subscribed")).subscribed.room_id == room.id
                error = (await stream.next_of("error")).error
                assert (error.code, error.room_id) == (chat_pb2.ERROR_CODE_INTERNAL, room.id)
                assert "subscribe again" in error.message
            finally:
                await server.pool.execute("ALTER TABLE messages_away RENAME TO messages")
            await stream.write(ping=chat_pb2.PingFrame(nonce="still open"))
            assert (await stream.next_of("pong")).pong.nonce == "still open"
            assert stream.error is None
        finally:
            await stream.close()
