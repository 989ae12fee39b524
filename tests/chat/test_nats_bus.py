"""Chat over NATS (SENDINCHAT_CHAT_BUS): replicas on a real 3-node cluster, nodes killed, replicas cut off."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import grpc
import nats as nats_client
import pytest
from google.rpc import code_pb2
from nats.aio.msg import Msg

from sendinchat.v1 import chat_pb2
from server.chat import events
from server.chat.bus import quiet_database_url
from server.chat.bus_nats import NatsBus, subject
from server.config import Config, ConfigError
from server.errors import UnavailableError
from tests import harness
from tests.chat.nats_cluster import NatsCluster
from tests.chat.support import WAIT, Stream, group, room_locked, say, watched_group
from tests.helpers import Account, signed_up, waiting_on_a_lock
from tests.ops.dbproxy import DatabaseProxy


async def _replica(
    servers: harness.ServerFactory, nats: NatsCluster, url: str | None = None, **overrides: Any
) -> harness.TestServer:
    """A server on the NATS bus; its pool's sessions notify nothing (as app.py connects them)."""
    overrides.setdefault("chat_bus", nats.urls)
    return await servers.start(url or quiet_database_url(await servers.database()), **overrides)


def _bus(server: harness.TestServer) -> NatsBus:
    bus = server.running.chat_bus
    assert isinstance(bus, NatsBus)
    return bus


@contextlib.asynccontextmanager
async def _notifications(url: str) -> AsyncIterator[list[str]]:
    """Every chat_events notification on the database while the block runs."""
    heard: list[str] = []
    conn = await asyncpg.connect(url)
    try:
        await conn.add_listener("chat_events", lambda *args: heard.append(str(args[3])))
        yield heard
        await conn.execute("SELECT 1")  # whatever was notified before this answer has arrived
    finally:
        await conn.close()


async def _eventually(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT):
        while True:
            if check():
                return
            await asyncio.sleep(0.02)


async def _burst(
    stubs: Any, who: Account, room_id: str, count: int, *, then: Any = None, at: int = -1
) -> None:
    for i in range(count):
        if i == at:
            then()
        await say(stubs, who, room_id, f"{who.username} {i}")


async def _greet_until_heard(
    first: harness.TestServer, second: harness.TestServer, alice: Account, bob: Account, room_id: str
) -> int:
    """Messages sent from both replicas until each has received one of the other's over NATS."""
    sent = 0
    async with asyncio.timeout(WAIT):
        while not (_bus(first).received and _bus(second).received):
            await say(first.stubs, alice, room_id, "hello")
            await say(second.stubs, bob, room_id, "hello")
            sent += 2
            await asyncio.sleep(0.05)
    return sent


def _in_order_once(messages: list[chat_pb2.Message], count: int) -> bool:
    return [m.sequence for m in messages] == list(range(1, count + 1))


