"""Two-phase transfers: reserve, post (in full or for less), void, expire."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendinchat.v1 import ledger_pb2
from tests.helpers import Account, error_info, field_violations, request_id, signed_up
from tests.ledger.support import account, balance


def _expiry(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(seconds=seconds))
    return stamp


async def _hold(
    stubs: Any, sender: Account, recipient: Account, amount: int, **fields: Any
) -> ledger_pb2.Transfer:
    reply = await stubs.ledger.CreatePendingTransfer(
        ledger_pb2.CreatePendingTransferRequest(
            request_id=fields.pop("request_id", request_id()),
            to_user_id=recipient.id,
            currency="USD",
            amount_minor=amount,
            **fields,
        ),
        metadata=sender.auth,
    )
    transfer: ledger_pb2.Transfer = reply.transfer
    return transfer


async def _post(
    stubs: Any, caller: Account, transfer_id: str, amount: int = 0, rid: str | None = None
) -> ledger_pb2.Transfer:
    reply = await stubs.ledger.PostPendingTransfer(
        ledger_pb2.PostPendingTransferRequest(
            request_id=rid or request_id(), transfer_id=transfer_id, amount_minor=amount
        ),
        metadata=caller.auth,
    )
    transfer: ledger_pb2.Transfer = reply.transfer
    return transfer


async def _void(stubs: Any, caller: Account, transfer_id: str, rid: str | None = None) -> ledger_pb2.Transfer:
    reply = await stubs.ledger.VoidPendingTransfer(
        ledger_pb2.VoidPendingTransferRequest(request_id=rid or request_id(), transfer_id=transfer_id),
        metadata=caller.auth,
    )
    transfer: ledger_pb2.Transfer = reply.transfer
    return transfer


class TestCreatePendingTransfer:
    async def test_reserves_funds_without_moving_them(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 4_000, expire_time=_expiry(3600))
        assert held.state == ledger_pb2.TRANSFER_STATE_PENDING
        assert (held.amount_minor, held.posted_amount_minor) == (4_000, 0)
        assert held.HasField("expire_time") and not held.HasField("resolve_time")
        mine, theirs = await account(stubs, alice), await account(stubs, bob)
        assert (mine.balance_minor, mine.pending_debit_minor, mine.available_minor) == (10_000, 4_000, 6_000)
        assert (theirs.balance_minor, theirs.pending_credit_minor, theirs.available_minor) == (0, 4_000, 0)

    async def test_counts_reservations_against_available_balance(self, stubs, alice, bob):
        await _hold(stubs, alice, bob, 8_000)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _hold(stubs, alice, bob, 2_001)
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(
                ledger_pb2.CreateTransferRequest(
                    request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=2_001
                ),
                metadata=alice.auth,
            )
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"

    async def test_is_invalid_argument_when_expiry_is_in_the_past(self, stubs, alice, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _hold(stubs, alice, bob, 1, expire_time=_expiry(-1))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expire_time" in field_violations(caught.value)
        assert (await account(stubs, alice)).pending_debit_minor == 0

    async def test_is_idempotency_key_reused_when_a_transfer_request_id_is_replayed_as_pending(
        self, stubs, alice, bob
    ):
        rid = request_id()
        await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=rid, to_user_id=bob.id, currency="USD", amount_minor=5
            ),
            metadata=alice.auth,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _hold(stubs, alice, bob, 5, request_id=rid)
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"


class TestPostPendingTransfer:
    async def test_moves_the_reserved_amount_when_posted_in_full(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 3_000)
        posted = await _post(stubs, alice, held.id)
        assert posted.id == held.id
        assert posted.state == ledger_pb2.TRANSFER_STATE_POSTED
        assert posted.posted_amount_minor == 3_000 and posted.HasField("resolve_time")
        mine, theirs = await account(stubs, alice), await account(stubs, bob)
        assert (mine.balance_minor, mine.pending_debit_minor) == (7_000, 0)
        assert (theirs.balance_minor, theirs.pending_credit_minor) == (3_000, 0)

    async def test_releases_the_rest_when_posted_for_less(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 3_000)
        posted = await _post(stubs, alice, held.id, amount=1_200)
        assert (posted.amount_minor, posted.posted_amount_minor) == (3_000, 1_200)
        mine = await account(stubs, alice)
        assert (mine.balance_minor, mine.pending_debit_minor, mine.available_minor) == (8_800, 0, 8_800)
        assert await balance(stubs, bob) == 1_200

    async def test_returns_the_same_result_when_retried(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        rid = request_id()
        first = await _post(stubs, alice, held.id, rid=rid)
        second = await _post(stubs, alice, held.id, rid=rid)
        assert first == second
        assert await balance(stubs, bob) == 500

    async def test_is_idempotency_key_reused_when_retried_with_another_amount(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        rid = request_id()
        await _post(stubs, alice, held.id, amount=100, rid=rid)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, held.id, amount=200, rid=rid)
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(stubs, bob) == 100

    async def test_is_transfer_not_pending_when_already_posted_by_another_request(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        await _post(stubs, alice, held.id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, held.id)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "TRANSFER_NOT_PENDING"
        assert await balance(stubs, bob) == 500

    async def test_posts_once_when_two_posts_race(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        results = await asyncio.gather(
            *(_post(stubs, alice, held.id) for _ in range(5)), return_exceptions=True
        )
        assert sum(isinstance(r, ledger_pb2.Transfer) for r in results) == 1
        assert await balance(stubs, bob) == 500
        assert await balance(stubs, alice) == 9_500

    async def test_is_permission_denied_when_the_recipient_posts(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, bob, held.id)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await account(stubs, alice)).pending_debit_minor == 500

    async def test_is_not_found_when_caller_is_not_a_party(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        mallory = await signed_up(stubs)
        for call in (_post(stubs, mallory, held.id), _void(stubs, mallory, held.id)):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, request_id())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_invalid_argument_when_amount_exceeds_the_reservation(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 500)
        for amount in (501, -1):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _post(stubs, alice, held.id, amount=amount)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "amount_minor" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, "nope", rid="nope")
        assert set(field_violations(caught.value)) == {"transfer_id", "request_id"}
        assert (await account(stubs, alice)).pending_debit_minor == 500

    async def test_is_transfer_expired_and_funds_are_free_when_expiry_has_passed(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 9_000, expire_time=_expiry(0.3))
        await asyncio.sleep(0.5)
        mine = await account(stubs, alice)
        assert (mine.pending_debit_minor, mine.available_minor) == (0, 10_000)
        seen = await stubs.ledger.GetTransfer(
            ledger_pb2.GetTransferRequest(transfer_id=held.id), metadata=bob.auth
        )
        assert seen.transfer.state == ledger_pb2.TRANSFER_STATE_EXPIRED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, held.id)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "TRANSFER_EXPIRED"
        await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=10_000
            ),
            metadata=alice.auth,
        )
        assert await balance(stubs, bob) == 10_000

    async def test_spends_expired_reservations_before_the_sweeper_runs(self, stubs, alice, bob):
        await _hold(stubs, alice, bob, 10_000, expire_time=_expiry(0.2))
        await asyncio.sleep(0.3)
        reply = await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=10_000
            ),
            metadata=alice.auth,
        )
        assert reply.transfer.state == ledger_pb2.TRANSFER_STATE_POSTED
        assert await balance(stubs, alice) == 0


class TestVoidPendingTransfer:
    @pytest.mark.parametrize("who", ["sender", "recipient"])
    async def test_releases_the_reservation_when_either_party_voids(self, stubs, alice, bob, who):
        held = await _hold(stubs, alice, bob, 2_000)
        voided = await _void(stubs, alice if who == "sender" else bob, held.id)
        assert voided.state == ledger_pb2.TRANSFER_STATE_VOIDED
        assert voided.posted_amount_minor == 0 and voided.HasField("resolve_time")
        mine, theirs = await account(stubs, alice), await account(stubs, bob)
        assert (mine.balance_minor, mine.pending_debit_minor, mine.available_minor) == (10_000, 0, 10_000)
        assert (theirs.balance_minor, theirs.pending_credit_minor) == (0, 0)

    async def test_is_transfer_not_pending_when_posting_a_voided_transfer(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 2_000)
        await _void(stubs, bob, held.id)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _post(stubs, alice, held.id)
        assert error_info(caught.value).reason == "TRANSFER_NOT_PENDING"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _void(stubs, alice, held.id)
        assert error_info(caught.value).reason == "TRANSFER_NOT_PENDING"
        assert await balance(stubs, bob) == 0

    async def test_is_idempotency_key_reused_when_a_post_request_id_is_used_to_void(self, stubs, alice, bob):
        held = await _hold(stubs, alice, bob, 100)
        other = await _hold(stubs, alice, bob, 100)
        rid = request_id()
        await _post(stubs, alice, held.id, rid=rid)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _void(stubs, alice, other.id, rid=rid)
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert (await account(stubs, alice)).pending_debit_minor == 100

    async def test_is_idempotency_key_reused_when_a_void_request_id_is_used_to_transfer(
        self, stubs, alice, bob
    ):
        held = await _hold(stubs, alice, bob, 100)
        rid = request_id()
        await _void(stubs, alice, held.id, rid=rid)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(
                ledger_pb2.CreateTransferRequest(
                    request_id=rid, to_user_id=bob.id, currency="USD", amount_minor=1
                ),
                metadata=alice.auth,
            )
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(stubs, bob) == 0
