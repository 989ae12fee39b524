"""ChatService.Connect: subscribe, replay then live, acks, per-frame errors, ephemeral events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

import asyncpg
import grpc
import pytest
from google.rpc import code_pb2

from sendinchat.v1 import chat_pb2, chat_pb2_grpc, users_pb2
from server.chat.bus import quiet_database_url
from tests.chat.support import Stream, group, say, watched_group
from tests.helpers import Account, signed_up

_CHAT_LISTENERS = "datname = current_database() AND query LIKE 'LISTEN%chat_events%'"


async def _end_chat_listeners(pool: Any, *, oldest_only: bool = False) -> int:
    """End the servers' LISTEN connections (their events meanwhile are lost); how many were ended.

    `oldest_only`: only the listener of the server that started first.
    """
    oldest = f" AND backend_start = (SELECT min(backend_start) FROM pg_stat_activity WHERE {_CHAT_LISTENERS})"
    return int(
        await pool.fetchval(
            f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {_CHAT_LISTENERS}"
            f" AND pid <> pg_backend_pid(){oldest if oldest_only else ''}"
        )
    )


def _sequences(messages: list[chat_pb2.Message]) -> list[int]:
    return [m.sequence for m in messages]


class TestConnect:
    async def test_replays_history_then_goes_live_when_subscribing_from_zero(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for i in range(3):
            await say(stubs, alice, room.id, f"old {i}")
        stream = Stream(stubs, bob)
        subscribed = await stream.subscribe(room.id, 0)
        assert subscribed.room_id == room.id and subscribed.last_sequence == 3
        await say(stubs, alice, room.id, "new")
        got = await stream.messages(4)
        assert _sequences(got) == [1, 2, 3, 4]
        assert [m.text for m in got] == ["old 0", "old 1", "old 2", "new"]
        assert got[0].sender_user_id == alice.id and got[0].kind == chat_pb2.MESSAGE_KIND_TEXT
        await stream.close()

    async def test_replays_only_later_messages_when_resuming_from_a_sequence(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for i in range(5):
            await say(stubs, alice, room.id, f"m{i}")
        stream = Stream(stubs, bob)
        await stream.subscribe(room.id, 3)
        assert _sequences(await stream.messages(2)) == [4, 5]
        await stream.close()

    async def test_sends_only_new_messages_when_after_sequence_is_minus_one(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        await say(stubs, alice, room.id, "before")
        stream = Stream(stubs, bob)
        await stream.subscribe(room.id, -1)
        await say(stubs, alice, room.id, "after")
        got = await stream.messages(1)
        assert got[0].sequence == 2 and got[0].text == "after"
        await stream.close()

    async def test_acks_a_send_with_its_sequence_and_the_same_one_when_retried(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        listener = Stream(stubs, bob)
        await listener.subscribe(room.id, 0)
        sender = Stream(stubs, alice)
        for _ in range(2):
            await sender.write(send=chat_pb2.SendFrame(client_message_id="c-1", room_id=room.id, text="hi"))
            ack = (await sender.next_of("ack")).ack
            assert (ack.client_message_id, ack.room_id, ack.sequence) == ("c-1", room.id, 1)
        await sender.write(send=chat_pb2.SendFrame(client_message_id="c-2", room_id=room.id, text="two"))
        assert (await sender.next_of("ack")).ack.sequence == 2
        assert [m.text for m in await listener.messages(2)] == ["hi", "two"]
        await sender.close()
        await listener.close()

    async def test_answers_error_event_and_stays_open_when_a_frame_is_bad(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        stream = Stream(stubs, alice)
        await stream.write(send=chat_pb2.SendFrame(client_message_id="c-1", room_id=room.id, text=""))
        error = (await stream.next_of("error")).error
        assert error.code == code_pb2.INVALID_ARGUMENT
        assert (error.client_message_id, error.room_id) == ("c-1", room.id)
        await stream.write(send=chat_pb2.SendFrame(client_message_id="", room_id=room.id, text="x"))
        assert (await stream.next_of("error")).error.code == code_pb2.INVALID_ARGUMENT
        await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id="not-a-uuid"))
        assert (await stream.next_of("error")).error.code == code_pb2.INVALID_ARGUMENT
        await stream.write(ping=chat_pb2.PingFrame(nonce="still-open"))
        assert (await stream.next_of("pong")).pong.nonce == "still-open"
        await stream.close()

    async def test_sends_every_ack_then_ends_ok_when_the_client_half_closes(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        stream = Stream(stubs, alice)
        for n in range(5):
            await stream.write(
                send=chat_pb2.SendFrame(client_message_id=f"c{n}", room_id=room.id, text=f"t{n}")
            )
        await stream.call.done_writing()
        acks = [(await stream.next_of("ack")).ack for _ in range(5)]
        assert [(a.client_message_id, a.sequence) for a in acks] == [(f"c{n}", n + 1) for n in range(5)]
        assert await stream.wait_ended() is None
        assert await stream.call.code() == grpc.StatusCode.OK

    async def test_stops_sending_a_room_when_unsubscribed(self, stubs):
        alice, _, room, stream = await watched_group(stubs)
        await say(stubs, alice, room.id, "seen")
        assert _sequences(await stream.messages(1)) == [1]
        await stream.write(unsubscribe=chat_pb2.UnsubscribeFrame(room_id=room.id))
        await stream.write(ping=chat_pb2.PingFrame(nonce="a"))
        await stream.next_of("pong")
        await say(stubs, alice, room.id, "unseen")
        await stream.write(ping=chat_pb2.PingFrame(nonce="b"))
        frame = await stream.next()
        while frame.WhichOneof("event") in ("presence", "typing", "read_receipt"):
            frame = await stream.next()
        assert frame.WhichOneof("event") == "pong"
        await stream.close()

    async def test_relays_typing_presence_and_read_receipts_to_other_members(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        watcher = Stream(stubs, alice)
        await watcher.subscribe(room.id, 0)
        other = Stream(stubs, bob)
        await other.subscribe(room.id, 0)
        presence = (await watcher.next_of("presence")).presence
        assert (presence.room_id, presence.user_id, presence.online) == (room.id, bob.id, True)
        await other.write(typing=chat_pb2.TypingFrame(room_id=room.id))
        typing = (await watcher.next_of("typing")).typing
        assert (typing.room_id, typing.user_id) == (room.id, bob.id)
        await say(stubs, alice, room.id, "read me")
        await other.write(read=chat_pb2.ReadFrame(room_id=room.id, sequence=1))
        receipt = (await watcher.next_of("read_receipt")).read_receipt
        assert (receipt.room_id, receipt.user_id, receipt.sequence) == (room.id, bob.id, 1)
        await other.close()
        presence = (await watcher.next_of("presence")).presence
        assert (presence.user_id, presence.online) == (bob.id, False)
        await watcher.close()

    async def test_keeps_order_without_gaps_when_ten_senders_share_a_room(self, stubs):
        senders = [await signed_up(stubs) for _ in range(10)]
        reader = await signed_up(stubs)
        room = await group(stubs, senders[0], *senders[1:], reader)
        per_sender = 15
        total = per_sender * len(senders)
        receivers = [Stream(stubs, reader), Stream(stubs, senders[0])]
        for receiver in receivers:
            await receiver.subscribe(room.id, 0)

        async def send_all(index: int) -> list[int]:
            stream = Stream(stubs, senders[index])
            acks = []
            for n in range(per_sender):
                await stream.write(
                    send=chat_pb2.SendFrame(
                        client_message_id=f"{index}-{n}", room_id=room.id, text=f"{index}:{n}"
                    )
                )
                ack = (await stream.next_of("ack")).ack
                assert ack.client_message_id == f"{index}-{n}"
                acks.append(ack.sequence)
            await stream.close()
            return acks

        receiving = [asyncio.create_task(r.messages(total)) for r in receivers]
        acks = await asyncio.gather(*(send_all(i) for i in range(len(senders))))
        received = [await task for task in receiving]
        all_acks = sorted(s for sender_acks in acks for s in sender_acks)
        assert all_acks == list(range(1, total + 1))
        for sender_acks in acks:
            assert sender_acks == sorted(sender_acks)
        for messages in received:
            assert _sequences(messages) == list(range(1, total + 1))
            for index in range(len(senders)):
                mine = [m.text for m in messages if m.text.startswith(f"{index}:")]
                assert mine == [f"{index}:{n}" for n in range(per_sender)]
            assert {m.sequence: m.client_message_id for m in messages} == {
                s: f"{i}-{n}" for i, sender_acks in enumerate(acks) for n, s in enumerate(sender_acks)
            }
        for receiver in receivers:
            await receiver.close()

    async def test_delivers_each_message_once_when_messages_arrive_during_replay(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        await asyncio.gather(*(say(stubs, alice, room.id, f"h{i}") for i in range(250)))
        stream = Stream(stubs, bob)
        burst = asyncio.gather(*(say(stubs, alice, room.id, f"live{i}") for i in range(50)))
        await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id, after_sequence=0))
        await burst
        got = await stream.messages(300)
        assert _sequences(got) == list(range(1, 301))
        await say(stubs, alice, room.id, "last")
        assert _sequences(await stream.messages(1)) == [301]
        await stream.close()

    async def test_misses_and_doubles_nothing_when_resuming_after_a_disconnect_mid_burst(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        total = 200
        first = Stream(stubs, bob)
        await first.subscribe(room.id, 0)

        async def burst() -> None:
            for i in range(0, total, 10):
                await asyncio.gather(*(say(stubs, alice, room.id, f"b{i + k}") for k in range(10)))

        sending = asyncio.create_task(burst())
        seen = await first.messages(40)
        await first.close()  # forced disconnect while the burst goes on
        second = Stream(stubs, bob)
        await second.subscribe(room.id, seen[-1].sequence)
        rest = await second.messages(total - len(seen))
        await sending
        assert _sequences(seen + rest) == list(range(1, total + 1))
        await second.close()

    async def test_serves_a_client_on_each_replica_the_others_messages(self, server, servers):
        replica = await servers.start(database_url=server.database_url)
        alice, bob = await signed_up(server.stubs), await signed_up(replica.stubs)
        room = await group(server.stubs, alice, bob)
        on_first, on_second = Stream(server.stubs, alice), Stream(replica.stubs, bob)
        await on_first.subscribe(room.id, 0)
        await on_second.subscribe(room.id, 0)
        await say(server.stubs, alice, room.id, "from first")
        await say(replica.stubs, bob, room.id, "from second")
        for stream in (on_first, on_second):
            got = await stream.messages(2)
            assert [(m.sequence, m.text) for m in got] == [(1, "from first"), (2, "from second")]
            await stream.close()

    async def test_delivers_the_other_replicas_messages_in_order_while_this_one_keeps_sending(
        self, server, servers
    ):
        # Messages sent here are handed to the hub by their senders; the others' are read after a
        # wake-up, which waits only for the sends in flight when it came (later ones hold nothing).
        replica = await servers.start(database_url=server.database_url)
        alice, bob, carol = [await signed_up(server.stubs) for _ in range(3)]
        room = await group(server.stubs, alice, bob, carol)
        here = Stream(server.stubs, carol)
        await here.subscribe(room.id, 0)
        rounds, per_round = 10, 8

        async def local() -> None:
            for r in range(rounds):
                await asyncio.gather(
                    *(say(server.stubs, alice, room.id, f"a{r}.{k}") for k in range(per_round))
                )

        async def remote() -> None:
            for r in range(rounds):
                await say(replica.stubs, bob, room.id, f"b{r}")

        receiving = asyncio.create_task(here.messages(rounds * (per_round + 1)))
        await asyncio.gather(local(), remote())
        got = await receiving
        assert _sequences(got) == list(range(1, rounds * (per_round + 1) + 1))
        assert [m.text for m in got if m.text.startswith("b")] == [f"b{r}" for r in range(rounds)]
        await here.close()

    async def test_hands_its_own_send_to_the_room_however_the_id_is_spelled(self, server, servers):
        # On a database whose sessions notify nothing, a subscriber here gets only what this
        # server's senders hand to the room's feed: a room id in upper case must still find it.
        quiet = await servers.start(database_url=quiet_database_url(server.database_url))
        alice, bob = await signed_up(quiet.stubs), await signed_up(quiet.stubs)
        room = await group(quiet.stubs, alice, bob)
        stream = Stream(quiet.stubs, bob)
        await stream.subscribe(room.id, 0)
        await say(quiet.stubs, alice, room.id.upper(), "spelled in upper case")
        assert [(m.sequence, m.text) for m in await stream.messages(1)] == [(1, "spelled in upper case")]
        await stream.close()

    async def test_a_send_that_fails_here_holds_back_nothing(self, server, servers):
        # A send takes the room's feed ticket before its membership is checked; one that fails
        # must still release the wake-ups that came meanwhile.
        replica = await servers.start(database_url=server.database_url)
        alice, bob, mallory = [await signed_up(server.stubs) for _ in range(3)]
        room = await group(server.stubs, alice, bob)
        here = Stream(server.stubs, bob)
        await here.subscribe(room.id, 0)

        async def refused(i: int) -> None:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await say(server.stubs, mallory, room.id, f"m{i}")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        await asyncio.gather(*(refused(i) for i in range(20)), say(replica.stubs, alice, room.id, "there"))
        assert [(m.sequence, m.text) for m in await here.messages(1)] == [(1, "there")]
        await here.close()

    @pytest.mark.parametrize("earlier", [0, 1])
    async def test_loses_nothing_when_the_listener_connection_drops(self, server, earlier):
        alice, _, room, stream = await watched_group(server.stubs)
        for _ in range(earlier):
            await say(server.stubs, alice, room.id, "before")
        assert _sequences(await stream.messages(earlier)) == list(range(1, earlier + 1))
        assert await _end_chat_listeners(server.pool) == 1
        for i in range(3):
            await say(server.stubs, alice, room.id, f"during {i}")
        assert _sequences(await stream.messages(3)) == [earlier + 1, earlier + 2, earlier + 3]
        await stream.close()

    async def test_delivers_a_message_whose_read_failed_without_waiting_for_another(self, servers):
        # The hub's read of a room fails once (here: the catch-up after a listener reconnect runs
        # into a locked table and lock_timeout); the message must still arrive, with no later one.
        url = await servers.database()
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                f"ALTER DATABASE {await conn.fetchval('SELECT quote_ident(current_database())')}"
                " SET lock_timeout = '300ms'"
            )
        finally:
            await conn.close()
        here = await servers.start(database_url=url)
        there = await servers.start(database_url=url)
        alice, _, room, stream = await watched_group(here.stubs)
        await say(here.stubs, alice, room.id, "welcome")
        assert _sequences(await stream.messages(1)) == [1]
        async with here.pool.acquire() as lock, lock.transaction():
            assert await _end_chat_listeners(lock, oldest_only=True) == 1  # `here` started first
            await say(there.stubs, alice, room.id, "while away")  # its event is lost to `here`
            await lock.execute("LOCK TABLE messages IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(1.5)  # `here` reconnects, catches up, and its read times out
        got = await stream.messages(1)
        assert [(m.sequence, m.text) for m in got] == [(2, "while away")]
        await stream.close()


class TestConnectAccess:
    async def test_is_error_not_found_when_subscribing_to_a_room_of_others(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        stream = Stream(stubs, eve)
        await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id))
        error = (await stream.next_of("error")).error
        assert (error.code, error.room_id) == (code_pb2.NOT_FOUND, room.id)
        await stream.write(send=chat_pb2.SendFrame(client_message_id="x", room_id=room.id, text="sneaky"))
        assert (await stream.next_of("error")).error.code == code_pb2.NOT_FOUND
        await stream.write(typing=chat_pb2.TypingFrame(room_id=room.id))
        assert (await stream.next_of("error")).error.code == code_pb2.NOT_FOUND
        await stream.close()

    async def test_cuts_off_a_member_at_once_when_removed(self, stubs):
        alice, bob, room, stream = await watched_group(stubs)
        await say(stubs, alice, room.id, "welcome")
        assert _sequences(await stream.messages(1)) == [1]
        await stubs.chat.RemoveMember(
            chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id), metadata=alice.auth
        )
        await say(stubs, alice, room.id, "secret")
        error = (await stream.next_of("error")).error
        assert (error.code, error.room_id) == (code_pb2.NOT_FOUND, room.id)
        await stream.write(ping=chat_pb2.PingFrame(nonce="p"))
        frames = []
        while (frame := await stream.next()).WhichOneof("event") != "pong":
            frames.append(frame)
        assert not [f for f in frames if f.WhichOneof("event") == "message"]
        await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=room.id))
        assert (await stream.next_of("error")).error.code == code_pb2.NOT_FOUND
        await stream.close()

    async def test_cuts_off_a_member_removed_while_the_listener_was_away(self, server):
        # The removal's event is lost with the listener's connection; the catch-up after the
        # reconnect must not hand the removed member what the room said after the removal.
        alice, bob, room, stream = await watched_group(server.stubs)
        await say(server.stubs, alice, room.id, "welcome")
        assert _sequences(await stream.messages(1)) == [1]
        assert await _end_chat_listeners(server.pool) == 1
        await server.stubs.chat.RemoveMember(
            chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id), metadata=alice.auth
        )
        await say(server.stubs, alice, room.id, "secret")
        frames: list[chat_pb2.ConnectResponse] = []
        with contextlib.suppress(TimeoutError):
            while not frames or frames[-1].WhichOneof("event") != "error":
                frames.append(await asyncio.wait_for(stream.frames.get(), 5.0))
        assert [f.message.text for f in frames if f.WhichOneof("event") == "message"] == []
        assert [(f.error.code, f.error.room_id) for f in frames] == [(code_pb2.NOT_FOUND, room.id)]
        await stream.close()

    async def test_is_refused_unauthenticated_when_opened_without_a_token(self, stubs):
        call = stubs.chat.Connect()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_ends_unauthenticated_when_the_token_expires_and_resumes_with_a_fresh_one(self, servers):
        server = await servers.start(access_token_ttl_seconds=3)
        alice, bob, room, stream = await watched_group(server.stubs)
        error = await stream.wait_ended()
        assert error is not None and error.code() == grpc.StatusCode.UNAUTHENTICATED
        await say(server.stubs, await _fresh(server.stubs, alice), room.id, "while away")
        resumed = Stream(server.stubs, await _fresh(server.stubs, bob))
        await resumed.subscribe(room.id, 0)
        assert [m.text for m in await resumed.messages(1)] == ["while away"]
        await resumed.close()

    async def test_a_consumer_that_falls_far_behind_still_gets_every_message_once_and_in_order(self, servers):
        async with _reader_behind(servers, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, _ = behind
            total = await _flood(server.stubs, alice, room.id, fast, 200)
            received = await _read_messages(slow, total // 2)  # the stream is open and catching up
            await say(server.stubs, alice, room.id, "and one more")
            assert [m.text for m in await fast.messages(1)] == ["and one more"]
            await fast.close()
            await slow.done_writing()  # what was not queued must still be sent before the stream ends
            received += await _read_messages(slow, None)
            assert received == list(range(1, total + 2))
            assert await slow.code() == grpc.StatusCode.OK

    async def test_a_consumer_behind_gets_the_latest_read_receipt_of_each_member(self, servers):
        async with _reader_behind(servers, members=3, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, readers = behind
            total = 60
            for batch in range(1, total // 10 + 1):  # every member reads each batch: receipts pile up
                await _flood(server.stubs, alice, room.id, fast, 10, first=batch * 10 - 9)
                for reader in readers:
                    await server.stubs.chat.MarkRead(
                        chat_pb2.MarkReadRequest(room_id=room.id, sequence=batch * 10), metadata=reader.auth
                    )
            final = {reader.id for reader in readers}
            while final:  # the last receipts have reached the server's streams
                receipt = (await fast.next_of("read_receipt")).read_receipt
                if receipt.sequence == total:
                    final.discard(receipt.user_id)
            await fast.close()
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            assert [f.message.sequence for f in frames if f.HasField("message")] == list(range(1, total + 1))
            latest = {
                f.read_receipt.user_id: f.read_receipt.sequence for f in frames if f.HasField("read_receipt")
            }
            assert latest == {reader.id: total for reader in readers}
            assert await slow.code() == grpc.StatusCode.OK

    async def test_holds_back_a_client_that_sends_without_reading_instead_of_ending_it(self, servers):
        async with _reader_behind(servers, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, _ = behind
            total = await _flood(server.stubs, alice, room.id, fast, 100)  # the stream's window is full
            pings = 50
            for nonce in range(pings):
                await slow.write(chat_pb2.ConnectRequest(ping=chat_pb2.PingFrame(nonce=str(nonce))))
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            assert [f.message.sequence for f in frames if f.HasField("message")] == list(range(1, total + 1))
            assert [f.pong.nonce for f in frames if f.HasField("pong")] == [
                str(nonce) for nonce in range(pings)
            ]
            assert await slow.code() == grpc.StatusCode.OK

    async def test_ends_a_slow_consumer_too_far_behind_and_it_resumes_from_its_last_sequence(self, servers):
        limits = {"chat_stream_buffer": 8, "chat_stream_max_behind": 50}
        async with _reader_behind(servers, **limits) as behind:
            server, alice, bob, room, slow, fast, _ = behind
            total = await _flood(server.stubs, alice, room.id, fast, 100)
            received: list[int] = []
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                received += await _read_messages(slow, None)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert received == list(range(1, len(received) + 1)) and len(received) < total
            resumed = Stream(server.stubs, bob)
            await resumed.subscribe(room.id, len(received))
            assert _sequences(await resumed.messages(total - len(received))) == list(
                range(len(received) + 1, total + 1)
            )
            await resumed.close()

    async def test_a_slow_consumer_reading_nothing_is_ended_when_the_server_decides(self, servers):
        limits = {"chat_stream_buffer": 8, "chat_stream_max_behind": 50}
        with _rpc_logged() as logged:
            async with _reader_behind(servers, **limits) as behind:
                server, alice, bob, room, slow, fast, _ = behind
                await _flood(server.stubs, alice, room.id, fast, 100)
                # The handler is done (its RPC logged) although Bob has read nothing...
                await asyncio.wait_for(logged(bob.id, "/sendinchat.v1.ChatService/Connect").wait(), 10)
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _read_messages(slow, None)  # ...and the status still reaches him after his frames
                assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def test_a_newer_read_receipt_is_not_overtaken_by_an_older_one_that_waited(self, servers):
        async with _reader_behind(servers, members=9, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, (carol, *others) = behind
            await _flood(server.stubs, alice, room.id, fast, 150)
            for reader in others:  # their receipts wait, and carol's behind them
                await _mark_read(server.stubs, reader, room.id, 5)
            await _mark_read(server.stubs, carol, room.id, 10)
            await _seen_receipt(fast, carol, 10)
            await _read_messages(slow, 20)  # the queue has room again; the receipts still wait
            await _mark_read(server.stubs, carol, room.id, 20)
            await _seen_receipt(fast, carol, 20)
            await fast.close()
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            receipts = [f.read_receipt.sequence for f in frames if f.read_receipt.user_id == carol.id]
            assert receipts[-1:] == [20] and receipts == sorted(receipts)

    async def test_a_long_replay_does_not_make_a_client_that_reads_a_slow_consumer(self, servers):
        server = await servers.start(chat_stream_max_behind=150)
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        live, history = (
            await group(server.stubs, alice, bob, name="live"),
            await group(server.stubs, alice, bob),
        )
        for _ in range(0, 1500, 50):
            await asyncio.gather(*(say(server.stubs, alice, history.id, "y" * 4000) for _k in range(50)))
        stream = Stream(server.stubs, bob)  # reads everything as it comes
        await stream.subscribe(live.id, -1)
        await stream.write(subscribe=chat_pb2.SubscribeFrame(room_id=history.id, after_sequence=0))
        for _ in range(6):  # while the history is replayed, the live room does not advance
            await asyncio.gather(*(say(server.stubs, alice, live.id, "live") for _k in range(10)))
        got = [m for m in await stream.messages(1560) if m.room_id == live.id]
        assert [m.sequence for m in got] == list(range(1, 61))
        assert not stream.ended.is_set()
        await stream.close()

    async def test_the_answer_to_a_frame_waits_behind_half_a_queue_and_a_page_not_the_backlog(self, servers):
        async with _reader_behind(servers, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, _ = behind
            total = await _flood(server.stubs, alice, room.id, fast, 400)
            await slow.write(chat_pb2.ConnectRequest(ping=chat_pb2.PingFrame(nonce="now")))
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            assert [f.message.sequence for f in frames if f.HasField("message")] == list(range(1, total + 1))
            pong = next(i for i, f in enumerate(frames) if f.HasField("pong"))
            # Ahead of it: what the HTTP/2 window held (~16 frames), the queued items (8 at most;
            # here messages and at most one read-back of a page).
            assert pong < 16 + 8 + 100 < total

    async def test_no_state_event_of_a_room_is_sent_once_the_stream_has_left_it(self, servers):
        async with _reader_behind(servers, members=8, chat_stream_buffer=8) as behind:
            server, alice, _, room, slow, fast, readers = behind
            await _flood(server.stubs, alice, room.id, fast, 100)  # the stream's window is full
            for reader in readers:  # their receipts wait in the queue and beside it
                await _mark_read(server.stubs, reader, room.id, 100)
            for reader in readers:
                await _seen_receipt(fast, reader, 100)
            await fast.close()
            await slow.write(chat_pb2.ConnectRequest(unsubscribe=chat_pb2.UnsubscribeFrame(room_id=room.id)))
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            assert [f for f in frames if f.HasField("read_receipt")] == []

    async def test_a_waiting_removal_notice_comes_before_a_later_subscription(self, servers):
        async with _reader_behind(servers, chat_stream_buffer=8) as behind:
            server, alice, bob, room, slow, fast, _ = behind
            await _flood(server.stubs, alice, room.id, fast, 100)  # the stream's window is full
            for nonce in range(8):  # their pongs fill the rest of the queue
                await slow.write(chat_pb2.ConnectRequest(ping=chat_pb2.PingFrame(nonce=str(nonce))))
            await asyncio.sleep(0.2)  # the pings have reached the server
            removal = chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id)
            await server.stubs.chat.RemoveMember(removal, metadata=alice.auth)
            assert (await fast.messages(1))[0].kind == chat_pb2.MESSAGE_KIND_SYSTEM  # Bob's notice waits
            back = chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[bob.id])
            await server.stubs.chat.AddMembers(back, metadata=alice.auth)
            await slow.write(chat_pb2.ConnectRequest(subscribe=chat_pb2.SubscribeFrame(room_id=room.id)))
            await slow.done_writing()
            kinds = [f.WhichOneof("event") for f in await _frames_to_the_end(slow)]
            again = len(kinds) - 1 - kinds[::-1].index("subscribed")  # the second subscription's answer
            assert "error" not in kinds[again:], kinds
            assert kinds.count("subscribed") == 2 and kinds.count("pong") == 8
            assert await slow.code() == grpc.StatusCode.OK

    async def test_removed_from_many_rooms_while_behind_gets_every_notice(self, servers):
        server = await servers.start(chat_stream_buffer=8)
        alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
        rooms = [await group(server.stubs, alice, bob, name=f"room {i}") for i in range(6)]
        async with _unread_stream(server, bob, rooms[0].id) as slow:
            for room in rooms[1:]:
                await slow.write(chat_pb2.ConnectRequest(subscribe=chat_pb2.SubscribeFrame(room_id=room.id)))
            fast = Stream(server.stubs, alice)
            await fast.subscribe(rooms[0].id, 0)
            await _flood(server.stubs, alice, rooms[0].id, fast, 100)
            for room in rooms:
                await fast.subscribe(room.id, -1)
            for room in rooms:
                await server.stubs.chat.RemoveMember(
                    chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id), metadata=alice.auth
                )
            # Each room's feed drops the removed member's streams before it offers the removal.
            assert {m.kind for m in await fast.messages(len(rooms))} == {chat_pb2.MESSAGE_KIND_SYSTEM}
            await fast.close()
            await slow.done_writing()
            frames = await _frames_to_the_end(slow)
            assert sorted(f.error.room_id for f in frames if f.HasField("error")) == sorted(
                r.id for r in rooms
            )
            assert await slow.code() == grpc.StatusCode.OK


async def _mark_read(stubs: Any, who: Account, room_id: str, sequence: int) -> None:
    await stubs.chat.MarkRead(chat_pb2.MarkReadRequest(room_id=room_id, sequence=sequence), metadata=who.auth)


async def _seen_receipt(stream: Stream, who: Account, sequence: int) -> None:
    """Wait until the stream has seen `who`'s receipt for `sequence` (it has reached the server's streams)."""
    while (receipt := (await stream.next_of("read_receipt")).read_receipt).user_id != who.id or (
        receipt.sequence != sequence
    ):
        pass


class _ReaderBehind(NamedTuple):
    server: Any
    alice: Account
    bob: Account
    room: chat_pb2.Room
    slow: Any  # Bob's Connect call, reading nothing until the test does
    fast: Stream  # Alice's, reading everything
    others: list[Account]  # the room's other members


@contextlib.asynccontextmanager
async def _reader_behind(servers: Any, members: int = 0, **config: Any) -> AsyncIterator[_ReaderBehind]:
    """A server, Alice's room with Bob and `members` others; Bob's unread stream, Alice's reading one."""
    server = await servers.start(**config)
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    others = [await signed_up(server.stubs) for _ in range(members)]
    room = await group(server.stubs, alice, bob, *others)
    async with _unread_stream(server, bob, room.id) as slow:
        fast = Stream(server.stubs, alice)
        await fast.subscribe(room.id, 0)
        try:
            yield _ReaderBehind(server, alice, bob, room, slow, fast, others)
        finally:
            await fast.close()


