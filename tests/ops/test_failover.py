"""Failover: kill -9 the primary under a bank and chat load, then promote its synchronous standby.

One server runs on the multi-host URL (`target_session_attrs=read-write`) of a primary and its
synchronous standby (tests/ops/replication.py). Eight transfer clients and a chat sender retry
every request with its own id until it is answered, and a chat receiver follows the room
(tests/ops/failover_load.py). Mid-load the primary's postmaster gets SIGKILL; after an outage of
at least OUTAGE_SECONDS the standby is promoted. Then the new primary must hold every
acknowledged transfer and message exactly once and nothing else, balances must be what the
acknowledged transfers predict, the audit must pass, the receiver must have seen every message
once and in order, no answer may be INTERNAL, and health and service must be back within
generous bounds (the measured times are in the README, "Failover").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2

from sendinchat.v1 import chat_pb2, ledger_pb2
from server import health as server_health
from server.app import create_server
from server.auth import sessions
from server.chat import bus_notify
from server.db.pool import create_pool
from tests import harness
from tests.chat.support import group
from tests.harness import TEST_CONFIG, TEST_JWT_SECRET, Stubs
from tests.helpers import Account, request_id, signed_up, signed_up_admin
from tests.ledger.support import deposit
from tests.ops.failover_load import HealthWatch, Load, chat_receiver, chat_sender, transfer_client
from tests.ops.replication import ReplicatedPostgres

CLIENTS = 8
USERS = 8
FUNDS = 10_000_000
WARM_UP_TRANSFERS = 300
OUTAGE_SECONDS = 1.0
TRANSFERS_AFTER_PROMOTION = 100
# Bounds, not measurements: loose enough for a loaded 2-core machine, tight enough to catch a
# server that waits for a timeout or a backoff instead of noticing the failover.
HEALTH_BOUND_SECONDS = 5.0
RECOVERY_BOUND_SECONDS = 15.0
SETTLE_SECONDS = 40.0
# The connections a server holds outside its pool, by application_name (the ledger watch
# listener too, but only while a WatchTransfers stream is open).
_OWN_CONNECTIONS = (server_health.APPLICATION_NAME, sessions.APPLICATION_NAME, bus_notify.APPLICATION_NAME)
_APPLICATIONS = "SELECT coalesce(array_agg(DISTINCT application_name), '{}') FROM pg_stat_activity"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

pytestmark = pytest.mark.timeout(150)


@pytest_asyncio.fixture(loop_scope="session")
async def cluster() -> AsyncIterator[ReplicatedPostgres]:
    """A primary and a synchronous standby, stopped and deleted afterwards."""
    replicated = ReplicatedPostgres()
    try:
        await replicated.start()
        yield replicated
    finally:
        await replicated.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def server(cluster: ReplicatedPostgres) -> AsyncIterator[harness.TestServer]:
    """A real server on the cluster's multi-host URL."""
    config = replace(TEST_CONFIG, database_url=cluster.url)
    pool = await create_pool(cluster.url, size=config.db_pool_size)
    running = await create_server(config, pool, jwt_secret=TEST_JWT_SECRET)
    stubs = Stubs(grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
    try:
        yield harness.TestServer(config, cluster.url, pool, running, stubs)
    finally:
        await stubs.channel.close(None)
        await running.stop()
        await pool.close()


async def _until(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {seconds:g} s"
        await asyncio.sleep(0.02)


class TestFailover:
    async def test_nothing_acknowledged_is_lost_or_doubled_when_the_primary_dies_and_the_standby_takes_over(
        self, cluster: ReplicatedPostgres, server: harness.TestServer
    ) -> None:
        stubs = server.stubs
        admin = await signed_up_admin(server)
        users = [await signed_up(stubs) for _ in range(USERS)]
        for user in users:
            await deposit(server, admin, user, FUNDS)
        talker, listener = users[0], users[1]
        room = await group(stubs, talker, listener)

        load = Load()
        health = HealthWatch(stubs)
        clients = [asyncio.create_task(transfer_client(load, stubs, users, seed)) for seed in range(CLIENTS)]
        sender = asyncio.create_task(chat_sender(load, stubs, talker, room.id))

        def received_everything() -> bool:
            last = max(load.messages.values(), default=0)
            return sender.done() and bool(load.received) and load.received[-1].sequence >= last

        receiver = asyncio.create_task(chat_receiver(load, stubs, listener, room.id, received_everything))
        watcher = asyncio.create_task(health.run())
        tasks = [*clients, sender, receiver, watcher]
        try:
            await _until(lambda: len(load.transfers) >= WARM_UP_TRANSFERS and load.messages, 30, "warm-up")
            killed_at = time.monotonic()
            cluster.kill_primary()
            down_at = await health.wait_for(NOT_SERVING, after=killed_at, seconds=HEALTH_BOUND_SECONDS)
            await asyncio.sleep(max(0.0, killed_at + OUTAGE_SECONDS - time.monotonic()))
            before_promotion = len(load.transfers), len(load.messages)
            await cluster.promote()
            promoted_at = time.monotonic()
            up_at = await health.wait_for(SERVING, after=promoted_at, seconds=RECOVERY_BOUND_SECONDS)
            await _until(
                lambda: (
                    load.acked_since(promoted_at) >= TRANSFERS_AFTER_PROMOTION
                    and len(load.messages) > before_promotion[1]
                ),
                RECOVERY_BOUND_SECONDS,
                "transfers and a message after the promotion",
            )
            first_transfer_at = min(at for at in load.transfer_acks if at > promoted_at)
            load.give_up_at = time.monotonic() + SETTLE_SECONDS
            load.stop.set()
            await asyncio.wait_for(asyncio.gather(*clients, sender), SETTLE_SECONDS + 5)
            await asyncio.wait_for(receiver, SETTLE_SECONDS)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        report = (
            f"{len(load.transfers)} transfers and {len(load.messages)} messages acknowledged "
            f"({before_promotion[0]} and {before_promotion[1]} before the promotion); answers "
            f"{dict(load.answers)}; health NOT_SERVING {down_at - killed_at:.2f} s after the kill and "
            f"SERVING {up_at - promoted_at:.2f} s after the promotion; first transfer acknowledged "
            f"{first_transfer_at - promoted_at:.2f} s after the promotion"
        )
        print(report)  # shown with -s, and with the captured output of a failure
        assert load.unexpected == [], report
        assert "INTERNAL" not in load.answers and "ERROR_CODE_INTERNAL" not in load.answers, report
        assert load.answers["UNAVAILABLE"] > 0, f"the load never met the outage: {report}"
        assert await server.pool.fetchval("SELECT inet_server_port()") == cluster.standby.port

        conn = await asyncpg.connect(cluster.url_of(cluster.standby))
        try:
            assert await conn.fetchval("SELECT pg_is_in_recovery()") is False
            stored = await conn.fetch(
                "SELECT id::text, request_id::text FROM transfers WHERE kind = 'transfer'"
            )
            assert len(stored) == len({row["request_id"] for row in stored}), "a request stored twice"
            assert {row["request_id"]: row["id"] for row in stored} == {
                rid: transfer.id for rid, transfer in load.transfers.items()
            }, "the transfers stored are not the ones acknowledged"
            expected = {user.id: FUNDS for user in users}
            for transfer in load.transfers.values():
                expected[transfer.from_user_id] -= transfer.amount_minor
                expected[transfer.to_user_id] += transfer.amount_minor
            balances = await conn.fetch(
                "SELECT user_id::text, balance FROM accounts WHERE user_id IS NOT NULL"
            )
            assert {row["user_id"]: row["balance"] for row in balances} == expected

            messages = await conn.fetch(
                "SELECT client_message_id, sequence FROM messages WHERE room_id = $1::uuid ORDER BY sequence",
                room.id,
            )
            assert {row["client_message_id"]: row["sequence"] for row in messages} == load.messages
            sequences = [row["sequence"] for row in messages]
            assert sequences == list(range(1, len(messages) + 1))
            assert [message.sequence for message in load.received] == sequences
        finally:
            await conn.close()

        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert audit.ok, audit.violations


class TestSwitchover:
    async def test_writes_are_unavailable_then_every_connection_moves_when_the_primary_turns_read_only(
        self, cluster: ReplicatedPostgres, server: harness.TestServer
    ) -> None:
        stubs = server.stubs
        alice, bob = await signed_up(stubs), await signed_up(stubs)
        room = await group(stubs, alice, bob)
        assert set(await _ports_of_every_connection(server)) == {cluster.primary.port}
        health = HealthWatch(stubs)
        watcher = asyncio.create_task(health.run())
        try:
            await cluster.make_primary_read_only()
            turned_at = time.monotonic()
            refused = await _first_unavailable_message(stubs, alice, room.id)
            await health.wait_for(NOT_SERVING, after=turned_at, seconds=HEALTH_BOUND_SECONDS)
            # A demotion ends the old primary's sessions; the server's own connections (listeners,
            # session poller) then retry while no host accepts writes, and must outlive that.
            await cluster.end_sessions(cluster.primary, _OWN_CONNECTIONS)
            await asyncio.sleep(2 * sessions.POLL_SECONDS)

            await cluster.promote()
            promoted_at = time.monotonic()
            message = await _send_until_answered(stubs, alice, refused)
            await health.wait_for(SERVING, after=promoted_at, seconds=RECOVERY_BOUND_SECONDS)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

        assert message.client_message_id == refused.client_message_id
        # The pooled sessions left open on the read-only primary were given up, not reused.
        assert set(await _ports_of_every_connection(server)) == {cluster.standby.port}
        died = [task for task in server.running.tasks if task.done()]
        assert died == [], "a background task of the server died in the switchover"
        conn = await asyncpg.connect(cluster.url_of(cluster.standby))
        try:
            stored = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE room_id = $1::uuid AND client_message_id = $2",
                room.id,
                refused.client_message_id,
            )
            assert stored == 1
            deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
            while not set(_OWN_CONNECTIONS) <= (found := set(await conn.fetchval(_APPLICATIONS))):
                assert time.monotonic() < deadline, f"only {found} reconnected to the new primary"
                await asyncio.sleep(0.1)
        finally:
            await conn.close()


async def _ports_of_every_connection(server: harness.TestServer) -> list[int]:
    """The server port of each of the pool's connections (all held at once, so the pool is full)."""
    query = "SELECT inet_server_port() FROM pg_sleep(0.2)"
    return list(
        await asyncio.gather(*(server.pool.fetchval(query) for _ in range(server.config.db_pool_size)))
    )


async def _first_unavailable_message(
    stubs: Any, sender: Account, room_id: str
) -> chat_pb2.SendMessageRequest:
    """Messages until one answers UNAVAILABLE (a session answers writes until it reloads its settings)."""
    deadline = time.monotonic() + HEALTH_BOUND_SECONDS
    while True:
        assert time.monotonic() < deadline, "no write was refused on the read-only primary"
        request = chat_pb2.SendMessageRequest(room_id=room_id, text="hello", client_message_id=request_id())
        try:
            await stubs.chat.SendMessage(request, metadata=sender.auth, timeout=5)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            return request
        await asyncio.sleep(0.02)


async def _send_until_answered(
    stubs: Any, sender: Account, request: chat_pb2.SendMessageRequest
) -> chat_pb2.Message:
    """The same request again until it is answered; only UNAVAILABLE may come before."""
    deadline = time.monotonic() + RECOVERY_BOUND_SECONDS
    while True:
        try:
            reply = await stubs.chat.SendMessage(request, metadata=sender.auth, timeout=5)
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err
            assert time.monotonic() < deadline, "the pool did not move to the promoted standby"
            await asyncio.sleep(0.05)
        else:
            message: chat_pb2.Message = reply.message
            return message
