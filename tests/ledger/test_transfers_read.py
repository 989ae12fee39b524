"""GetTransfer and ListTransfers: only the parties see a transfer; pages are stable."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from sendinchat.v1 import ledger_pb2
from tests.helpers import Account, field_violations, request_id, signed_up
from tests.ledger.support import deposit, transfer_request


async def _send(
    stubs: Any, sender: Account, recipient: Account, amount: int, currency: str = "USD"
) -> ledger_pb2.Transfer:
    reply = await stubs.ledger.CreateTransfer(
        transfer_request(recipient, amount, currency), metadata=sender.auth
    )
    transfer: ledger_pb2.Transfer = reply.transfer
    return transfer


async def _all_pages(stubs: Any, user: Account, **fields: Any) -> list[ledger_pb2.Transfer]:
    transfers: list[ledger_pb2.Transfer] = []
    token = ""
    while True:
        page = await stubs.ledger.ListTransfers(
            ledger_pb2.ListTransfersRequest(page_token=token, **fields), metadata=user.auth
        )
        transfers.extend(page.transfers)
        token = page.next_page_token
        if not token:
            return transfers


class TestGetTransfer:
    async def test_both_parties_see_the_transfer(self, stubs, alice, bob):
        sent = await _send(stubs, alice, bob, 10)
        for user in (alice, bob):
            reply = await stubs.ledger.GetTransfer(
                ledger_pb2.GetTransferRequest(transfer_id=sent.id), metadata=user.auth
            )
            assert reply.transfer == sent

    async def test_is_not_found_for_a_third_party(self, stubs, alice, bob):
        sent = await _send(stubs, alice, bob, 10)
        mallory = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetTransfer(
                ledger_pb2.GetTransferRequest(transfer_id=sent.id), metadata=mallory.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_not_found_or_invalid_for_unknown_or_malformed_ids(self, stubs, alice):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetTransfer(
                ledger_pb2.GetTransferRequest(transfer_id=request_id()), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetTransfer(
                ledger_pb2.GetTransferRequest(transfer_id="x"), metadata=alice.auth
            )
        assert "transfer_id" in field_violations(caught.value)


class TestListTransfers:
    async def test_lists_newest_first_with_direction_filters(self, server, stubs, admin, alice, bob):
        await deposit(server, admin, bob, 100)
        a1 = await _send(stubs, alice, bob, 1)
        b1 = await _send(stubs, bob, alice, 2)
        a2 = await _send(stubs, alice, bob, 3)
        everything = await _all_pages(stubs, alice)
        assert [t.id for t in everything][:3] == [a2.id, b1.id, a1.id]
        assert everything[-1].kind == ledger_pb2.TRANSFER_KIND_DEPOSIT  # alice's funding
        sent = await _all_pages(stubs, alice, direction=ledger_pb2.TRANSFER_DIRECTION_SENT)
        received = await _all_pages(stubs, alice, direction=ledger_pb2.TRANSFER_DIRECTION_RECEIVED)
        assert [t.id for t in sent] == [a2.id, a1.id]
        assert [t.id for t in received[:1]] == [b1.id] and len(received) == 2

    async def test_filters_by_currency(self, server, stubs, admin, alice, bob):
        await deposit(server, admin, alice, 500, "EUR")
        eur = await _send(stubs, alice, bob, 5, "EUR")
        await _send(stubs, alice, bob, 6, "USD")
        listed = await _all_pages(stubs, bob, currency="EUR")
        assert [t.id for t in listed] == [eur.id]

    async def test_pages_stay_stable_while_new_transfers_arrive(self, stubs, alice, bob):
        sent = [await _send(stubs, alice, bob, i + 1) for i in range(7)]
        first = await stubs.ledger.ListTransfers(
            ledger_pb2.ListTransfersRequest(page_size=3), metadata=bob.auth
        )
        newer = [await _send(stubs, alice, bob, 100 + i) for i in range(4)]
        seen = list(first.transfers)
        token = first.next_page_token
        while token:
            page = await stubs.ledger.ListTransfers(
                ledger_pb2.ListTransfersRequest(page_size=3, page_token=token), metadata=bob.auth
            )
            seen.extend(page.transfers)
            token = page.next_page_token
        assert [t.id for t in seen] == [t.id for t in reversed(sent)]
        refreshed = await _all_pages(stubs, bob, page_size=5)
        assert [t.id for t in refreshed] == [t.id for t in reversed(sent + newer)]

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [
            ({"page_size": 101}, "page_size"),
            ({"page_size": -1}, "page_size"),
            ({"page_token": "not-a-token"}, "page_token"),
            ({"currency": "EURO"}, "currency"),
        ],
    )
    async def test_is_invalid_argument_when_request_is_bad(self, stubs, alice, request_fields, field):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.ListTransfers(
                ledger_pb2.ListTransfersRequest(**request_fields), metadata=alice.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)

    async def test_is_invalid_argument_when_token_is_reused_with_other_filters(self, stubs, alice, bob):
        for i in range(3):
            await _send(stubs, alice, bob, i + 1)
        page = await stubs.ledger.ListTransfers(
            ledger_pb2.ListTransfersRequest(page_size=1), metadata=bob.auth
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.ListTransfers(
                ledger_pb2.ListTransfersRequest(page_size=1, page_token=page.next_page_token, currency="USD"),
                metadata=bob.auth,
            )
        assert "page_token" in field_violations(caught.value)
