"""ChatService.SendPayment, RequestPayment and RespondToPaymentRequest: money and message together."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2
from server.chat import events, payments
from tests.chat.support import Stream, flood_into_locked_room, group, room_locked
from tests.helpers import (
    Account,
    error_info,
    field_violations,
    request_id,
    signed_up,
    signed_up_admin,
    waiting_on_a_lock,
)
from tests.ledger.support import balance, deposit, one_call_of_ledger_create_transfers

ACCEPT = chat_pb2.PAYMENT_REQUEST_ACTION_ACCEPT
DECLINE = chat_pb2.PAYMENT_REQUEST_ACTION_DECLINE
CANCEL = chat_pb2.PAYMENT_REQUEST_ACTION_CANCEL


async def _parties(server: Any, funds: int = 10_000) -> tuple[Account, Account, chat_pb2.Room]:
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    if funds:
        await deposit(server, await signed_up_admin(server), alice, funds)
    return alice, bob, await group(server.stubs, alice, bob)


def _pay(room: chat_pb2.Room, to: Account, amount: int, **fields: Any) -> chat_pb2.SendPaymentRequest:
    fields.setdefault("request_id", request_id())
    fields.setdefault("currency", "USD")
    return chat_pb2.SendPaymentRequest(room_id=room.id, to_user_id=to.id, amount_minor=amount, **fields)


async def _history(stubs: Any, who: Account, room: chat_pb2.Room) -> list[chat_pb2.Message]:
    reply = await stubs.chat.ListMessages(
        chat_pb2.ListMessagesRequest(room_id=room.id, after_sequence=0, page_size=100), metadata=who.auth
    )
    return list(reversed(reply.messages))


async def _ask(
    stubs: Any, requester: Account, room: chat_pb2.Room, payer: Account, amount: int, **fields: Any
) -> chat_pb2.Message:
    fields.setdefault("request_id", request_id())
    reply = await stubs.chat.RequestPayment(
        chat_pb2.RequestPaymentRequest(
            room_id=room.id, from_user_id=payer.id, currency="USD", amount_minor=amount, **fields
        ),
        metadata=requester.auth,
    )
    message: chat_pb2.Message = reply.message
    return message


async def _respond(
    stubs: Any, who: Account, request_msg: chat_pb2.Message, action: Any, rid: str | None = None
) -> chat_pb2.RespondToPaymentRequestResponse:
    reply: chat_pb2.RespondToPaymentRequestResponse = await stubs.chat.RespondToPaymentRequest(
        chat_pb2.RespondToPaymentRequestRequest(
            request_id=rid or request_id(), payment_request_id=request_msg.payment_request.id, action=action
        ),
        metadata=who.auth,
    )
    return reply


class TestSendPayment:
    async def test_moves_money_and_posts_a_payment_message_when_funded(self, server):
        alice, bob, room = await _parties(server)
        stream = Stream(server.stubs, bob)
        await stream.subscribe(room.id, 0)
        reply = await server.stubs.chat.SendPayment(_pay(room, bob, 1234, memo="lunch"), metadata=alice.auth)
        message, transfer = reply.message, reply.transfer
        assert message.kind == chat_pb2.MESSAGE_KIND_PAYMENT and message.sequence == 1
        assert message.sender_user_id == alice.id and "12.34 USD" in message.text
        assert message.payment.memo == "lunch" and message.payment.transfer.id == transfer.id
        assert (transfer.from_user_id, transfer.to_user_id, transfer.amount_minor) == (alice.id, bob.id, 1234)
        assert transfer.state == ledger_pb2.TRANSFER_STATE_POSTED
        live = (await stream.messages(1))[0]
        assert live.payment.transfer.amount_minor == 1234 and live.payment.transfer.id == transfer.id
        assert await balance(server.stubs, alice) == 10_000 - 1234
        assert await balance(server.stubs, bob) == 1234
        await stream.close()

    async def test_leaves_no_message_and_moves_nothing_when_funds_are_insufficient(self, server):
        alice, bob, room = await _parties(server, funds=100)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.chat.SendPayment(_pay(room, bob, 101), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        assert await _history(server.stubs, alice, room) == []
        assert await balance(server.stubs, alice) == 100

    async def test_posts_one_message_per_success_when_payments_race_for_the_same_funds(self, server):
        alice, bob, room = await _parties(server, funds=1000)
        results = await asyncio.gather(
            *(server.stubs.chat.SendPayment(_pay(room, bob, 100), metadata=alice.auth) for _ in range(16)),
            return_exceptions=True,
        )
        paid = [r for r in results if isinstance(r, chat_pb2.SendPaymentResponse)]
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(paid) == 10 and len(refused) == 6
        assert all(error_info(e).reason == "INSUFFICIENT_FUNDS" for e in refused)
        history = await _history(server.stubs, alice, room)
        assert [m.sequence for m in history] == list(range(1, 11))
        assert {m.payment.transfer.id for m in history} == {r.transfer.id for r in paid}
        assert await balance(server.stubs, alice) == 0 and await balance(server.stubs, bob) == 1000
        admin = await signed_up_admin(server)
        audit = await server.stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert audit.ok, audit.violations

    async def test_returns_the_first_payment_and_moves_money_once_when_retried(self, server):
        alice, bob, room = await _parties(server)
        request = _pay(room, bob, 500)
        replies = await asyncio.gather(
            *(server.stubs.chat.SendPayment(request, metadata=alice.auth) for _ in range(5))
        )
        assert len({(r.message.sequence, r.transfer.id) for r in replies}) == 1
        again = await server.stubs.chat.SendPayment(request, metadata=alice.auth)
        assert again.message.sequence == replies[0].message.sequence
        assert len(await _history(server.stubs, alice, room)) == 1
        assert await balance(server.stubs, bob) == 500

    async def test_is_failed_precondition_when_request_id_returns_with_another_amount(self, server):
        alice, bob, room = await _parties(server)
        rid = request_id()
        await server.stubs.chat.SendPayment(_pay(room, bob, 500, request_id=rid), metadata=alice.auth)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.chat.SendPayment(_pay(room, bob, 501, request_id=rid), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(server.stubs, bob) == 500

    async def test_its_request_id_is_a_reused_key_for_the_ledger_even_with_the_same_fields(self, server):
        alice, bob, room = await _parties(server)
        rid = request_id()
        await server.stubs.chat.SendPayment(
            _pay(room, bob, 500, request_id=rid, memo="tea"), metadata=alice.auth
        )
        same_fields = ledger_pb2.CreateTransferRequest(
            request_id=rid, to_user_id=bob.id, currency="USD", amount_minor=500, memo="tea"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.ledger.CreateTransfer(same_fields, metadata=alice.auth)
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(server.stubs, bob) == 500

    async def test_is_not_found_when_the_recipient_or_the_caller_is_not_a_member(self, server):
        alice, bob, room = await _parties(server)
        eve = await signed_up(server.stubs)
        for payer, payee in ((alice, eve), (eve, bob)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await server.stubs.chat.SendPayment(_pay(room, payee, 100), metadata=payer.auth)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert await balance(server.stubs, alice) == 10_000

    async def test_reports_every_bad_field_when_input_is_invalid(self, server):
        alice, _bob, room = await _parties(server, funds=0)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.chat.SendPayment(
                _pay(room, alice, 0, request_id="nope", currency="XXX", memo="n" * 257), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == {
            "request_id",
            "to_user_id",
            "currency",
            "amount_minor",
            "memo",
        }

    async def test_a_member_removed_while_the_payment_waits_cannot_pay(self, server, servers):
        alice, bob, room = await _parties(server)  # Alice owns the room
        await deposit(server, await signed_up_admin(server), bob, 500)
        replica = await servers.start(server.database_url)  # in one process the room's turn orders them
        removal = chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=bob.id)
        async with room_locked(server, room.id) as holder:
            removed = asyncio.ensure_future(server.stubs.chat.RemoveMember(removal, metadata=alice.auth))
            await waiting_on_a_lock(holder)
            paid = asyncio.ensure_future(
                replica.stubs.chat.SendPayment(_pay(room, alice, 100), metadata=bob.auth)
            )
            await waiting_on_a_lock(holder, count=2)  # the payment saw Bob a member, then waited
        await asyncio.wait_for(removed, 10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await asyncio.wait_for(paid, 10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert await balance(server.stubs, bob) == 500

    async def test_funds_arriving_while_it_locks_pay_into_an_account_opened_then(self, server):
        alice, bob, room = await _parties(server)  # Alice holds 10,000; Bob has no account yet
        admin = await signed_up_admin(server)
        holder = await asyncpg.connect(server.database_url)
        try:
            async with holder.transaction():  # a deposit to Alice, committed while the payment waits
                await one_call_of_ledger_create_transfers(
                    holder, admin.id, [("deposit", None, alice.id, "USD", 10_000)]
                )
                request = _pay(room, bob, 15_000)
                paying = asyncio.ensure_future(server.stubs.chat.SendPayment(request, metadata=alice.auth))
                await waiting_on_a_lock(holder)
        finally:
            await holder.close()
        # Alice could not pay when the batch locked its accounts, so Bob's was not opened then.
        await asyncio.wait_for(paying, 10)
        assert await balance(server.stubs, bob) == 15_000

    async def test_a_flood_of_payments_into_one_room_takes_one_connection(self, server):
        alice, bob, room = await _parties(server)
        flood = server.config.db_pool_size * 2
        waiting, outcomes = await flood_into_locked_room(
            server,
            room.id,
            lambda _i: server.stubs.chat.SendPayment(_pay(room, bob, 1), metadata=alice.auth),
            flood,
        )
        assert [o for o in outcomes if isinstance(o, Exception)] == []
        assert waiting == 1
        assert await balance(server.stubs, bob) == flood


class TestRequestPayment:
    async def test_posts_an_open_request_when_asking_a_member(self, server):
        alice, bob, room = await _parties(server, funds=0)
        message = await _ask(server.stubs, bob, room, alice, 700, memo="rent")
        assert message.kind == chat_pb2.MESSAGE_KIND_PAYMENT_REQUEST
        info = message.payment_request
        assert (info.to_user_id, info.from_user_id, info.amount_minor, info.memo) == (
            bob.id,
            alice.id,
            700,
            "rent",
        )
        assert info.state == chat_pb2.PAYMENT_REQUEST_STATE_OPEN and info.id and not info.transfer_id

    async def test_is_invalid_argument_when_the_payer_is_the_caller_or_the_expiry_is_past(self, server):
        alice, bob, room = await _parties(server, funds=0)
        past = timestamp_pb2.Timestamp()
        past.FromDatetime(datetime.now(UTC) - timedelta(seconds=1))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _ask(server.stubs, bob, room, bob, 700)
        assert set(field_violations(caught.value)) == {"from_user_id"}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _ask(server.stubs, bob, room, alice, 700, expire_time=past)
        assert set(field_violations(caught.value)) == {"expire_time"}

    async def test_a_retry_after_the_expiry_passed_returns_the_first_request(self, server):
        alice, bob, room = await _parties(server, funds=0)
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))
        rid = request_id()
        first = await _ask(server.stubs, bob, room, alice, 700, expire_time=soon, request_id=rid)
        await asyncio.sleep(1.2)
        again = await _ask(server.stubs, bob, room, alice, 700, expire_time=soon, request_id=rid)
        assert again.sequence == first.sequence


class TestRespondToPaymentRequest:
    async def test_pays_once_and_records_paid_when_the_payer_accepts(self, server):
        alice, bob, room = await _parties(server)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        rid = request_id()
        first = await _respond(server.stubs, alice, asked, ACCEPT, rid)
        assert first.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_PAID
        assert first.message.payment_request.transfer_id == first.transfer.id
        assert (first.transfer.from_user_id, first.transfer.to_user_id, first.transfer.amount_minor) == (
            alice.id,
            bob.id,
            700,
        )
        retried = await _respond(server.stubs, alice, asked, ACCEPT, rid)
        assert retried.message.sequence == first.message.sequence and retried.transfer.id == first.transfer.id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, alice, asked, ACCEPT)
        assert error_info(caught.value).reason == "PAYMENT_REQUEST_CLOSED"
        assert await balance(server.stubs, bob) == 700

    async def test_a_flood_of_answers_into_one_room_takes_one_connection(self, server):
        alice, bob, room = await _parties(server)
        flood = server.config.db_pool_size * 2
        asked = [await _ask(server.stubs, bob, room, alice, 1) for _ in range(flood)]
        waiting, outcomes = await flood_into_locked_room(
            server, room.id, lambda i: _respond(server.stubs, alice, asked[i], DECLINE), flood
        )
        assert [o for o in outcomes if isinstance(o, Exception)] == []
        assert waiting == 1

    async def test_pays_at_most_once_when_accepts_race(self, server):
        alice, bob, room = await _parties(server)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        results = await asyncio.gather(
            *(_respond(server.stubs, alice, asked, ACCEPT) for _ in range(6)), return_exceptions=True
        )
        assert len([r for r in results if not isinstance(r, BaseException)]) == 1
        assert all(
            error_info(r).reason == "PAYMENT_REQUEST_CLOSED"
            for r in results
            if isinstance(r, grpc.aio.AioRpcError)
        )
        assert await balance(server.stubs, bob) == 700
        states = [m.payment_request.state for m in await _history(server.stubs, bob, room)]
        assert states == [chat_pb2.PAYMENT_REQUEST_STATE_OPEN, chat_pb2.PAYMENT_REQUEST_STATE_PAID]

    async def test_leaves_the_request_open_when_the_payer_lacks_funds(self, server):
        alice, bob, room = await _parties(server, funds=100)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, alice, asked, ACCEPT)
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        assert len(await _history(server.stubs, bob, room)) == 1
        await deposit(server, await signed_up_admin(server), alice, 600)
        paid = await _respond(server.stubs, alice, asked, ACCEPT)
        assert paid.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_PAID

    @pytest.mark.parametrize(
        ("actor", "action", "state"),
        [
            ("payer", DECLINE, chat_pb2.PAYMENT_REQUEST_STATE_DECLINED),
            ("requester", CANCEL, chat_pb2.PAYMENT_REQUEST_STATE_CANCELLED),
        ],
    )
    async def test_closes_without_money_when_declined_or_cancelled(self, server, actor, action, state):
        alice, bob, room = await _parties(server)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        reply = await _respond(server.stubs, alice if actor == "payer" else bob, asked, action)
        assert reply.message.payment_request.state == state and not reply.HasField("transfer")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, alice, asked, ACCEPT)
        assert error_info(caught.value).reason == "PAYMENT_REQUEST_CLOSED"
        assert await balance(server.stubs, alice) == 10_000

    async def test_is_permission_denied_when_the_wrong_party_acts(self, server):
        alice, bob, room = await _parties(server)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        for who, action in ((bob, ACCEPT), (bob, DECLINE), (alice, CANCEL)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _respond(server.stubs, who, asked, action)
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    @pytest.mark.parametrize("departure", ["removed", "left"])
    async def test_a_requester_who_left_the_room_is_not_paid_but_can_be_declined(self, server, departure):
        alice, _, room = await _parties(server)
        carol = await signed_up(server.stubs)
        await server.stubs.chat.AddMembers(
            chat_pb2.AddMembersRequest(room_id=room.id, user_ids=[carol.id]), metadata=alice.auth
        )
        asked = await _ask(server.stubs, carol, room, alice, 300)
        if departure == "removed":
            await server.stubs.chat.RemoveMember(
                chat_pb2.RemoveMemberRequest(room_id=room.id, user_id=carol.id), metadata=alice.auth
            )
        else:
            await server.stubs.chat.LeaveRoom(chat_pb2.LeaveRoomRequest(room_id=room.id), metadata=carol.auth)
        rid = request_id()
        for _ in range(2):  # the refusal is final for its request_id
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _respond(server.stubs, alice, asked, ACCEPT, rid)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "not a member" in (caught.value.details() or "")
        assert await balance(server.stubs, alice) == 10_000
        declined = await _respond(server.stubs, alice, asked, DECLINE)
        assert declined.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_DECLINED

    async def test_is_not_found_when_the_caller_is_not_in_the_room(self, server):
        alice, bob, room = await _parties(server)
        asked = await _ask(server.stubs, bob, room, alice, 700)
        eve = await signed_up(server.stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, eve, asked, ACCEPT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_records_expired_and_refuses_when_accepted_after_expiry(self, server):
        alice, bob, room = await _parties(server)
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(datetime.now(UTC) + timedelta(milliseconds=300))
        asked = await _ask(server.stubs, bob, room, alice, 700, expire_time=soon)
        await asyncio.sleep(0.4)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, alice, asked, ACCEPT)
        assert error_info(caught.value).reason == "PAYMENT_REQUEST_EXPIRED"
        history = await _history(server.stubs, bob, room)
        assert [m.payment_request.state for m in history] == [
            chat_pb2.PAYMENT_REQUEST_STATE_OPEN,
            chat_pb2.PAYMENT_REQUEST_STATE_EXPIRED,
        ]
        assert await balance(server.stubs, alice) == 10_000

    async def test_sweeper_records_expired_and_accepting_is_refused_afterwards(self, server):
        alice, bob, room = await _parties(server)
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(datetime.now(UTC) + timedelta(milliseconds=300))
        asked = await _ask(server.stubs, bob, room, alice, 700, expire_time=soon)
        await asyncio.sleep(0.4)
        published = _Recorder()
        assert await payments.expire_due_requests(server.pool, published) == 1
        assert await payments.expire_due_requests(server.pool, published) == 0
        expired = (await _history(server.stubs, bob, room))[-1]
        assert published.events == [events.MessageStored(room.id, expired.sequence)]  # for the chat bus
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _respond(server.stubs, alice, asked, ACCEPT)
        assert error_info(caught.value).reason == "PAYMENT_REQUEST_EXPIRED"
        states = [m.payment_request.state for m in await _history(server.stubs, bob, room)]
        assert states == [chat_pb2.PAYMENT_REQUEST_STATE_OPEN, chat_pb2.PAYMENT_REQUEST_STATE_EXPIRED]


class _Recorder:
    """A chat bus that keeps what it was given."""

    def __init__(self) -> None:
        self.events: list[events.ChatEvent] = []

    async def publish(self, *published: events.ChatEvent) -> None:
        self.events.extend(published)