class TestTwoReplicas:
    async def test_each_delivers_the_others_messages_in_order_and_the_database_notifies_nothing(
        self, servers, nats
    ):
        first = await _replica(servers, nats)
        second = await _replica(servers, nats, first.database_url)
        alice, bob = await signed_up(first.stubs), await signed_up(second.stubs)
        room = await group(first.stubs, alice, bob)
        async with _notifications(first.database_url) as heard:
            here, there = Stream(first.stubs, alice), Stream(second.stubs, bob)
            await here.subscribe(room.id)
            await there.subscribe(room.id)
            # Until each replica's interest has reached the node the other publishes to, the room
            # is read from the table instead (a delay, not a loss): greet until both hear NATS.
            greetings = await _greet_until_heard(first, second, alice, bob, room.id)
            before = _bus(first).received, _bus(second).received
            await asyncio.gather(
                _burst(first.stubs, alice, room.id, 20), _burst(second.stubs, bob, room.id, 20)
            )
            for stream in (here, there):
                got = await stream.messages(greetings + 40)
                assert _in_order_once(got, greetings + 40)
                for who in (alice, bob):
                    mine = [m.text for m in got[greetings:] if m.sender_user_id == who.id]
                    assert mine == [f"{who.username} {i}" for i in range(20)]
            await here.close()
            await there.close()
        assert heard == []
        # Each heard the other's 20 messages through NATS.
        assert _bus(first).received - before[0] >= 20 and _bus(second).received - before[1] >= 20

    async def test_typing_read_receipts_presence_and_removals_cross_replicas(self, servers, nats):
        # One node for both: these events have no catch-up, and a subscription's interest reaches
        # the other nodes of a cluster a moment after the subscribe (CI met that gap once).
        first = await _replica(servers, nats, chat_bus=nats.urls[:1])
        second = await _replica(servers, nats, first.database_url, chat_bus=nats.urls[:1])
        alice, bob, carol = [await signed_up(first.stubs) for _ in range(3)]
        room = await group(first.stubs, alice, bob, carol)
        watcher, bobs, carols = (
            Stream(first.stubs, alice),
            Stream(second.stubs, bob),
            Stream(second.stubs, carol),
        )
        await watcher.subscribe(room.id)
        await bobs.subscribe(room.id)
        assert (await watcher.next_of("presence")).presence.user_id == bob.id

        await bobs.write(typing=chat_pb2.TypingFrame(room_id=room.id))
        assert (await watcher.next_of("typing")).typing.user_id == bob.id
        hello = await say(first.stubs, alice, room.id, "hello")
        await bobs.write(read=chat_pb2.ReadFrame(room_id=room.id, sequence=hello.sequence))
        receipt = (await watcher.next_of("read_receipt")).read_receipt
        assert (receipt.user_id, receipt.sequence) == (bob.id, hello.sequence)

        await carols.subscribe(room.id)
        await first.stubs.chat.RemoveMember(
            chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=carol.id), metadata=alice.auth
        )
        error = (await carols.next_of("error")).error
        assert (error.code, error.room_id) == (grpc.StatusCode.NOT_FOUND.value[0], room.id)

        await bobs.close()
        while True:
            presence = (await watcher.next_of("presence")).presence
            if presence.user_id == bob.id:
                assert not presence.online
                break
        await watcher.close()
        await carols.close()


