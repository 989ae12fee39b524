"""Regressions for what an adversarial review got past the first defences.

Each test is named for what it protects: answers that stay small, streams of other services,
forged snapshots, parser internals, typing floods, stream and room caps.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from grpc_reflection.v1alpha import reflection_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2, users_pb2
from server import boundary
from server.chat import validation
from server.chat.stream import ConnectSession
from server.chat.typing_throttle import TYPED_ROOMS_KEPT
from server.errors import InvalidArgumentError
from server.streams import MAX_STREAMS_PER_USER
from tests.chat.support import Stream, group
from tests.helpers import bearer, error_info, field_violations, retry_delay_seconds, signed_up

_REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


class TestAnswersStaySmall:
    async def test_a_request_with_many_bad_fields_gets_invalid_argument_with_the_first_ones(self, stubs):
        alice = await signed_up(stubs)
        request = chat_pb2.CreateRoomRequest(
            kind=chat_pb2.ROOM_KIND_GROUP, name="g", member_user_ids=["no"] * 100
        )
        for _ in range(5):  # every time the same answer, never the transport's RESOURCE_EXHAUSTED
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.chat.CreateRoom(request, metadata=alice.auth)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(field_violations(caught.value)) == 10
            assert "and 90 more" in (caught.value.details() or "")

    async def test_a_connect_error_does_not_echo_a_huge_field(self, stubs):
        alice = await signed_up(stubs)
        stream = Stream(stubs, alice)
        try:
            await stream.write(
                send=chat_pb2.SendFrame(room_id="r" * 10_000, client_message_id="m", text="hi")
            )
            error = (await stream.next_of("error")).error
            assert error.code == chat_pb2.ERROR_CODE_INVALID_ARGUMENT and error.room_id == ""
        finally:
            await stream.close()


class TestOtherStreams:
    async def test_a_reflection_frame_that_is_no_protobuf_is_invalid_argument(self, stubs):
        raw: Any = stubs.channel.stream_stream(_REFLECTION)
        valid = reflection_pb2.ServerReflectionRequest(list_services="").SerializeToString()
        call = raw(iter([valid, b"\xff\xff"]))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


class TestForgedSnapshots:
    async def test_a_snapshot_with_an_xid_postgresql_refuses_is_invalid_argument_on_page_token(self, stubs):
        alice = await signed_up(stubs)
        for snapshot in ("1:4294967296:", "4294967296:4294967297:"):
            text = f"r1|0|{uuid.uuid4()}|{snapshot}"
            token = base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.chat.ListRooms(chat_pb2.ListRoomsRequest(page_token=token), metadata=alice.auth)
            assert field_violations(caught.value) == {"page_token": "is not a token this server issued"}


class TestTokens:
    async def test_a_malformed_token_is_refused_without_the_parsers_words(self, stubs):
        for token in ("a.b.c", "e30.e30.e30", "not even dots"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(token))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "Expecting" not in (caught.value.details() or "") and "segment" not in (
                caught.value.details() or ""
            )


class TestBoundaryMaps:
    def test_map_keys_and_values_are_checked_without_echoing_the_key(self):
        hostile = struct_pb2.Struct(fields={"k\x00" * 50: struct_pb2.Value(string_value="v\x00")})
        with pytest.raises(InvalidArgumentError) as caught:
            boundary.check(hostile)
        assert set(caught.value.violations) == {"fields[0].key", "fields[0].string_value"}


class TestFloods:
    async def test_a_typing_flood_reaches_other_members_as_one_event_a_second(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        watcher, typist = Stream(stubs, bob), Stream(stubs, alice)
        try:
            await watcher.subscribe(room.id, -1)
            await typist.subscribe(room.id, -1)
            for _ in range(200):
                await typist.write(typing=chat_pb2.TypingFrame(room_id=room.id))
            await typist.write(ping=chat_pb2.PingFrame(nonce="done"))
            await typist.next_of("pong")  # every typing frame has been handled
            await watcher.write(ping=chat_pb2.PingFrame(nonce="seen"))
            await asyncio.sleep(0.5)
            seen = [f for f in _drain(watcher) if f.WhichOneof("event") == "typing"]
            assert 1 <= len(seen) <= 2
            assert watcher.error is None
        finally:
            await watcher.close()
            await typist.close()

    async def test_typing_frames_naming_ever_new_rooms_keep_a_stream_small(self, stubs):
        alice = await signed_up(stubs)
        typist = Stream(stubs, alice)
        try:
            for i in range(600):  # junk ids, then well-formed ids of rooms that do not exist
                room_id = f"{i:08d}" + "x" * 8000 if i % 2 else str(uuid.uuid4())
                await typist.write(typing=chat_pb2.TypingFrame(room_id=room_id))
            await typist.write(ping=chat_pb2.PingFrame(nonce="done"))
            await typist.next_of("pong")
            sessions = [o for o in gc.get_objects() if isinstance(o, ConnectSession)]
            assert sessions and all(len(s._typing_throttle.rooms()) <= TYPED_ROOMS_KEPT for s in sessions)
            assert all(len(room) == 36 for s in sessions for room in s._typing_throttle.rooms())
        finally:
            await typist.close()

    async def test_a_user_past_the_stream_cap_is_refused_and_others_are_not(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        streams = [Stream(stubs, alice) for _ in range(MAX_STREAMS_PER_USER)]
        try:
            for stream in streams:
                await stream.write(ping=chat_pb2.PingFrame(nonce="in"))
                await stream.next_of("pong")
            extra = Stream(stubs, alice)
            error = await extra.wait_ended()
            assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            other = Stream(stubs, bob)
            await other.write(ping=chat_pb2.PingFrame(nonce="bob"))
            assert (await other.next_of("pong")).pong.nonce == "bob"
            await other.close()
        finally:
            for stream in streams:
                await stream.close()

    async def test_a_user_past_the_watch_cap_is_refused_and_others_are_not(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        watches = [
            stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=alice.auth)
            for _ in range(MAX_STREAMS_PER_USER)
        ]
        try:
            await asyncio.gather(*(watch.initial_metadata() for watch in watches))
            extra = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=alice.auth)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await extra.read()
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert retry_delay_seconds(refused.value) > 0
            other = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=bob.auth)
            await other.initial_metadata()
            assert not other.done()
            other.cancel()
            watches.pop().cancel()  # a stream given back is one to open again, once the server hears
            while True:
                again = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=alice.auth)
                await again.initial_metadata()
                if not again.done():
                    break
                assert await again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
            again.cancel()
        finally:
            for watch in watches:
                watch.cancel()


class TestRoomCap:
    async def test_adding_past_the_room_cap_is_room_full_and_adds_nobody(self, server, monkeypatch):
        monkeypatch.setattr(validation, "MAX_ROOM_MEMBERS", 3)
        users = [await signed_up(server.stubs) for _ in range(4)]
        room = await group(server.stubs, users[0], users[1], users[2])
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.chat.AddMembers(
                chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[users[3].id]), metadata=users[0].auth
            )
        assert (caught.value.code(), error_info(caught.value).reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "ROOM_FULL",
        )
        got = await server.stubs.chat.GetRoom(
            chat_pb2.GetRoomRequest(room_id=room.id), metadata=users[0].auth
        )
        assert len(got.room.members) == 3


def _drain(stream: Stream) -> list[chat_pb2.ConnectResponse]:
    frames = []
    while not stream.frames.empty():
        frames.append(stream.frames.get_nowait())
    return frames