@contextlib.asynccontextmanager
async def _unread_stream(server: Any, account: Account, room_id: str) -> AsyncIterator[Any]:
    """A Connect stream subscribed to the room that reads nothing until the test does.

    Its channel has a small HTTP/2 window (no BDP probing), so unread frames back up into the server.
    """
    channel = grpc.aio.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)])
    try:
        call = chat_pb2_grpc.ChatServiceStub(channel).Connect(metadata=account.auth)
        await call.write(chat_pb2.ConnectRequest(subscribe=chat_pb2.SubscribeFrame(room_id=room_id)))
        yield call
    finally:
        await channel.close(None)


@contextlib.contextmanager
def _rpc_logged() -> Iterator[Callable[[str, str], asyncio.Event]]:
    """`logged(user_id, method)`: an event set once the server logs that user's RPC of that method."""
    events: dict[tuple[str, str], asyncio.Event] = {}
    loop = asyncio.get_running_loop()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            rpc = getattr(record, "rpc", {})
            event = events.get((str(rpc.get("user_id")), str(rpc.get("method"))))
            if event is not None:
                loop.call_soon_threadsafe(event.set)

    def logged(user_id: str, method: str) -> asyncio.Event:
        return events.setdefault((user_id, method), asyncio.Event())

    rpc_log, handler = logging.getLogger("sendinchat.rpc"), Seen()
    level = rpc_log.level
    rpc_log.addHandler(handler)
    rpc_log.setLevel(logging.INFO)
    try:
        yield logged
    finally:
        rpc_log.removeHandler(handler)
        rpc_log.setLevel(level)


