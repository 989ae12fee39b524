"""Jepsen-style bank test: concurrent random transfers through two replicas, then the invariants.

20+ clients move money among 10+ funded users in two currencies for a few seconds, some retrying
a request_id (sequentially or at once), many asking for more than the sender holds. Afterwards the
database must show: each currency sums to zero, no user below zero, every balance equal to the sum
of its posted transfers, every acknowledged transfer stored exactly once, nothing else stored, and
each balance equal to what the acknowledged transfers alone predict.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from typing import Any

import grpc

from sendinchat.v1 import ledger_pb2
from tests.helpers import Account, error_info, request_id, signed_up, signed_up_admin
from tests.ledger.support import deposit

USERS = 12
CLIENTS = 24
SECONDS = 4.0
CURRENCIES = ("USD", "EUR")


class TestBank:
    async def test_invariants_hold_after_concurrent_random_transfers(self, server, servers):
        replica = await servers.start(database_url=server.database_url)
        admin = await signed_up_admin(server)
        users = [await signed_up(server.stubs) for _ in range(USERS)]
        funded: dict[tuple[str, str], int] = defaultdict(int)
        rng = random.Random(20261128)
        for user in users:
            for currency in CURRENCIES:
                amount = rng.randrange(1_000, 5_000)
                await deposit(server, admin, user, amount, currency)
                funded[(user.id, currency)] += amount

        acked: dict[str, ledger_pb2.Transfer] = {}  # request_id -> transfer
        requests: dict[str, tuple[str, ledger_pb2.CreateTransferRequest]] = {}
        outcomes: Counter[str] = Counter()
        unexpected: list[str] = []
        stop_at = time.monotonic() + SECONDS

        async def send(stubs: Any, sender: Account, request: ledger_pb2.CreateTransferRequest) -> None:
            try:
                reply = await stubs.ledger.CreateTransfer(request, metadata=sender.auth)
            except grpc.aio.AioRpcError as err:
                reason = error_info(err).reason if err.code() == grpc.StatusCode.FAILED_PRECONDITION else ""
                outcomes[reason or err.code().name] += 1
                if reason != "INSUFFICIENT_FUNDS":
                    unexpected.append(f"{err.code().name} {reason} {err.details()}")
                return
            outcomes["ok"] += 1
            previous = acked.setdefault(request.request_id, reply.transfer)
            if previous.id != reply.transfer.id:
                unexpected.append(f"request {request.request_id} got two transfers")

        async def client(number: int) -> None:
            crng = random.Random(number)
            stubs = (server.stubs, replica.stubs)[number % 2]
            while time.monotonic() < stop_at:
                roll = crng.random()
                if roll < 0.1 and requests:
                    sender_id, request = requests[crng.choice(list(requests))]  # a retry
                    sender = next(u for u in users if u.id == sender_id)
                    await send(stubs, sender, request)
                    continue
                sender, recipient = crng.sample(users, 2)
                request = ledger_pb2.CreateTransferRequest(
                    request_id=request_id(),
                    to_user_id=recipient.id,
                    currency=crng.choice(CURRENCIES),
                    amount_minor=crng.randrange(1, 1_500),
                )
                requests[request.request_id] = (sender.id, request)
                if roll < 0.15:  # the same request, twice at once
                    await asyncio.gather(send(stubs, sender, request), send(replica.stubs, sender, request))
                else:
                    await send(stubs, sender, request)

        await asyncio.gather(*(client(n) for n in range(CLIENTS)))
        assert unexpected == []
        assert outcomes["ok"] > 100 and outcomes["INSUFFICIENT_FUNDS"] > 0, outcomes

        pool = server.pool
        sums = await pool.fetch(
            "SELECT currency, sum(balance)::bigint AS total FROM accounts GROUP BY currency"
        )
        assert {r["currency"]: r["total"] for r in sums if r["total"] != 0} == {}
        assert (
            await pool.fetchval("SELECT count(*) FROM accounts WHERE user_id IS NOT NULL AND balance < 0")
            == 0
        )
        mismatched = await pool.fetchval(
            """
            SELECT count(*) FROM accounts a WHERE a.balance <>
                coalesce((SELECT sum(posted_amount) FROM transfers WHERE to_account_id = a.id), 0)
              - coalesce((SELECT sum(posted_amount) FROM transfers WHERE from_account_id = a.id), 0)
            """
        )
        assert mismatched == 0

        stored = await pool.fetch("SELECT id::text, request_id::text FROM transfers WHERE kind = 'transfer'")
        assert len(stored) == len({r["request_id"] for r in stored})
        assert {r["request_id"]: r["id"] for r in stored} == {rid: t.id for rid, t in acked.items()}

        expected = dict(funded)
        for transfer in acked.values():
            expected[(transfer.from_user_id, transfer.currency)] -= transfer.amount_minor
            expected[(transfer.to_user_id, transfer.currency)] += transfer.amount_minor
        balances = await pool.fetch(
            "SELECT user_id::text, currency, balance FROM accounts WHERE user_id IS NOT NULL"
        )
        assert {(r["user_id"], r["currency"]): r["balance"] for r in balances} == expected

        audit = await server.stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert audit.ok, audit.violations


class TestNoDeadlock:
    async def test_two_users_paying_each_other_concurrently_both_finish(self, server, servers):
        replica = await servers.start(database_url=server.database_url)
        admin = await signed_up_admin(server)
        ann, ben = await signed_up(server.stubs), await signed_up(server.stubs)
        await deposit(server, admin, ann, 1_000)
        await deposit(server, admin, ben, 1_000)
        rounds = 60

        async def pay(stubs: Any, sender: Account, recipient: Account, amount: int) -> None:
            for _ in range(rounds):
                await stubs.ledger.CreateTransfer(
                    ledger_pb2.CreateTransferRequest(
                        request_id=request_id(), to_user_id=recipient.id, currency="USD", amount_minor=amount
                    ),
                    metadata=sender.auth,
                )

        async with asyncio.timeout(30):
            await asyncio.gather(
                pay(server.stubs, ann, ben, 3),
                pay(replica.stubs, ben, ann, 2),
                pay(replica.stubs, ann, ben, 1),
                pay(server.stubs, ben, ann, 1),
            )
        rows = await server.pool.fetch(
            "SELECT user_id::text, balance FROM accounts WHERE user_id IS NOT NULL"
        )
        assert {r["user_id"]: r["balance"] for r in rows} == {ann.id: 1_000 - rounds, ben.id: 1_000 + rounds}
