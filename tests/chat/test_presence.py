"""Presence across server processes (replicas) sharing one database (migration 0006)."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from sendinchat.v1 import chat_pb2
from tests import harness
from tests.chat.support import WAIT, Stream, group
from tests.helpers import Account, signed_up
from tests.ops.dbproxy import DatabaseProxy


async def _replicas_recording(pool: asyncpg.Pool, room_id: str, user_id: str, count: int) -> None:
    """Wait until `count` replicas have recorded the user as present in the room."""
    async with asyncio.timeout(WAIT):
        while True:
            recorded = await pool.fetchval(
                "SELECT count(*) FROM chat_presence WHERE room_id = $1 AND user_id = $2", room_id, user_id
            )
            if recorded == count:
                return
            await asyncio.sleep(0.02)


async def _fall_silent(pool: asyncpg.Pool, replica: str) -> None:
    """Make a replica look silent for an hour and reap it, in one transaction.

    The server's own heartbeat, every few seconds, cannot come between the two.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "UPDATE chat_replicas SET seen_at = seen_at - interval '1 hour' WHERE replica = $1", replica
        )
        await conn.execute("SELECT chat_presence_reap(interval '30 seconds', 500)")


async def _presence(watcher: Stream) -> tuple[str, bool]:
    presence = (await watcher.next_of("presence")).presence
    return presence.user_id, presence.online


async def _two_replicas_and_alice_watching(
    servers: harness.ServerFactory, second_through: DatabaseProxy | None = None
) -> tuple[harness.TestServer, harness.TestServer, Account, chat_pb2.Room, Stream]:
    """Two replicas on one database; Alice watches a room she shares with Bob, on the first."""
    first = await servers.start()
    url = first.database_url
    second = await servers.start(url if second_through is None else second_through.url_for(url))
    alice, bob = await signed_up(first.stubs), await signed_up(first.stubs)
    room = await group(first.stubs, alice, bob)
    watcher = Stream(first.stubs, alice)
    await watcher.subscribe(room.id)
    return first, second, bob, room, watcher


async def _bob_present_and_alice_watching(
    server: harness.TestServer,
) -> tuple[Account, chat_pb2.Room, Stream, Stream]:
    """Bob's stream in a room he shares with Alice, recorded; Alice's stream there watching."""
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    room = await group(server.stubs, alice, bob)
    watcher, present = Stream(server.stubs, alice), Stream(server.stubs, bob)
    await watcher.subscribe(room.id)
    await present.subscribe(room.id)
    assert await _presence(watcher) == (bob.id, True)
    await _replicas_recording(server.pool, room.id, bob.id, 1)
    return bob, room, watcher, present


class TestPresenceAcrossReplicas:
    async def test_a_user_stays_online_while_a_stream_on_any_replica_is_open(self, servers):
        first, second, bob, room, watcher = await _two_replicas_and_alice_watching(servers)
        here, there = Stream(first.stubs, bob), Stream(second.stubs, bob)
        await here.subscribe(room.id)
        assert await _presence(watcher) == (bob.id, True)
        await there.subscribe(room.id)
        await _replicas_recording(first.pool, room.id, bob.id, 2)
        assert await first.pool.fetchval("SELECT count(*) FROM chat_replicas") == 2  # joined at start

        await here.close()
        await _replicas_recording(first.pool, room.id, bob.id, 1)
        await there.write(typing=chat_pb2.TypingFrame(room_id=room.id))
        frame = await watcher.next()
        assert frame.WhichOneof("event") == "typing"  # and no "offline" before it

        await there.close()
        assert await _presence(watcher) == (bob.id, False)
        await watcher.close()

    async def test_the_users_of_a_stopping_replica_go_offline(self, servers):
        first, second, bob, room, watcher = await _two_replicas_and_alice_watching(servers)
        leaving = Stream(second.stubs, bob)
        await leaving.subscribe(room.id)
        assert await _presence(watcher) == (bob.id, True)
        await second.running.stop()
        assert await _presence(watcher) == (bob.id, False)
        await _replicas_recording(first.pool, room.id, bob.id, 0)
        assert await first.pool.fetchval("SELECT count(*) FROM chat_replicas") == 1  # it said goodbye
        await leaving.close()
        await watcher.close()

    async def test_the_users_of_a_silent_replica_go_offline(self, server, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        watcher = Stream(stubs, alice)
        await watcher.subscribe(room.id)
        crashed = str(uuid.uuid4())
        await server.pool.execute("INSERT INTO chat_replicas VALUES ($1, clock_timestamp())", crashed)
        await server.pool.execute("SELECT chat_presence_set($1, $2, $3, true)", room.id, bob.id, crashed)
        assert await _presence(watcher) == (bob.id, True)

        await _fall_silent(server.pool, crashed)
        assert await _presence(watcher) == (bob.id, False)
        remembered = "SELECT count(*) FROM chat_replicas WHERE replica = $1"
        assert await server.pool.fetchval(remembered, crashed) == 0
        await watcher.close()

    async def test_a_lost_presence_row_comes_back_at_the_next_heartbeat(self, server):
        bob, room, watcher, present = await _bob_present_and_alice_watching(server)

        await server.pool.execute("DELETE FROM chat_presence")  # as a database crash empties it
        assert await _presence(watcher) == (bob.id, True)  # recorded again, so announced again
        await _replicas_recording(server.pool, room.id, bob.id, 1)
        await present.close()
        assert await _presence(watcher) == (bob.id, False)
        await watcher.close()

    async def test_a_replica_dropped_as_silent_records_its_presence_again(self, server):
        bob, room, watcher, present = await _bob_present_and_alice_watching(server)
        (replica,) = [r["replica"] for r in await server.pool.fetch("SELECT replica FROM chat_replicas")]

        await _fall_silent(server.pool, str(replica))  # say its database connection was cut for a while
        assert await _presence(watcher) == (bob.id, False)
        assert await _presence(watcher) == (bob.id, True)  # its next heartbeat
        await _replicas_recording(server.pool, room.id, bob.id, 1)
        await present.close()
        assert await _presence(watcher) == (bob.id, False)
        await watcher.close()

    async def test_a_replica_cut_off_from_the_database_records_its_changes_once_it_is_back(
        self, servers, postgres
    ):
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        try:
            direct, behind_proxy, bob, room, watcher = await _two_replicas_and_alice_watching(servers, proxy)
            cut_off = Stream(behind_proxy.stubs, bob)
            await cut_off.subscribe(room.id)
            assert await _presence(watcher) == (bob.id, True)

            await proxy.cut()
            await cut_off.close()  # its replica cannot record that yet, and keeps retrying
            await asyncio.sleep(1.5)
            await proxy.start()
            assert await _presence(watcher) == (bob.id, False)
            await _replicas_recording(direct.pool, room.id, bob.id, 0)
            await watcher.close()
        finally:
            await proxy.close()
