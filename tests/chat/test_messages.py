"""ChatService messages: SendMessage, ListMessages, MarkRead."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from sendinchat.v1 import chat_pb2
from tests.chat.support import group, say
from tests.helpers import Account, field_violations, signed_up


async def _page(stubs: Any, who: Account, room_id: str, **fields: Any) -> chat_pb2.ListMessagesResponse:
    reply: chat_pb2.ListMessagesResponse = await stubs.chat.ListMessages(
        chat_pb2.ListMessagesRequest(room_id=room_id, **fields), metadata=who.auth
    )
    return reply


class TestSendMessage:
    async def test_stores_the_message_with_the_next_sequence(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        first = await say(stubs, alice, room.id, "hello")
        second = await say(stubs, bob, room.id, "hi ✋")
        assert (first.sequence, second.sequence) == (1, 2)
        assert (second.room_id, second.sender_user_id, second.text) == (room.id, bob.id, "hi ✋")
        assert second.kind == chat_pb2.MESSAGE_KIND_TEXT and second.create_time.seconds > 0

    async def test_returns_the_first_message_when_a_client_message_id_is_retried(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        replies = await asyncio.gather(*(say(stubs, alice, room.id, "once", "cm-1") for _ in range(5)))
        assert {m.sequence for m in replies} == {1}
        assert replies[0].client_message_id == "cm-1"
        other = await say(stubs, bob, room.id, "same id, other sender", "cm-1")
        assert other.sequence == 2
        assert len((await _page(stubs, alice, room.id)).messages) == 2

    async def test_assigns_gap_free_sequences_when_many_send_at_once(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        sent = await asyncio.gather(*(say(stubs, (alice, bob)[i % 2], room.id, f"m{i}") for i in range(60)))
        assert sorted(m.sequence for m in sent) == list(range(1, 61))

    @pytest.mark.parametrize(
        ("text", "client_message_id", "field"),
        [
            ("", "", "text"),
            ("   ", "", "text"),
            ("x" * 4001, "", "text"),
            ("ok", "c" * 65, "client_message_id"),
        ],
    )
    async def test_is_invalid_argument_when_text_or_id_breaks_a_rule(
        self, stubs, text, client_message_id, field
    ):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await say(stubs, alice, room.id, text, client_message_id)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)

    async def test_accepts_exactly_4000_characters(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        assert len((await say(stubs, alice, room.id, "é" * 4000)).text) == 4000

    async def test_is_not_found_when_the_caller_is_not_a_member(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for room_id in (room.id, str(uuid.uuid4())):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await say(stubs, eve, room_id, "let me in")
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert (await _page(stubs, alice, room.id)).messages == []


class TestListMessages:
    async def test_pages_newest_first_without_a_bound_and_back_with_the_token(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for i in range(7):
            await say(stubs, alice, room.id, f"m{i + 1}")
        seen, token = [], ""
        while True:
            page = await _page(stubs, bob, room.id, page_size=3, page_token=token)
            seen += [m.sequence for m in page.messages]
            token = page.next_page_token
            if not token:
                break
        assert seen == [7, 6, 5, 4, 3, 2, 1]

    async def test_pages_oldest_first_after_a_sequence(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for i in range(7):
            await say(stubs, alice, room.id, f"m{i + 1}")
        first = await _page(stubs, bob, room.id, after_sequence=2, page_size=3)
        assert [m.sequence for m in first.messages] == [3, 4, 5]
        second = await _page(stubs, bob, room.id, page_size=3, page_token=first.next_page_token)
        assert [m.sequence for m in second.messages] == [6, 7] and not second.next_page_token
        before = await _page(stubs, bob, room.id, before_sequence=3)
        assert [m.sequence for m in before.messages] == [2, 1]

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"page_size": 101}, "page_size"),
            ({"before_sequence": 2, "after_sequence": 1}, "before_sequence"),
            ({"after_sequence": -1}, "after_sequence"),
            ({"page_token": "bm90LWpzb24"}, "page_token"),
        ],
    )
    async def test_is_invalid_argument_when_paging_is_malformed(self, stubs, fields, field):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _page(stubs, alice, room.id, **fields)
        assert field in field_violations(caught.value)

    async def test_is_invalid_argument_when_a_token_of_another_room_is_used(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room, other = await group(stubs, alice, bob), await group(stubs, alice, bob)
        for i in range(3):
            await say(stubs, alice, room.id, f"m{i}")
        token = (await _page(stubs, alice, room.id, page_size=1)).next_page_token
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _page(stubs, alice, other.id, page_token=token)
        assert "page_token" in field_violations(caught.value)

    async def test_is_not_found_for_a_non_member(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        await say(stubs, alice, room.id, "private")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _page(stubs, eve, room.id)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class TestMarkRead:
    async def test_moves_the_mark_forward_only_and_never_past_the_newest(self, stubs):
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        for i in range(3):
            await say(stubs, alice, room.id, f"m{i}")

        async def mark(sequence: int) -> int:
            reply = await stubs.chat.MarkRead(
                chat_pb2.MarkReadRequest(room_id=room.id, sequence=sequence), metadata=bob.auth
            )
            return int(reply.last_read_sequence)

        assert await mark(2) == 2
        assert await mark(1) == 2
        assert await mark(99) == 3
        got = (await stubs.chat.GetRoom(chat_pb2.GetRoomRequest(room_id=room.id), metadata=bob.auth)).room
        assert got.unread_count == 0
        assert {m.user_id: m.last_read_sequence for m in got.members}[bob.id] == 3

    async def test_is_not_found_for_a_non_member(self, stubs):
        alice, bob, eve = await signed_up(stubs), await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.chat.MarkRead(
                chat_pb2.MarkReadRequest(room_id=room.id, sequence=1), metadata=eve.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
