"""A definite answer is final for its request_id: a refused request stays refused, whatever happens since."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2
from tests.chat.support import group
from tests.helpers import Account, error_info, random_name, request_id, signed_up, signed_up_admin
from tests.ledger.support import balance, deposit, held, transfer_request

FP = grpc.StatusCode.FAILED_PRECONDITION


async def _refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    code = caught.value.code()
    return code, error_info(caught.value).reason if code == FP else ""


async def _answer(call: Any) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return str(error_info(exc).reason)
    return "POSTED"


async def _funded(server: Any, amount: int) -> tuple[Account, Account, Account]:
    admin = await signed_up_admin(server)
    alice, bob = await signed_up(server.stubs), await signed_up(server.stubs)
    if amount:
        await deposit(server, admin, alice, amount)
    return alice, bob, admin


class TestRefusedTransfers:
    async def test_a_refused_transfer_stays_refused_when_retried_after_the_money_arrives(self, server):
        alice, bob, admin = await _funded(server, 10)
        request = transfer_request(bob, 50)
        first = await _refusal(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth))
        await deposit(server, admin, alice, 100)
        again = await _refusal(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth))
        assert first == again == (FP, "INSUFFICIENT_FUNDS")
        assert (await balance(server.stubs, alice), await held(server.stubs, bob)) == (110, 0)

    async def test_the_refused_id_with_another_body_is_a_reused_key(self, server):
        alice, bob, _ = await _funded(server, 10)
        request = transfer_request(bob, 50)
        await _refusal(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth))
        other = transfer_request(bob, 5, request_id=request.request_id)
        assert await _refusal(server.stubs.ledger.CreateTransfer(other, metadata=alice.auth)) == (
            FP,
            "IDEMPOTENCY_KEY_REUSED",
        )

    async def test_an_invalid_argument_is_not_remembered_when_the_id_comes_back_valid(self, server):
        alice, bob, _ = await _funded(server, 10)
        rid = request_id()
        bad = transfer_request(bob, 0, request_id=rid)
        assert (await _refusal(server.stubs.ledger.CreateTransfer(bad, metadata=alice.auth)))[0] == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
        reply = await server.stubs.ledger.CreateTransfer(
            transfer_request(bob, 5, request_id=rid), metadata=alice.auth
        )
        assert reply.transfer.state == ledger_pb2.TRANSFER_STATE_POSTED

    async def test_concurrent_copies_racing_a_deposit_all_get_the_answer_that_is_stored(self, server):
        for _ in range(3):  # each round races differently
            alice, bob, admin = await _funded(server, 10)
            request = transfer_request(bob, 50)

            copies = (
                _answer(server.stubs.ledger.CreateTransfer(request, metadata=alice.auth)) for _ in range(10)
            )
            answers = await asyncio.gather(*copies, deposit(server, admin, alice, 100))
            outcomes = set(answers[:10])
            assert len(outcomes) == 1, answers
            refused = await server.pool.fetchval(
                "SELECT outcome FROM request_refusals WHERE initiator_id = $1 AND request_id = $2",
                alice.id,
                request.request_id,
            )
            opened = await server.stubs.ledger.ListAccounts(
                ledger_pb2.ListAccountsRequest(), metadata=bob.auth
            )
            moved = await balance(server.stubs, bob) if opened.accounts else 0  # refused: none opened
            assert (outcomes, refused, moved) in (
                ({"POSTED"}, None, 50),
                ({"INSUFFICIENT_FUNDS"}, "INSUFFICIENT_FUNDS", 0),
            )

    async def test_a_withdrawal_from_an_unknown_username_stays_not_found_when_the_user_registers(
        self, server
    ):
        _, _, admin = await _funded(server, 0)
        name = random_name()
        request = ledger_pb2.WithdrawRequest(
            request_id=request_id(), from_username=name, currency="USD", amount_minor=1
        )
        assert (await _refusal(server.stubs.ledger.Withdraw(request, metadata=admin.auth)))[0] == (
            grpc.StatusCode.NOT_FOUND
        )
        newcomer = await signed_up(server.stubs, name)
        await deposit(server, admin, newcomer, 10)
        assert (await _refusal(server.stubs.ledger.Withdraw(request, metadata=admin.auth)))[0] == (
            grpc.StatusCode.NOT_FOUND
        )
        assert await balance(server.stubs, newcomer) == 10


class TestRefusedResolutions:
    async def test_posting_a_voided_transfer_stays_refused_for_its_request_id(self, server):
        alice, bob, _ = await _funded(server, 100)
        pending = await server.stubs.ledger.CreatePendingTransfer(
            ledger_pb2.CreatePendingTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=30
            ),
            metadata=alice.auth,
        )
        void = ledger_pb2.VoidPendingTransferRequest(request_id=request_id(), transfer_id=pending.transfer.id)
        await server.stubs.ledger.VoidPendingTransfer(void, metadata=alice.auth)
        post = ledger_pb2.PostPendingTransferRequest(request_id=request_id(), transfer_id=pending.transfer.id)
        first = await _refusal(server.stubs.ledger.PostPendingTransfer(post, metadata=alice.auth))
        again = await _refusal(server.stubs.ledger.PostPendingTransfer(post, metadata=alice.auth))
        assert first == again == (FP, "TRANSFER_NOT_PENDING")


class TestRefusedPayments:
    async def test_a_refused_payment_stays_refused_when_retried_after_the_money_arrives(self, server):
        alice, bob, admin = await _funded(server, 10)
        room = await group(server.stubs, alice, bob)
        pay = chat_pb2.SendPaymentRequest(
            request_id=request_id(), room_id=room.id, to_user_id=bob.id, currency="USD", amount_minor=50
        )
        first = await _refusal(server.stubs.chat.SendPayment(pay, metadata=alice.auth))
        await deposit(server, admin, alice, 100)
        again = await _refusal(server.stubs.chat.SendPayment(pay, metadata=alice.auth))
        assert first == again == (FP, "INSUFFICIENT_FUNDS")
        as_transfer = transfer_request(bob, 50, request_id=pay.request_id)
        assert await _refusal(server.stubs.ledger.CreateTransfer(as_transfer, metadata=alice.auth)) == (
            FP,
            "IDEMPOTENCY_KEY_REUSED",
        )
        assert await held(server.stubs, bob) == 0

    async def test_a_refused_acceptance_stays_refused_when_retried_after_the_money_arrives(self, server):
        alice, bob, admin = await _funded(server, 0)
        room = await group(server.stubs, alice, bob)
        asked = await server.stubs.chat.RequestPayment(
            chat_pb2.RequestPaymentRequest(
                request_id=request_id(),
                room_id=room.id,
                from_user_id=alice.id,
                currency="USD",
                amount_minor=40,
            ),
            metadata=bob.auth,
        )
        accept = chat_pb2.RespondToPaymentRequestRequest(
            request_id=request_id(),
            payment_request_id=asked.message.payment_request.id,
            action=chat_pb2.PAYMENT_REQUEST_ACTION_ACCEPT,
        )
        first = await _refusal(server.stubs.chat.RespondToPaymentRequest(accept, metadata=alice.auth))
        await deposit(server, admin, alice, 100)
        again = await _refusal(server.stubs.chat.RespondToPaymentRequest(accept, metadata=alice.auth))
        assert first == again == (FP, "INSUFFICIENT_FUNDS")
        accept.request_id = request_id()  # a new request may pay it now
        paid = await server.stubs.chat.RespondToPaymentRequest(accept, metadata=alice.auth)
        assert paid.message.payment_request.state == chat_pb2.PAYMENT_REQUEST_STATE_PAID


class TestOneNamespace:
    async def test_a_request_id_chat_answered_cannot_move_money_in_the_ledger(self, server):
        alice, bob, _ = await _funded(server, 100)
        room = await group(server.stubs, alice, bob)
        rid = request_id()
        await server.stubs.chat.RequestPayment(
            chat_pb2.RequestPaymentRequest(
                request_id=rid, room_id=room.id, from_user_id=bob.id, currency="USD", amount_minor=5
            ),
            metadata=alice.auth,
        )
        ledger = server.stubs.ledger
        for call in (
            ledger.CreateTransfer(transfer_request(bob, 7, request_id=rid), metadata=alice.auth),
            ledger.CreatePendingTransfer(
                ledger_pb2.CreatePendingTransferRequest(
                    request_id=rid, to_user_id=bob.id, currency="USD", amount_minor=7
                ),
                metadata=alice.auth,
            ),
        ):
            assert await _refusal(call) == (FP, "IDEMPOTENCY_KEY_REUSED")
        assert await held(server.stubs, bob) == 0

    async def test_a_request_id_of_a_declined_request_cannot_move_money_in_the_ledger(self, server):
        alice, bob, admin = await _funded(server, 0)
        await deposit(server, admin, bob, 100)
        room = await group(server.stubs, alice, bob)
        asked = await server.stubs.chat.RequestPayment(
            chat_pb2.RequestPaymentRequest(
                request_id=request_id(), room_id=room.id, from_user_id=bob.id, currency="USD", amount_minor=5
            ),
            metadata=alice.auth,
        )
        rid = request_id()
        await server.stubs.chat.RespondToPaymentRequest(
            chat_pb2.RespondToPaymentRequestRequest(
                request_id=rid,
                payment_request_id=asked.message.payment_request.id,
                action=chat_pb2.PAYMENT_REQUEST_ACTION_DECLINE,
            ),
            metadata=bob.auth,
        )
        refused = await _refusal(
            server.stubs.ledger.CreateTransfer(transfer_request(alice, 7, request_id=rid), metadata=bob.auth)
        )
        assert refused == (FP, "IDEMPOTENCY_KEY_REUSED")
        assert await balance(server.stubs, bob) == 100


class TestExpiries:
    async def test_a_retry_after_its_expiry_passed_gets_the_first_answer(self, server):
        alice, bob, _ = await _funded(server, 10)
        soon = timestamp_pb2.Timestamp()
        soon.FromDatetime(datetime.now(UTC) + timedelta(seconds=1))

        def hold(amount: int, rid: str) -> ledger_pb2.CreatePendingTransferRequest:
            return ledger_pb2.CreatePendingTransferRequest(
                request_id=rid, to_user_id=bob.id, currency="USD", amount_minor=amount, expire_time=soon
            )

        created_id, refused_id = request_id(), request_id()
        created = await server.stubs.ledger.CreatePendingTransfer(hold(5, created_id), metadata=alice.auth)
        refused = await _refusal(
            server.stubs.ledger.CreatePendingTransfer(hold(50, refused_id), metadata=alice.auth)
        )
        await asyncio.sleep(1.2)
        again = await server.stubs.ledger.CreatePendingTransfer(hold(5, created_id), metadata=alice.auth)
        assert again.transfer.id == created.transfer.id
        assert await _refusal(
            server.stubs.ledger.CreatePendingTransfer(hold(50, refused_id), metadata=alice.auth)
        ) == (refused)
        late = await _refusal(
            server.stubs.ledger.CreatePendingTransfer(hold(5, request_id()), metadata=alice.auth)
        )
        assert late == (grpc.StatusCode.INVALID_ARGUMENT, "")


# One 5-unit transfer $1 -> $3 with request_id $2, through each creation function; how many created.
_LEAN_ONE = """
SELECT count(*) FROM ledger_transfer_batch(
    ARRAY[$1::uuid], ARRAY[$2::uuid], ARRAY[$3::uuid], ARRAY['USD'], ARRAY[5::bigint], ARRAY[''])
