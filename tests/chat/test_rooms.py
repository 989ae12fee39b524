"""ChatService rooms: CreateRoom, GetRoom, ListRooms, AddMembers, RemoveMember, LeaveRoom."""

from __future__ import annotations

import asyncio
import base64
import uuid

import grpc
import pytest

from sendinchat.v1 import chat_pb2
from tests.chat.support import flood_into_locked_room, group, room_locked, say
from tests.helpers import error_info, field_violations, signed_up, waiting_on_a_lock


def _direct(other: str) -> chat_pb2.CreateRoomRequest:
    return chat_pb2.CreateRoomRequest(kind=chat_pb2.ROOM_KIND_DIRECT, member_user_ids=[other])


class TestCreateRoom:
    async def test_makes_the_caller_owner_of_a_group_with_its_members(self, stubs):
        alice, bob, carol = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        reply = await stubs.chat.CreateRoom(
            chat_pb2.CreateRoomRequest(
                kind=chat_pb2.ROOM_KIND_GROUP, name="  trip  ", member_user_ids=[bob.id, carol.id, bob.id]
            ),
            metadata=alice.auth,
        )
        room = reply.room
        assert reply.created and room.kind == chat_pb2.ROOM_KIND_GROUP and room.name == "trip"
        roles = {m.user_id: (m.username, m.role) for m in room.members}
        assert roles == {
            alice.id: (alice.username, chat_pb2.MEMBER_ROLE_OWNER),
            bob.id: (bob.username, chat_pb2.MEMBER_ROLE_MEMBER),
            carol.id: (carol.username, chat_pb2.MEMBER_ROLE_MEMBER),
        }
        assert room.last_sequence == 0 and not room.HasField("last_message")

    async def test_returns_the_same_direct_room_when_either_side_asks_again(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        first = await stubs.chat.CreateRoom(_direct(bob.id), metadata=alice.auth)
        again = await stubs.chat.CreateRoom(_direct(alice.id), metadata=bob.auth)
        assert first.created and not again.created and again.room.id == first.room.id
        assert {m.user_id for m in first.room.members} == {alice.id, bob.id}

    async def test_creates_one_direct_room_when_both_sides_ask_at_once(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        replies = await asyncio.gather(
            *(stubs.chat.CreateRoom(_direct(bob.id), metadata=alice.auth) for _ in range(4)),
            *(stubs.chat.CreateRoom(_direct(alice.id), metadata=bob.auth) for _ in range(4)),
        )
        assert len({r.room.id for r in replies}) == 1
        assert sum(r.created for r in replies) == 1

    @pytest.mark.parametrize(
        ("kind", "name", "members", "field"),
        [
            (chat_pb2.ROOM_KIND_UNSPECIFIED, "x", [], "kind"),
            (chat_pb2.ROOM_KIND_GROUP, "  ", [], "name"),
            (chat_pb2.ROOM_KIND_GROUP, "n" * 101, [], "name"),
            (chat_pb2.ROOM_KIND_GROUP, "x", ["not-a-uuid"], "member_user_ids[0]"),
            (chat_pb2.ROOM_KIND_DIRECT, "named", ["SELF"], "name"),
            (chat_pb2.ROOM_KIND_DIRECT, "", [], "member_user_ids"),
            (chat_pb2.ROOM_KIND_DIRECT, "", ["SELF"], "member_user_ids"),
        ],
    )
    async def test_is_invalid_argument_when_the_request_breaks_a_rule(
        self, stubs, kind, name, members, field
    ):
        alice = await signed_up(stubs)
        members = [alice.id if m == "SELF" else m for m in members]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.CreateRoom(
                chat_pb2.CreateRoomRequest(kind=kind, name=name, member_user_ids=members), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)

    async def test_is_not_found_and_creates_nothing_when_a_member_does_not_exist(self, stubs):
        alice = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.CreateRoom(
                chat_pb2.CreateRoomRequest(
                    kind=chat_pb2.ROOM_KIND_GROUP, name="g", member_user_ids=[str(uuid.uuid4())]
                ),
                metadata=alice.auth,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        rooms = await stubs.chat.ListRooms(chat_pb2.ListRoomsRequest(), metadata=alice.auth)
        assert list(rooms.rooms) == []

    async def test_is_unauthenticated_without_a_token(self, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.CreateRoom(chat_pb2.CreateRoomRequest(kind=chat_pb2.ROOM_KIND_GROUP, name="g"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


class TestGetRoom:
    async def test_shows_last_message_and_unread_count_for_the_caller(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for text in ("one", "two", "three"):
            await say(stubs, alice, room.id, text)
        for who, unread in ((bob, 3), (alice, 0)):
            got = (await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room.id), metadata=who.auth)).room
            assert got.last_sequence == 3 and got.last_message.text == "three" and got.unread_count == unread

    async def test_is_not_found_for_a_non_member_as_for_a_missing_room(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for room_id in (room.id, str(uuid.uuid4())):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room_id), metadata=eve.auth)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class TestListRooms:
    async def test_pages_most_recently_active_first(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        rooms = [await group(stubs, alice, bob, name=f"r{i}") for i in range(5)]
        await say(stubs, bob, rooms[1].id, "bump")
        seen: list[str] = []
        token = ""
        while True:
            page = await stubs.chat.ListRooms(
                chat_pb2.ListRoomsRequest(page_size=2, page_token=token), metadata=alice.auth
            )
            seen += [r.name for r in page.rooms]
            if page.rooms[0].name == "r1":
                assert page.rooms[0].last_message.text == "bump" and page.rooms[0].unread_count == 1
            token = page.next_page_token
            if not token:
                break
        assert seen == ["r1", "r4", "r3", "r2", "r0"]

    async def test_keeps_the_first_pages_order_while_rooms_become_active(self, server, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        rooms = {i: await group(stubs, alice, bob, name=f"r{i}") for i in range(5)}

        async def page(token: str) -> chat_pb2.ListRoomsResponse:
            reply: chat_pb2.ListRoomsResponse = await stubs.chat.ListRooms(
                chat_pb2.ListRoomsRequest(page_size=1, page_token=token), metadata=alice.auth
            )
            return reply

        async with server.pool.acquire() as writer:
            # A message written before the first page but committed after it.
            in_flight = writer.transaction()
            await in_flight.start()
            await writer.execute(
                "SELECT chat_append($1::uuid, $2::uuid, NULL, 'text', 'in flight')", rooms[1].id, bob.id
            )
            first = await page("")
            await in_flight.commit()
        await say(stubs, bob, rooms[4].id, "the room on the first page is now active")
        await say(stubs, bob, rooms[0].id, "the oldest room not yet listed is now the newest")
        late = await group(stubs, alice, bob, name="late")
        seen = [r.name for r in first.rooms]
        token = first.next_page_token
        while token:
            reply = await page(token)
            seen += [r.name for r in reply.rooms]
            token = reply.next_page_token
        assert seen == ["r4", "r3", "r2", "r1", "r0"]
        fresh = await stubs.chat.ListRooms(chat_pb2.ListRoomsRequest(), metadata=alice.auth)
        assert [r.name for r in fresh.rooms] == ["late", "r0", "r4", "r1", "r3", "r2"]
        assert fresh.rooms[0].id == late.id

    async def test_a_tampered_page_token_is_invalid_argument(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        for i in range(2):
            await group(stubs, alice, bob, name=f"r{i}")
        first = await stubs.chat.ListRooms(chat_pb2.ListRoomsRequest(page_size=1), metadata=alice.auth)
        tag, moment, room, snapshot = _unwrap(first.next_page_token).split("|")
        arabic_indic_digits = "\u0663:\u0665:"
        tampered = [
            (tag, moment, room, "9:3:"),  # xmin above xmax
            (tag, moment, room, "1:9:12"),  # a running xid at or past xmax
            (tag, moment, room, arabic_indic_digits),
            (tag, moment, room, "x"),
            (tag, "99999999999999999999", room, snapshot),  # past int64 and 9999-12-31
            (tag, moment, room.upper(), snapshot),
            ("r2", moment, room, snapshot),  # a version this server never issued
        ]
        for parts in tampered:
            token = base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.chat.ListRooms(
                    chat_pb2.ListRoomsRequest(page_size=1, page_token=token), metadata=alice.auth
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, parts
            assert "page_token" in field_violations(caught.value)

    async def test_is_invalid_argument_when_page_size_or_token_is_bad(self, stubs):
        alice = await signed_up(stubs)
        for request, field in (
            (chat_pb2.ListRoomsRequest(page_size=101), "page_size"),
            (chat_pb2.ListRoomsRequest(page_token="garbage!"), "page_token"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.chat.ListRooms(request, metadata=alice.auth)
            assert field in field_violations(caught.value)


class TestAddMembers:
    async def test_a_flood_of_membership_changes_into_one_room_takes_one_connection(self, server, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        newcomers = [await signed_up(stubs) for _ in range(server.config.db_pool_size * 2)]
        waiting, outcomes = await flood_into_locked_room(
            server,
            room.id,
            lambda i: stubs.chat.AddMembers(
                chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[newcomers[i].id]), metadata=alice.auth
            ),
            len(newcomers),
        )
        assert [o for o in outcomes if isinstance(o, Exception)] == []
        assert waiting == 1
        reply = await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room.id), metadata=alice.auth)
        assert len(reply.room.members) == 2 + len(newcomers)

    async def test_adds_users_and_posts_a_joined_message_when_any_member_adds(self, stubs):
        alice, bob, carol = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        reply = await stubs.chat.AddMembers(
            chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[carol.id, alice.id]), metadata=bob.auth
        )
        assert {m.user_id for m in reply.room.members} == {alice.id, bob.id, carol.id}
        assert reply.room.last_message.kind == chat_pb2.MESSAGE_KIND_SYSTEM
        assert reply.room.last_message.text == f"{carol.username} joined"
        assert not reply.room.last_message.sender_user_id

    async def test_is_invalid_argument_for_a_direct_room(self, stubs):
        alice, bob, carol = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = (await stubs.chat.CreateRoom(_direct(bob.id), metadata=alice.auth)).room
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.AddMembers(
                chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[carol.id]), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_is_not_found_when_the_caller_is_not_a_member(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.AddMembers(
                chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[eve.id]), metadata=eve.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class TestRemoveMember:
    async def test_removes_the_member_who_then_cannot_see_the_room(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        reply = await stubs.chat.RemoveMember(
            chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id), metadata=alice.auth
        )
        assert [m.user_id for m in reply.room.members] == [alice.id]
        assert reply.room.last_message.text == f"{bob.username} was removed"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await say(stubs, bob, room.id, "still here?")
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_permission_denied_when_the_caller_is_not_the_owner(self, stubs):
        alice, bob, carol = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob, carol)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.RemoveMember(
                chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=carol.id), metadata=bob.auth
            )
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_is_failed_precondition_when_removing_the_owner(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.RemoveMember(
                chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=alice.id), metadata=alice.auth
            )
        assert error_info(caught.value).reason == "CANNOT_REMOVE_OWNER"

    async def test_is_not_found_when_the_user_is_not_a_member(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.RemoveMember(
                chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=eve.id), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class TestLeaveRoom:
    async def test_hands_ownership_to_the_oldest_member_when_the_owner_leaves(self, stubs):
        alice, bob, carol = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob, carol)
        await stubs.chat.LeaveRoom(chat_pb2.LeaveRoomRequest(room_id=room.id), metadata=alice.auth)
        got = (await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room.id), metadata=bob.auth)).room
        assert {m.user_id: m.role for m in got.members} == {
            bob.id: chat_pb2.MEMBER_ROLE_OWNER,
            carol.id: chat_pb2.MEMBER_ROLE_MEMBER,
        }
        assert got.last_message.text == f"{alice.username} left"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room.id), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_invalid_argument_for_a_direct_room(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = (await stubs.chat.CreateRoom(_direct(bob.id), metadata=alice.auth)).room
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.LeaveRoom(chat_pb2.LeaveRoomRequest(room_id=room.id), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    async def test_two_leaves_at_once_leave_once(self, server, servers, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        replica = await servers.start(server.database_url)  # in one process the room's turn orders them
        leave = chat_pb2.LeaveRoomRequest(room_id=room.id)
        async with room_locked(server, room.id) as holder:
            leaves = asyncio.gather(
                *(s.chat.LeaveRoom(leave, metadata=bob.auth) for s in (stubs, replica.stubs)),
                return_exceptions=True,
            )
            await waiting_on_a_lock(holder, count=2)  # both wait for the room, both saw Bob a member
        outcomes = await asyncio.wait_for(leaves, 10)
        refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert [o.code() for o in refused] == [grpc.StatusCode.NOT_FOUND]
        history = await stubs.chat.ListMessages(
            chat_pb2.ListMessagesRequest(room_id=room.id, page_size=100), metadata=alice.auth
        )
        assert [m.text for m in history.messages].count(f"{bob.username} left") == 1


def _unwrap(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
