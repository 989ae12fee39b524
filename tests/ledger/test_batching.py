"""Group commit: when the TransferBatcher sends a batch, against the real database.

Each test drives its own batcher over the test server's pool, so its counters see only its orders.
The long lingers make "waited for the timer" a hang (caught by wait_for), never a timing guess.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
import pytest_asyncio

from sendinchat.v1 import ledger_pb2
from server.db import errors as db_errors
from server.db.pool import create_pool
from server.ledger.batching import Result, TransferBatcher, TransferOrder
from tests import harness
from tests.helpers import Account, waiting_on_a_lock
from tests.ledger.support import balance

HANG_GUARD_SECONDS = 10


def _order(sender: Account, recipient: Account) -> TransferOrder:
    return TransferOrder(
        initiator_id=sender.id,
        request_id=str(uuid.uuid4()),
        kind="transfer",
        two_phase=False,
        from_user_id=sender.id,
        to_user_id=recipient.id,
        to_username=None,
        currency="USD",
        amount=1,
        memo="",
    )


async def _together(
    batcher: TransferBatcher, sender: Account, recipient: Account, count: int
) -> list[Result]:
    orders = (batcher.submit(_order(sender, recipient)) for _ in range(count))
    return await asyncio.wait_for(asyncio.gather(*orders), HANG_GUARD_SECONDS)


@pytest_asyncio.fixture(loop_scope="session")
async def payee(server: harness.TestServer, bob: Account) -> Account:
    """Bob with an open USD account: plain transfers to him take the lean one-statement path."""
    await server.stubs.ledger.OpenAccount(ledger_pb2.OpenAccountRequest(currency="USD"), metadata=bob.auth)
    return bob


class TestTransferBatcher:
    async def test_concurrent_orders_share_one_statement(self, server, alice, payee):
        batcher = TransferBatcher(server.pool)
        results = await _together(batcher, alice, payee, 8)
        assert [outcome for outcome, _ in results] == ["CREATED"] * 8
        assert len({transfer.id for _, transfer in results if transfer is not None}) == 8
        assert (batcher.batches, batcher.orders) == (1, 8)
        assert await balance(server.stubs, payee) == 8

    async def test_a_lone_caller_waits_for_nobody(self, server, alice, payee):
        batcher = TransferBatcher(server.pool, linger_seconds=3600)
        for _ in range(3):
            outcome, _ = await asyncio.wait_for(batcher.submit(_order(alice, payee)), HANG_GUARD_SECONDS)
            assert outcome == "CREATED"
        assert (batcher.batches, batcher.orders) == (3, 3)

    async def test_a_batch_waits_for_as_many_requests_as_left_last_time(self, server, alice, payee):
        batcher = TransferBatcher(server.pool, linger_seconds=3600)
        await _together(batcher, alice, payee, 4)
        waiting = [asyncio.ensure_future(batcher.submit(_order(alice, payee))) for _ in range(3)]
        await asyncio.sleep(0.2)
        assert not any(w.done() for w in waiting)
        assert batcher.batches == 1
        fourth = await asyncio.wait_for(batcher.submit(_order(alice, payee)), HANG_GUARD_SECONDS)
        rest = await asyncio.wait_for(asyncio.gather(*waiting), HANG_GUARD_SECONDS)
        assert [outcome for outcome, _ in [*rest, fourth]] == ["CREATED"] * 4
        assert (batcher.batches, batcher.orders) == (2, 8)
        assert await balance(server.stubs, payee) == 8

    async def test_fewer_requests_leave_when_the_linger_ends(self, server, alice, payee):
        batcher = TransferBatcher(server.pool, linger_seconds=0.05)
        await _together(batcher, alice, payee, 4)
        results = await _together(batcher, alice, payee, 2)
        assert [outcome for outcome, _ in results] == ["CREATED"] * 2
        assert (batcher.batches, batcher.orders) == (2, 6)

    async def test_the_next_batch_leaves_before_the_returned_one_is_answered(self, server, alice, payee):
        pool = await create_pool(server.database_url, size=2)  # both open: taking one never waits
        try:
            batcher = TransferBatcher(pool, linger_seconds=3600)

            async def batches_sent_when_answered() -> int:
                outcome, _ = await batcher.submit(_order(alice, payee))
                assert outcome == "CREATED"
                return batcher.batches

            first = [asyncio.ensure_future(batches_sent_when_answered()) for _ in range(2)]
            while batcher.batches < 1:  # noqa: ASYNC110  # the batcher has no event; one loop turn at a time
                await asyncio.sleep(0)
            second = [asyncio.ensure_future(batches_sent_when_answered()) for _ in range(2)]
            answered = await asyncio.wait_for(asyncio.gather(*first, *second), HANG_GUARD_SECONDS)
        finally:
            await pool.close()
        # The first batch's callers resumed after the second batch's statement had gone out.
        assert answered == [2, 2, 2, 2]
        assert (batcher.batches, batcher.orders) == (2, 4)


class TestWhenABatchFails:
    async def test_only_the_culprit_fails_and_a_one_connection_pool_does_not_hang(self, server, alice, payee):
        pool = await create_pool(server.database_url, size=1)
        try:
            batcher = TransferBatcher(pool)
            good = [batcher.submit(_order(alice, payee)) for _ in range(3)]
            # PostgreSQL refuses NUL in text: the batch statement fails, then each order runs alone.
            culprit = batcher.submit(replace(_order(alice, payee), memo="nul\x00byte"))
            results = await asyncio.wait_for(
                asyncio.gather(*good, culprit, return_exceptions=True), HANG_GUARD_SECONDS
            )
        finally:
            await pool.close()
        assert [result[0] for result in results[:3] if isinstance(result, tuple)] == ["CREATED"] * 3
        assert isinstance(results[3], Exception)
        assert await balance(server.stubs, payee) == 3

    async def test_every_caller_gets_the_database_error_when_its_connection_is_killed(
        self, server, alice, payee
    ):
        holder = await asyncpg.connect(server.database_url)
        pool = await create_pool(server.database_url, size=1)
        batcher = TransferBatcher(pool)
        try:
            async with holder.transaction():  # the batch's statement waits on alice's account
                await holder.execute("SELECT 1 FROM accounts WHERE user_id = $1 FOR UPDATE", alice.id)
                callers = asyncio.gather(
                    *(batcher.submit(_order(alice, payee)) for _ in range(3)), return_exceptions=True
                )
                await holder.execute("SELECT pg_terminate_backend($1)", await waiting_on_a_lock(holder))
                results = await asyncio.wait_for(callers, HANG_GUARD_SECONDS)
        finally:
            await holder.close()
            await pool.close()
        # The database's own error, not asyncpg's complaint about ending a connection it gave back.
        assert all(isinstance(r, Exception) and db_errors.is_unavailable(r) for r in results), results
        assert not any(isinstance(r, asyncpg.InterfaceError) for r in results), results
        assert await balance(server.stubs, payee) == 0

    async def test_every_caller_gets_the_error_when_the_pool_gives_no_connection(self, server, alice, payee):
        pool = await create_pool(server.database_url, size=1)
        await pool.close()
        batcher = TransferBatcher(pool)
        orders = [batcher.submit(_order(alice, payee)) for _ in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*orders, return_exceptions=True), HANG_GUARD_SECONDS)
        assert all(isinstance(result, asyncpg.InterfaceError) for result in results), results
        assert await balance(server.stubs, payee) == 0
