"""LedgerService.CreateTransfer: money moves once, errors move nothing, retries are safe."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from google.protobuf import timestamp_pb2

from sendinchat.v1 import ledger_pb2
from tests.helpers import error_info, field_violations, request_id, signed_up
from tests.ledger.support import account, balance, one_call_of_ledger_create_transfers, transfer_request


class TestCreateTransfer:
    async def test_moves_money_when_funds_suffice(self, stubs, alice, bob):
        reply = await stubs.ledger.CreateTransfer(
            transfer_request(bob, 2_500, memo="lunch"), metadata=alice.auth
        )
        t = reply.transfer
        assert t.kind == ledger_pb2.TRANSFER_KIND_TRANSFER
        assert t.state == ledger_pb2.TRANSFER_STATE_POSTED
        assert (t.from_user_id, t.to_user_id) == (alice.id, bob.id)
        assert (t.amount_minor, t.posted_amount_minor, t.currency, t.memo) == (2_500, 2_500, "USD", "lunch")
        assert t.create_time.seconds > 0 and t.resolve_time.seconds > 0
        assert not t.HasField("expire_time")
        assert await balance(stubs, alice) == 7_500
        assert await balance(stubs, bob) == 2_500
        bob_account = await account(stubs, bob)
        assert t.to_account_id == bob_account.id
        assert bob_account.available_minor == 2_500

    async def test_finds_recipient_when_named_by_username(self, stubs, alice, bob):
        reply = await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_username=bob.username.upper(), currency="USD", amount_minor=1
            ),
            metadata=alice.auth,
        )
        assert reply.transfer.to_user_id == bob.id
        assert await balance(stubs, bob) == 1

    async def test_is_failed_precondition_and_moves_nothing_when_funds_are_short(self, stubs, alice, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(transfer_request(bob, 10_001), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        assert await balance(stubs, alice) == 10_000
        listed = await stubs.ledger.ListTransfers(ledger_pb2.ListTransfersRequest(), metadata=bob.auth)
        assert list(listed.transfers) == []
        accounts = await stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(), metadata=bob.auth)
        assert list(accounts.accounts) == []  # nor does it open the recipient's account

    async def test_one_batch_asking_more_than_the_sender_has_opens_only_the_paid_recipient(
        self, server, alice
    ):
        bob, carol = await signed_up(server.stubs), await signed_up(server.stubs)
        rows = await one_call_of_ledger_create_transfers(
            server.pool,
            alice.id,
            [("transfer", alice.id, bob.id, "USD", 10_000), ("transfer", alice.id, carol.id, "USD", 10_000)],
        )
        assert sorted((r["idx"], r["outcome"]) for r in rows) == [(1, "CREATED"), (2, "INSUFFICIENT_FUNDS")]
        opened = await server.pool.fetch(
            "SELECT user_id FROM accounts WHERE user_id = ANY($1::uuid[])", [bob.id, carol.id]
        )
        assert [str(r["user_id"]) for r in opened] == [bob.id]

    async def test_a_reused_key_or_a_passed_expiry_opens_no_account_for_the_recipient(self, server, alice):
        first = transfer_request(await signed_up(server.stubs), 1)
        await server.stubs.ledger.CreateTransfer(first, metadata=alice.auth)
        carol = await signed_up(server.stubs)
        reused = ledger_pb2.CreateTransferRequest(
            request_id=first.request_id, to_user_id=carol.id, currency="USD", amount_minor=1
        )
        past = timestamp_pb2.Timestamp(seconds=int(time.time()) - 60)
        expired = ledger_pb2.CreatePendingTransferRequest(
            request_id=request_id(), to_user_id=carol.id, currency="USD", amount_minor=1, expire_time=past
        )
        for refused in (
            server.stubs.ledger.CreateTransfer(reused, metadata=alice.auth),
            server.stubs.ledger.CreatePendingTransfer(expired, metadata=alice.auth),
        ):
            with pytest.raises(grpc.aio.AioRpcError):
                await refused
        accounts = await server.stubs.ledger.ListAccounts(
            ledger_pb2.ListAccountsRequest(), metadata=carol.auth
        )
        assert list(accounts.accounts) == []

    async def test_is_insufficient_funds_when_sender_has_no_account_in_currency(self, stubs, alice, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(transfer_request(alice, 1, "EUR"), metadata=bob.auth)
        assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        for party in (bob, alice):  # a failed transfer opens nothing, on either side
            accounts = await stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(), metadata=party.auth)
            assert [a.currency for a in accounts.accounts] == ([] if party is bob else ["USD"])

    async def test_is_not_found_when_recipient_is_unknown(self, stubs, alice):
        for request in (
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=request_id(), currency="USD", amount_minor=1
            ),
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_username="nobody_here", currency="USD", amount_minor=1
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert await balance(stubs, alice) == 10_000

    async def test_is_invalid_argument_when_sending_to_oneself(self, stubs, alice):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(transfer_request(alice, 1), metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to_user_id" in field_violations(caught.value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(
                ledger_pb2.CreateTransferRequest(
                    request_id=request_id(), to_username=alice.username, currency="USD", amount_minor=1
                ),
                metadata=alice.auth,
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "to_username" in field_violations(caught.value)
        assert await balance(stubs, alice) == 10_000

    @pytest.mark.parametrize(
        ("fields", "field"),
        [
            ({"amount_minor": 0}, "amount_minor"),
            ({"amount_minor": -5}, "amount_minor"),
            ({"currency": "XYZ"}, "currency"),
            ({"currency": "usd"}, "currency"),
            ({"currency": ""}, "currency"),
            ({"request_id": "not-a-uuid"}, "request_id"),
            ({"request_id": ""}, "request_id"),
            ({"memo": "m" * 257}, "memo"),
        ],
    )
    async def test_is_invalid_argument_with_field_violation_when_field_is_bad(
        self, stubs, alice, bob, fields, field
    ):
        request = transfer_request(bob, 100)
        for name, value in fields.items():
            setattr(request, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)
        assert await balance(stubs, alice) == 10_000

    async def test_reports_every_bad_field_at_once(self, stubs, alice):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(
                ledger_pb2.CreateTransferRequest(request_id="x", currency="?", amount_minor=0),
                metadata=alice.auth,
            )
        assert set(field_violations(caught.value)) == {"request_id", "to_user_id", "currency", "amount_minor"}

    async def test_accepts_memo_of_exactly_256_characters(self, stubs, alice, bob):
        reply = await stubs.ledger.CreateTransfer(
            transfer_request(bob, 1, memo="é" * 256), metadata=alice.auth
        )
        assert reply.transfer.memo == "é" * 256

    async def test_is_unauthenticated_without_token(self, stubs, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(transfer_request(bob, 1))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


class TestCreateTransferIdempotency:
    async def test_returns_first_transfer_and_moves_money_once_when_retried(self, stubs, alice, bob):
        request = transfer_request(bob, 1_000)
        first = await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        second = await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        assert second.transfer == first.transfer
        assert await balance(stubs, alice) == 9_000
        assert await balance(stubs, bob) == 1_000

    async def test_returns_first_transfer_when_retried_after_funds_ran_out(self, stubs, alice, bob):
        request = transfer_request(bob, 10_000)
        first = await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        second = await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        assert second.transfer.id == first.transfer.id
        assert await balance(stubs, alice) == 0

    async def test_moves_money_once_when_ten_copies_arrive_at_once(self, stubs, alice, bob):
        request = transfer_request(bob, 700)
        replies = await asyncio.gather(
            *(stubs.ledger.CreateTransfer(request, metadata=alice.auth) for _ in range(10))
        )
        assert len({r.transfer.id for r in replies}) == 1
        assert await balance(stubs, alice) == 9_300
        assert await balance(stubs, bob) == 700

    @pytest.mark.parametrize(
        "change", [{"amount_minor": 2}, {"currency": "EUR"}, {"memo": "other"}, {"recipient": "carol"}]
    )
    async def test_is_idempotency_key_reused_when_body_differs(self, stubs, alice, bob, change):
        carol = await signed_up(stubs)
        request = transfer_request(bob, 1)
        await stubs.ledger.CreateTransfer(request, metadata=alice.auth)
        changed = ledger_pb2.CreateTransferRequest()
        changed.CopyFrom(request)
        for name, value in change.items():
            if name == "recipient":
                changed.to_user_id = carol.id
            else:
                setattr(changed, name, value)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.CreateTransfer(changed, metadata=alice.auth)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(stubs, alice) == 9_999
        assert await balance(stubs, bob) == 1

    async def test_same_request_id_from_two_senders_are_two_transfers(self, stubs, alice, bob, server, admin):
        from tests.ledger.support import deposit

        await deposit(server, admin, bob, 50)
        rid = request_id()
        a = await stubs.ledger.CreateTransfer(transfer_request(bob, 10, request_id=rid), metadata=alice.auth)
        b = await stubs.ledger.CreateTransfer(transfer_request(alice, 20, request_id=rid), metadata=bob.auth)
        assert a.transfer.id != b.transfer.id
        assert await balance(stubs, bob) == 50 + 10 - 20