class TestFailures:
    async def test_a_nats_node_killed_mid_burst_loses_nothing_and_repeats_nothing(self, servers, nats):
        first = await _replica(servers, nats)
        second = await _replica(servers, nats, first.database_url)
        alice, bob = await signed_up(first.stubs), await signed_up(second.stubs)
        room = await group(first.stubs, alice, bob)
        here, there = Stream(first.stubs, alice), Stream(second.stubs, bob)
        await here.subscribe(room.id)
        await there.subscribe(room.id)
        killed = _bus(first).connected_server
        assert killed is not None

        await asyncio.gather(
            _burst(first.stubs, alice, room.id, 100),
            _burst(second.stubs, bob, room.id, 100, then=lambda: nats.kill(killed), at=30),
        )
        await say(second.stubs, bob, room.id, "the end")
        for stream in (here, there):
            got = await stream.messages(201)
            assert _in_order_once(got, 201) and got[-1].text == "the end"
        await _eventually(lambda: _bus(first).connected_server not in (None, killed))
        await here.close()
        await there.close()

    async def test_a_replica_cut_off_from_nats_catches_up_once_it_is_back(self, servers, nats, monkeypatch):
        # No periodic catch-up: what the stream gets while nothing new is sent is the reconnect's doing.
        monkeypatch.setattr(NatsBus, "catch_up_seconds", None)
        proxy = DatabaseProxy(f"postgresql://nats@{nats.nodes[0].address}/nats")  # any TCP will do
        await proxy.start()
        try:
            # On the node the proxy leads to: an interest registered there holds at once, where one
            # spreading to another node races the first publish (the periodic catch-up is off here).
            first = await _replica(servers, nats, chat_bus=nats.urls[:1])
            second = await _replica(
                servers, nats, first.database_url, chat_bus=(f"nats://127.0.0.1:{proxy.port}",)
            )
            alice, bob = await signed_up(first.stubs), await signed_up(second.stubs)
            room = await group(first.stubs, alice, bob)
            watcher = Stream(second.stubs, bob)
            await watcher.subscribe(room.id)
            await say(first.stubs, alice, room.id, "before")
            assert [m.text for m in await watcher.messages(1)] == ["before"]

            await proxy.cut()
            await _eventually(lambda: _bus(second).connected_server is None)
            for i in range(5):
                await say(first.stubs, alice, room.id, f"while cut off {i}")
            await proxy.start()
            missed = await watcher.messages(5)
            assert [m.text for m in missed] == [f"while cut off {i}" for i in range(5)]
            await say(first.stubs, alice, room.id, "after")
            assert [m.sequence for m in await watcher.messages(1)] == [7]
            await watcher.close()
        finally:
            await proxy.close()

    async def test_a_message_whose_caller_gave_up_is_published_all_the_same(self, servers, nats):
        server = await _replica(servers, nats)
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        heard: list[events.ChatEvent] = []
        listener = await nats_client.connect(servers=list(nats.urls))
        try:

            async def hear(msg: Msg) -> None:
                heard.append(events.decode(msg.data.decode()))

            await listener.subscribe(subject(room.id), cb=hear)
            await listener.flush()
            request = chat_pb2.SendMessageRequest(room_id=room.id, text="given up")
            async with room_locked(server, room.id) as holder:
                call = server.stubs.chat.SendMessage(request, metadata=alice.auth)
                await waiting_on_a_lock(holder)  # its batch is in the database
                call.cancel()
            await _eventually(lambda: events.MessageStored(room.id, 1) in heard)
        finally:
            await listener.close()

    async def test_a_message_no_bus_carried_arrives_with_the_periodic_catch_up(self, servers, nats):
        server = await _replica(servers, nats)
        alice, _, room, watcher = await watched_group(server.stubs)
        # Committed, never published: as by a replica that died right after its commit.
        await server.pool.execute("SELECT chat_send_message($1, $2, NULL, 'lost')", room.id, alice.id)
        assert [m.text for m in await watcher.messages(1)] == ["lost"]
        await watcher.close()

    async def test_a_removal_no_bus_carried_still_cuts_the_member_off(self, servers, nats):
        server = await _replica(servers, nats)
        alice, bob, room, watcher = await watched_group(server.stubs)
        # Committed, never published: as by a replica that died right after RemoveMember's commit.
        async with server.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room.id, bob.id
            )
            await conn.execute("SELECT chat_append($1, NULL, NULL, 'system', 'bob was removed')", room.id)
        await say(server.stubs, alice, room.id, "secret")  # its event wakes the room's feed here
        frames: list[chat_pb2.ConnectResponse] = []
        with contextlib.suppress(TimeoutError):
            while not frames or frames[-1].WhichOneof("event") != "error":
                frames.append(await asyncio.wait_for(watcher.frames.get(), 5.0))
        assert [f.message.text for f in frames if f.WhichOneof("event") == "message"] == []
        assert [f.error.code for f in frames if f.WhichOneof("event") == "error"] == [code_pb2.NOT_FOUND]
        await watcher.close()

    async def test_a_member_removed_while_their_replay_waits_gets_nothing_after_the_removal(
        self, servers, nats
    ):
        # The subscription's membership was checked; the removal commits (and is never published,
        # as by a replica that died after its commit) before the replay reads the log.
        server = await _replica(servers, nats)
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        await say(server.stubs, alice, room.id, "welcome")
        watcher = Stream(server.stubs, bob)
        async with server.pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")  # replays wait
            await watcher.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id, after_sequence=0))
            assert (await watcher.next_of("subscribed")).subscribed.last_sequence == 1
            await waiting_on_a_lock(conn)
            await conn.execute(
                "DELETE FROM room_members WHERE room_id = $1 AND user_id = $2", room.id, bob.id
            )
            await conn.execute("SELECT chat_append($1, NULL, NULL, 'system', 'bob was removed')", room.id)
            await conn.execute("SELECT chat_append($1, $2, NULL, 'text', 'secret')", room.id, alice.id)
        frames: list[chat_pb2.ConnectResponse] = []
        with contextlib.suppress(TimeoutError):
            while not frames or frames[-1].WhichOneof("event") != "error":
                frames.append(await asyncio.wait_for(watcher.frames.get(), 5.0))
        assert [f.message.text for f in frames if f.WhichOneof("event") == "message"] == ["welcome"]
        assert [f.error.code for f in frames if f.WhichOneof("event") == "error"] == [code_pb2.NOT_FOUND]
        await watcher.close()


@contextlib.asynccontextmanager
async def _publisher(nats: NatsCluster) -> AsyncIterator[Callable[[events.ChatEvent], Any]]:
    """A plain NATS client, as anyone who reaches the NATS servers has: it publishes forged events."""
    client = await nats_client.connect(servers=list(nats.urls))

    async def publish(event: events.ChatEvent) -> None:
        await client.publish(subject(event.room_id), events.encode(event).encode())
        await client.flush()

    try:
        yield publish
    finally:
        await client.close()