"""
_FULL_ONE = """
SELECT count(*) FROM ledger_create_transfers(
    ARRAY[$1::uuid], ARRAY[$2::uuid], ARRAY['transfer'], ARRAY[false], ARRAY[$1::uuid], ARRAY[NULL::text],
    ARRAY[$3::uuid], ARRAY[NULL::text], ARRAY['USD'], ARRAY[5::bigint], ARRAY[''], ARRAY[NULL::timestamptz])
WHERE outcome = 'CREATED'
"""


class TestRequestKeyLock:
    """The functions decide a request only under its key's lock (SQL level, deterministic)."""

    @pytest.mark.parametrize("function", ["ledger_transfer_batch", "ledger_create_transfers"])
    async def test_a_copy_waits_for_the_key_and_honours_the_refusal_decided_meanwhile(self, server, function):
        alice, bob, _ = await _funded(server, 100)
        await server.stubs.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(currency="USD"), metadata=bob.auth
        )
        key = request_id()
        calls = {
            "ledger_transfer_batch": _LEAN_ONE,
            "ledger_create_transfers": _FULL_ONE,
        }
        async with server.pool.acquire() as deciding, server.pool.acquire() as copy:
            transaction = deciding.transaction()
            await transaction.start()
            await deciding.execute("SELECT request_lock(ARRAY[$1::uuid], ARRAY[$2::uuid])", alice.id, key)
            created = asyncio.create_task(copy.fetchval(calls[function], alice.id, key, bob.id))
            await asyncio.sleep(0.5)
            assert not created.done(), "the copy decided without waiting for the request's key"
            await deciding.execute(
                "SELECT request_refuse($1::uuid, $2::uuid, 'another body', 'INSUFFICIENT_FUNDS')",
                alice.id,
                key,
            )
            await transaction.commit()
            assert await asyncio.wait_for(created, 10) == 0
        assert await held(server.stubs, bob) == 0
