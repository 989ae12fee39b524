"""Regressions for what a hostile client once got past the boundary (issue: hostile and careless clients).

Each test is named for what it protects; each of these requests once answered INTERNAL or UNKNOWN,
or (the infinite hold) let one user break another's transfer history for one minor unit.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2, users_pb2
from tests.chat.support import Stream, group
from tests.helpers import Account, field_violations, random_name, request_id, signed_up, signed_up_admin
from tests.ledger.support import deposit

LARGEST_TIMESTAMP = timestamp_pb2.Timestamp(seconds=253_402_300_799, nanos=999_999_999)


async def _invalid(call: Any) -> dict[str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    return field_violations(caught.value)


def _token(*parts: str) -> str:
    return base64.urlsafe_b64encode("|".join(parts).encode()).decode().rstrip("=")


async def _pair(server: Any) -> tuple[Account, Account]:
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    await deposit(server, await signed_up_admin(server), alice, 100)
    return alice, bob


class TestNulCharacters:
    async def test_text_fields_with_nul_are_invalid_argument_when_they_would_reach_postgresql(self, server):
        alice, bob = await _pair(server)
        room = await group(server.stubs, alice, bob)
        chat = server.stubs.chat
        for call, field in (
            (
                chat.SendMessage(
                    chat_pb2.SendMessageRequest(room_id=room.id, text="hi\x00"), metadata=alice.auth
                ),
                "text",
            ),
            (
                chat.SendMessage(
                    chat_pb2.SendMessageRequest(room_id=room.id, text="hi", client_message_id="c\x00"),
                    metadata=alice.auth,
                ),
                "client_message_id",
            ),
            (
                chat.CreateRoom(
                    chat_pb2.CreateRoomRequest(kind=chat_pb2.ROOM_KIND_GROUP, name="n\x00"),
                    metadata=alice.auth,
                ),
                "name",
            ),
            (
                server.stubs.ledger.ListAccounts(
                    ledger_pb2.ListAccountsRequest(page_token=_token("a1", "\x00")), metadata=alice.auth
                ),
                "page_token",
            ),
        ):
            assert field in await _invalid(call)

    async def test_a_connect_frame_with_nul_gets_its_own_error_and_the_stream_stays(self, server):
        alice, bob = await _pair(server)
        room = await group(server.stubs, alice, bob)
        stream = Stream(server.stubs, alice)
        try:
            await stream.write(
                send=chat_pb2.SendFrame(room_id=room.id, client_message_id="m1", text="hi\x00")
            )
            error = (await stream.next_of("error")).error
            assert (error.code, error.client_message_id) == (chat_pb2.ERROR_CODE_INVALID_ARGUMENT, "m1")
            assert "send.text" in error.message
            await stream.write(ping=chat_pb2.PingFrame(nonce="still here"))
            assert (await stream.next_of("pong")).pong.nonce == "still here"
        finally:
            await stream.close()


class TestOverlongStrings:
    async def test_any_string_over_16_kib_is_invalid_argument_before_a_handler_runs(self, server):
        alice, bob = await _pair(server)
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=1, memo="m" * 20_000
        )
        assert "memo" in await _invalid(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth))


class TestTimestamps:
    @pytest.mark.parametrize(
        "stamp",
        [
            timestamp_pb2.Timestamp(seconds=253_402_300_800),
            timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=-1),
            timestamp_pb2.Timestamp(seconds=2_000_000_000, nanos=1_000_000_000),
        ],
    )
    async def test_an_expiry_outside_protobufs_range_is_invalid_argument(self, server, stamp):
        alice, bob = await _pair(server)
        room = await group(server.stubs, alice, bob)
        pending = ledger_pb2.CreatePendingTransferRequest(
            request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=1, expire_time=stamp
        )
        assert "expire_time" in await _invalid(
            server.stubs.ledger.CreatePendingTransfer(pending, metadata=alice.auth)
        )
        ask = chat_pb2.RequestPaymentRequest(
            request_id=request_id(),
            room_id=room.id,
            from_user_id=bob.id,
            currency="USD",
            amount_minor=1,
            expire_time=stamp,
        )
        assert "expire_time" in await _invalid(server.stubs.chat.RequestPayment(ask, metadata=alice.auth))

    async def test_a_hold_far_in_the_future_is_refused_and_the_victims_history_stays_readable(self, server):
        attacker, victim = await _pair(server)
        hold = ledger_pb2.CreatePendingTransferRequest(
            request_id=request_id(),
            to_user_id=victim.id,
            currency="USD",
            amount_minor=1,
            expire_time=LARGEST_TIMESTAMP,
        )
        violations = await _invalid(server.stubs.ledger.CreatePendingTransfer(hold, metadata=attacker.auth))
        assert violations["expire_time"] == "must be at most 365 days ahead"
        assert await server.pool.fetchval("SELECT count(*) FROM transfers WHERE two_phase") == 0
        for who in (attacker, victim):
            page = await server.stubs.ledger.ListTransfers(
                ledger_pb2.ListTransfersRequest(), metadata=who.auth
            )
            assert all(t.state != ledger_pb2.TRANSFER_STATE_PENDING for t in page.transfers)


class TestForgedTokens:
    async def test_forged_page_tokens_and_cursors_are_invalid_argument(self, server):
        alice, _ = await _pair(server)
        ledger, chat = server.stubs.ledger, server.stubs.chat
        room = (
            await chat.CreateRoom(
                chat_pb2.CreateRoomRequest(kind=chat_pb2.ROOM_KIND_GROUP, name="r"), metadata=alice.auth
            )
        ).room
        forged = {
            "20-digit integer": _token("t1", "99999999999999999999", "all", ""),
            "Unicode digit": _token("t1", "\u00b2", "all", ""),
            "JSON-style number": _token("t1", "1e30", "all", ""),
            "a moment after 9999-12-31": _token("r1", "999999999999999999", room.id, "1:1:"),
            "snapshot PostgreSQL refuses": _token("r1", "0", room.id, "9:3:"),
            "message token with a Unicode digit": _token("m1", room.id, "1", "\u00b2"),
        }
        for what, token in forged.items():
            calls = [
                ledger.ListTransfers(ledger_pb2.ListTransfersRequest(page_token=token), metadata=alice.auth),
                chat.ListRooms(chat_pb2.ListRoomsRequest(page_token=token), metadata=alice.auth),
                chat.ListMessages(
                    chat_pb2.ListMessagesRequest(room_id=room.id, page_token=token), metadata=alice.auth
                ),
            ]
            for call in calls:
                assert "page_token" in await _invalid(call), what

    async def test_a_watch_cursor_with_a_unicode_digit_is_invalid_argument(self, server):
        alice, _ = await _pair(server)
        call = server.stubs.ledger.WatchTransfers(
            ledger_pb2.WatchTransfersRequest(cursor=_token("w1", "\u00b2", "1")), metadata=alice.auth
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(call.read(), 10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cursor" in field_violations(caught.value)

    async def test_an_enum_number_the_contract_does_not_define_is_invalid_argument(self, server):
        alice, _ = await _pair(server)
        request = ledger_pb2.ListTransfersRequest(direction=99)  # type: ignore[arg-type]  # the hostile value
        assert "direction" in await _invalid(server.stubs.ledger.ListTransfers(request, metadata=alice.auth))


class TestRawBytes:
    async def test_a_body_that_is_no_protobuf_is_invalid_argument_without_parser_internals(self, server):
        alice, _ = await _pair(server)
        raw: Any = server.stubs.channel.unary_unary("/sendinchat.v1.UserService/GetMe")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff", metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "DecodeError" not in (caught.value.details() or "")
        assert field_violations(caught.value) == {
            "request": "is not a valid sendinchat.v1.GetMeRequest message"
        }

    async def test_a_body_that_is_no_protobuf_without_a_token_is_unauthenticated_first(self, server):
        raw: Any = server.stubs.channel.unary_unary("/sendinchat.v1.UserService/GetMe")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff")
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_a_public_rpc_with_a_body_that_is_no_protobuf_is_invalid_argument(self, server):
        raw: Any = server.stubs.channel.unary_unary("/sendinchat.v1.UserService/Login")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\x0a\xff")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert isinstance(users_pb2.LoginRequest(), users_pb2.LoginRequest)


class TestTexts:
    """One text rule for every field: no control characters, and names show something."""

    @pytest.mark.parametrize(
        "name",
        [
            "\x1b[31mred",
            "a\u202eb",
            "\u200b",
            " \u200b\ufeff ",
            "tab\there",
            "two\nlines",
            "two\u2028lines",
            "\u2800",
            "\ufe0f\u00ad\u034f",
            "\U000e0041",
        ],
    )
    async def test_a_room_name_that_misleads_a_reader_is_invalid_argument(self, server, name):
        alice, bob = await _pair(server)
        request = chat_pb2.CreateRoomRequest(
            kind=chat_pb2.ROOM_KIND_GROUP, name=name, member_user_ids=[bob.id]
        )
        assert "name" in await _invalid(server.stubs.chat.CreateRoom(request, metadata=alice.auth))

    async def test_a_display_name_keeps_emoji_sequences_but_not_escape_codes(self, server):
        family = "\U0001f468\u200d\U0001f469\u200d\U0001f467 Ana \u062f\u0627\u0646\u200c\u0634"
        reply = await server.stubs.users.Register(
            users_pb2.RegisterRequest(
                username=f"u{request_id()[:8]}", password="long enough", display_name=family
            )
        )
        assert reply.user.display_name == family
        hostile = users_pb2.RegisterRequest(
            username=f"u{request_id()[:8]}", password="long enough", display_name="\x07"
        )
        assert await _invalid(server.stubs.users.Register(hostile)) == {
            "display_name": "must not contain control characters"
        }

    async def test_a_character_newer_than_this_pythons_unicode_counts_as_visible(self, server):
        alice, bob = await _pair(server)
        shaking_face = "\U0001fae8"  # Unicode 15; Python 3.11 knows Unicode 14
        request = chat_pb2.CreateRoomRequest(
            kind=chat_pb2.ROOM_KIND_GROUP, name=shaking_face, member_user_ids=[bob.id]
        )
        assert (await server.stubs.chat.CreateRoom(request, metadata=alice.auth)).room.name == shaking_face

    async def test_a_message_keeps_its_lines_and_tabs_but_not_escape_codes(self, server):
        alice, bob = await _pair(server)
        room = await group(server.stubs, alice, bob)
        text = "line one\n\tline two\r\nthree \u202eok in a message"
        sent = await server.stubs.chat.SendMessage(
            chat_pb2.SendMessageRequest(room_id=room.id, text=text), metadata=alice.auth
        )
        assert sent.message.text == text
        for hostile in ("\x1b]0;owned\x07", "\u200b\u200b"):
            request = chat_pb2.SendMessageRequest(room_id=room.id, text=hostile)
            assert "text" in await _invalid(server.stubs.chat.SendMessage(request, metadata=alice.auth))

    async def test_a_memo_is_one_line(self, server):
        alice, bob = await _pair(server)
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=1, memo="rent\x1b[2J"
        )
        assert await _invalid(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth)) == {
            "memo": "must not contain control characters"
        }

    @pytest.mark.parametrize("memo", [" ", "\u200b", "\u2800 \ufeff"])
    async def test_a_memo_that_shows_nothing_is_invalid_argument_and_no_memo_is_fine(self, server, memo):
        alice, bob = await _pair(server)
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=1, memo=memo
        )
        assert await _invalid(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth)) == {
            "memo": "must contain a visible character"
        }
        request.memo = ""
        reply = await server.stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        assert reply.transfer.memo == ""

    async def test_a_username_is_ascii_before_it_is_folded_to_lower_case(self, server):
        kelvin = "\u212aelvin"  # KELVIN SIGN, which str.lower() turns into "k"
        request = users_pb2.RegisterRequest(username=kelvin, password="long enough")
        assert "username" in await _invalid(server.stubs.users.Register(request))


class TestMetadata:
    async def test_two_authorization_values_are_refused_whoever_they_name(self, server):
        alice, bob = await _pair(server)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=alice.auth + bob.auth)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "one 'authorization'" in (caught.value.details() or "")


class TestBursts:
    async def test_thousands_of_calls_at_once_on_one_connection_are_all_answered(self, server):
        alice, _ = await _pair(server)
        calls = [
            server.stubs.ledger.ListCurrencies(ledger_pb2.ListCurrenciesRequest(), metadata=alice.auth)
            for _ in range(6000)
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        failures = [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
        assert failures == []


class TestCompression:
    async def test_a_compressed_request_past_the_receive_limit_is_refused_by_its_size(self, server):
        bomb = users_pb2.RegisterRequest(username=random_name(), password="x" * (8 * 1024 * 1024))
        with pytest.raises(grpc.aio.AioRpcError) as caught:  # 8 MiB of one letter: 8 kB gzipped
            await server.stubs.users.Register(bomb, compression=grpc.Compression.Gzip, timeout=30)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class TestPageSizes:
    async def test_a_negative_page_size_names_the_range_the_contract_gives(self, server):
        alice, _ = await _pair(server)
        request = ledger_pb2.ListTransfersRequest(page_size=-1)
        assert await _invalid(server.stubs.ledger.ListTransfers(request, metadata=alice.auth)) == {
            "page_size": "must be between 1 and 100"
        }


class TestRepeatedFrames:
    async def test_a_typing_frame_for_a_room_of_others_gets_the_same_answer_every_time(self, server):
        alice, bob = await _pair(server)
        eve = await signed_up(server.stubs)
        room = await group(server.stubs, alice, bob)
        stream = Stream(server.stubs, eve)
        try:
            for nonce in ("first", "again"):
                await stream.write(typing=chat_pb2.TypingFrame(room_id=room.id))
                await stream.write(ping=chat_pb2.PingFrame(nonce=nonce))
                answer, pong = await stream.next(), await stream.next()
                assert answer.WhichOneof("event") == "error", nonce
                assert answer.error.code == chat_pb2.ERROR_CODE_NOT_FOUND
                assert pong.pong.nonce == nonce
        finally:
            await stream.close()