class TestAHostilePublisher:
    async def test_a_forged_wake_up_while_a_stream_subscribes_does_not_silence_the_room(self, servers, nats):
        server = await _replica(servers, nats)
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        watcher = Stream(server.stubs, bob)
        holder = await asyncpg.connect(server.database_url)
        async with _publisher(nats) as publish:
            try:
                async with holder.transaction():
                    await holder.execute(
                        "LOCK TABLE room_members IN ACCESS EXCLUSIVE MODE"
                    )  # the check waits
                    await watcher.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id, after_sequence=0))
                    await waiting_on_a_lock(holder)  # following the room already, not yet confirmed
                    heard = _bus(server).received
                    while _bus(server).received == heard:
                        await publish(events.MessageStored(room.id, 999_999_999))
                        await asyncio.sleep(0.02)
            finally:
                await holder.close()
            await watcher.next_of("subscribed")
            await say(server.stubs, alice, room.id, "still heard")
            assert [m.text for m in await watcher.messages(1)] == ["still heard"]
        await watcher.close()

    async def test_a_forged_removal_does_not_cut_a_member_off(self, servers, nats):
        server = await _replica(servers, nats)
        alice, bob, room, watcher = await watched_group(server.stubs)
        async with _publisher(nats) as publish:
            heard = _bus(server).received
            await publish(events.MemberRemoved(room.id, bob.id))
            await _eventually(lambda: _bus(server).received > heard)
        await say(server.stubs, alice, room.id, "still a member")
        frames: list[chat_pb2.ConnectResponse] = []
        while not frames or frames[-1].WhichOneof("event") != "message":
            frames.append(await asyncio.wait_for(watcher.frames.get(), WAIT))
        assert [f.WhichOneof("event") for f in frames if f.WhichOneof("event") == "error"] == []
        assert frames[-1].message.text == "still a member"
        await watcher.close()


class TestInterest:
    async def test_a_replica_with_no_follower_of_a_room_receives_none_of_its_events(self, servers, nats):
        followed_here = await _replica(servers, nats)
        elsewhere = await _replica(servers, nats, followed_here.database_url)
        sender = await _replica(servers, nats, followed_here.database_url)
        alice, bob, carol = [await signed_up(sender.stubs) for _ in range(3)]
        busy = await group(sender.stubs, carol, alice, name="busy")
        quiet = await group(sender.stubs, carol, bob, name="quiet")
        on_busy, on_quiet = Stream(followed_here.stubs, alice), Stream(elsewhere.stubs, bob)
        await on_busy.subscribe(busy.id)
        await on_quiet.subscribe(quiet.id)

        await _burst(sender.stubs, carol, busy.id, 10)
        await _burst(sender.stubs, carol, quiet.id, 3)
        assert len(await on_busy.messages(10)) == 10
        assert len(await on_quiet.messages(3)) == 3
        # One publisher, one connection: NATS keeps its order, so `busy` events would be in by now.
        await _eventually(lambda: _bus(followed_here).received == 10 and _bus(elsewhere).received == 3)
        await asyncio.sleep(0.2)
        assert (_bus(followed_here).received, _bus(elsewhere).received, _bus(sender).received) == (10, 3, 0)
        await on_busy.close()
        await on_quiet.close()


class TestConfiguration:
    def test_lists_every_server_when_later_ones_leave_out_the_scheme(self):
        config = Config.from_env({"SENDINCHAT_CHAT_BUS": "nats://10.0.0.1:4222, 10.0.0.2:4222,tls://h:1"})
        assert config.chat_bus == ("nats://10.0.0.1:4222", "nats://10.0.0.2:4222", "tls://h:1")
        assert Config.from_env({}).chat_bus == ()

    @pytest.mark.parametrize(
        "raw", ["h:4222", "nats://h", "http://h:1", "nats://h:1,", "nats://u:hunter2@h:99999"]
    )
    def test_refuses_what_is_not_a_server_list_without_echoing_it(self, raw):
        with pytest.raises(ConfigError) as caught:
            Config.from_env({"SENDINCHAT_CHAT_BUS": raw})
        assert str(caught.value).startswith("SENDINCHAT_CHAT_BUS: ")
        assert "hunter2" not in str(caught.value)

    async def test_start_fails_with_one_line_when_no_nats_server_answers(self, nats):
        node = nats.nodes[0]
        nats.kill(node.address)
        bus = NatsBus([node.url], connect_seconds=0.5)
        with pytest.raises(UnavailableError) as caught:
            await bus.start(lambda _event: None, lambda: None)
        assert "SENDINCHAT_CHAT_BUS" in str(caught.value) and node.address in str(caught.value)