async def _read_messages(call: Any, count: int | None) -> list[int]:
    """The sequences of the next `count` messages the call reads, or of all until it ends (None)."""
    sequences: list[int] = []
    while count is None or len(sequences) < count:
        frame = await call.read()
        if frame is grpc.aio.EOF:
            break
        if frame.HasField("message"):
            sequences.append(frame.message.sequence)
    return sequences


async def _frames_to_the_end(call: Any) -> list[chat_pb2.ConnectResponse]:
    """Every frame the call reads until it ends."""
    frames = []
    while (frame := await call.read()) is not grpc.aio.EOF:
        frames.append(frame)
    return frames


async def _flood(
    stubs: Any, sender: Account, room_id: str, watcher: Stream, total: int, first: int = 1
) -> int:
    """Send `total` large messages, ten at a time; returns once the watching stream has them all.

    `first`: the sequence the first of them gets.
    """
    for _ in range(0, total, 10):
        await asyncio.gather(*(say(stubs, sender, room_id, "x" * 4000) for _k in range(10)))
    assert _sequences(await watcher.messages(total)) == list(range(first, first + total))
    return total


async def _fresh(stubs: Any, account: Account) -> Account:
    reply = await stubs.users.Login(
        users_pb2.LoginRequest(username=account.username, password=account.password)
    )
    return Account(reply.user, reply.tokens, account.password)
