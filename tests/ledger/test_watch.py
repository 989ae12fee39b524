"""WatchTransfers: live events as they commit, resumable from a cursor without gaps or duplicates."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest

from sendinchat.v1 import ledger_pb2
from server.ledger import watch
from server.ledger.watch import EventKey
from tests.helpers import Account, field_violations, request_id, signed_up
from tests.ledger.support import transfer_request


async def _open(stubs: Any, user: Account, cursor: str = "") -> Any:
    call = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(cursor=cursor), metadata=user.auth)
    await call.initial_metadata()  # sent once the watch is registered
    return call


async def _take(call: Any, count: int) -> list[ledger_pb2.WatchTransfersResponse]:
    events: list[ledger_pb2.WatchTransfersResponse] = []
    async with asyncio.timeout(10):
        while len(events) < count:
            events.append(await call.read())
    return events


class TestWatchTransfers:
    async def test_streams_transfers_touching_the_caller_as_they_commit(self, stubs, alice, bob):
        carol = await signed_up(stubs)
        call = await _open(stubs, bob)
        try:
            to_bob = await stubs.ledger.CreateTransfer(transfer_request(bob, 5), metadata=alice.auth)
            await stubs.ledger.CreateTransfer(transfer_request(carol, 6), metadata=alice.auth)  # not bob's
            from_bob = await stubs.ledger.CreateTransfer(transfer_request(alice, 2), metadata=bob.auth)
            events = await _take(call, 2)
        finally:
            call.cancel()
        assert [e.transfer.id for e in events] == [to_bob.transfer.id, from_bob.transfer.id]
        assert events[0].transfer == to_bob.transfer
        assert all(e.cursor for e in events)

    async def test_streams_each_state_change_of_a_pending_transfer(self, stubs, alice, bob):
        call = await _open(stubs, alice)
        try:
            held = await stubs.ledger.CreatePendingTransfer(
                ledger_pb2.CreatePendingTransferRequest(
                    request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=10
                ),
                metadata=alice.auth,
            )
            await stubs.ledger.VoidPendingTransfer(
                ledger_pb2.VoidPendingTransferRequest(request_id=request_id(), transfer_id=held.transfer.id),
                metadata=bob.auth,
            )
            events = await _take(call, 2)
        finally:
            call.cancel()
        assert [e.transfer.state for e in events] == [
            ledger_pb2.TRANSFER_STATE_PENDING,
            ledger_pb2.TRANSFER_STATE_VOIDED,
        ]
        assert {e.transfer.id for e in events} == {held.transfer.id}

    async def test_resumes_from_a_cursor_without_gaps_or_duplicates(self, stubs, alice, bob):
        call = await _open(stubs, bob)
        first = await stubs.ledger.CreateTransfer(transfer_request(bob, 1), metadata=alice.auth)
        (event,) = await _take(call, 1)
        call.cancel()
        assert event.transfer.id == first.transfer.id
        missed = [
            (await stubs.ledger.CreateTransfer(transfer_request(bob, i + 2), metadata=alice.auth)).transfer.id
            for i in range(3)
        ]
        resumed = await _open(stubs, bob, cursor=event.cursor)
        try:
            live = await stubs.ledger.CreateTransfer(transfer_request(bob, 9), metadata=alice.auth)
            events = await _take(resumed, 4)
        finally:
            resumed.cancel()
        assert [e.transfer.id for e in events] == [*missed, live.transfer.id]

    async def test_resumes_sent_and_received_in_log_order_across_pages(self, stubs, alice, bob, monkeypatch):
        monkeypatch.setattr(watch, "_PAGE", 2)  # each side's range is read a page at a time
        first = await stubs.ledger.CreateTransfer(transfer_request(bob, 1), metadata=alice.auth)
        call = await _open(stubs, bob)
        await stubs.ledger.CreateTransfer(transfer_request(bob, 1), metadata=alice.auth)
        (start,) = await _take(call, 1)
        call.cancel()
        assert first.transfer.id != start.transfer.id
        missed = []
        for i in range(7):  # received, sent, received, received, sent, ...
            payer, payee = (bob, alice) if i % 3 == 1 else (alice, bob)
            reply = await stubs.ledger.CreateTransfer(transfer_request(payee, 1), metadata=payer.auth)
            missed.append(reply.transfer.id)
        resumed = await _open(stubs, bob, cursor=start.cursor)
        try:
            events = await _take(resumed, 7)
        finally:
            resumed.cancel()
        assert [e.transfer.id for e in events] == missed

    async def test_a_resume_reads_the_watchers_own_events_by_index_not_the_whole_log(self, server):
        # Any user may send the cursor of the log's start; that must cost what the user's history
        # holds. Other users' events, as a busy ledger has them:
        async with server.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO ledger_events (transfer_id, from_user_id, to_user_id, state, posted_amount)"
                " SELECT gen_random_uuid(), gen_random_uuid(), gen_random_uuid(), 'posted', 1"
                " FROM generate_series(1, 20000)"
            )
            await conn.execute("ANALYZE ledger_events")
            # The plan for these values, and the generic one a pooled connection settles on.
            await conn.execute(f"PREPARE user_events (bigint, bigint, uuid, bigint) AS {watch._USER_EVENTS}")
            try:
                for plan_cache_mode in ("force_custom_plan", "force_generic_plan"):
                    await conn.execute(f"SET plan_cache_mode = {plan_cache_mode}")
                    rows = await conn.fetch(
                        f"EXPLAIN EXECUTE user_events (0, 0, '{uuid.uuid4()}', {watch._PAGE})"
                    )
                    plan = "\n".join(row[0] for row in rows)
                    assert "Seq Scan on ledger_events" not in plan, (plan_cache_mode, plan)
                    assert "ledger_events_from_user_idx" in plan and "ledger_events_to_user_idx" in plan, plan
            finally:
                await conn.execute("DEALLOCATE user_events")
                await conn.execute("RESET plan_cache_mode")

    async def test_delivers_transfers_made_through_another_replica(self, server, servers, stubs, alice, bob):
        replica = await servers.start(database_url=server.database_url)
        call = await _open(stubs, bob)
        try:
            sent = [
                (
                    await replica.stubs.ledger.CreateTransfer(
                        transfer_request(bob, i + 1), metadata=alice.auth
                    )
                ).transfer.id
                for i in range(5)
            ]
            events = await _take(call, 5)
        finally:
            call.cancel()
        assert [e.transfer.id for e in events] == sent

    async def test_delivers_every_event_once_under_concurrent_transfers(
        self, stubs, server, admin, alice, bob
    ):
        from tests.ledger.support import deposit

        await deposit(server, admin, bob, 10_000)
        call = await _open(stubs, bob)
        try:
            replies = await asyncio.gather(
                *(
                    stubs.ledger.CreateTransfer(transfer_request(bob, 1), metadata=alice.auth)
                    for _ in range(20)
                ),
                *(
                    stubs.ledger.CreateTransfer(transfer_request(alice, 1), metadata=bob.auth)
                    for _ in range(20)
                ),
            )
            events = await _take(call, 40)
        finally:
            call.cancel()
        assert sorted(e.transfer.id for e in events) == sorted(r.transfer.id for r in replies)
        keys = [EventKey.decode(e.cursor) for e in events]
        assert keys == sorted(set(keys))  # strictly increasing: log order, no duplicates

    async def test_is_invalid_argument_when_cursor_is_forged(self, stubs, bob):
        call = stubs.ledger.WatchTransfers(
            ledger_pb2.WatchTransfersRequest(cursor="bogus"), metadata=bob.auth
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "cursor" in field_violations(caught.value)

    async def test_is_unauthenticated_without_token(self, stubs):
        call = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_ends_with_unavailable_when_the_server_shuts_down(self, servers, alice):
        replica = await servers.start()
        other = await signed_up(replica.stubs)
        call = await _open(replica.stubs, other)
        await replica.running.stop()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
