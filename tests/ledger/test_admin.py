"""Deposit, Withdraw and AuditLedger: admin only, idempotent, and the audit catches tampering."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from sendinchat.v1 import ledger_pb2
from tests.helpers import Account, error_info, field_violations, request_id
from tests.ledger.support import balance, one_call_of_ledger_create_transfers


def _deposit(to: Account, amount: int, currency: str = "USD", **fields: Any) -> ledger_pb2.DepositRequest:
    fields.setdefault("request_id", request_id())
    return ledger_pb2.DepositRequest(to_user_id=to.id, currency=currency, amount_minor=amount, **fields)


def _withdraw(
    source: Account, amount: int, currency: str = "USD", **fields: Any
) -> ledger_pb2.WithdrawRequest:
    fields.setdefault("request_id", request_id())
    return ledger_pb2.WithdrawRequest(
        from_user_id=source.id, currency=currency, amount_minor=amount, **fields
    )


class TestDeposit:
    async def test_mints_money_from_the_system_account(self, stubs, admin, bob):
        reply = await stubs.ledger.Deposit(_deposit(bob, 1_234, memo="payroll"), metadata=admin.auth)
        t = reply.transfer
        assert (t.kind, t.state) == (ledger_pb2.TRANSFER_KIND_DEPOSIT, ledger_pb2.TRANSFER_STATE_POSTED)
        assert (t.from_user_id, t.from_account_id, t.to_user_id) == ("", "", bob.id)
        assert await balance(stubs, bob) == 1_234
        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        usd = next(x for x in audit.totals if x.currency == "USD")
        assert (usd.sum_minor, usd.issued_minor) == (0, 1_234)

    async def test_finds_recipient_by_username(self, stubs, admin, bob):
        await stubs.ledger.Deposit(
            ledger_pb2.DepositRequest(
                request_id=request_id(), to_username=bob.username, currency="EUR", amount_minor=5
            ),
            metadata=admin.auth,
        )
        assert await balance(stubs, bob, "EUR") == 5

    async def test_is_permission_denied_for_a_user(self, stubs, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Deposit(_deposit(bob, 1), metadata=bob.auth)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Withdraw(_withdraw(bob, 1), metadata=bob.auth)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_moves_money_once_when_retried_concurrently(self, stubs, admin, bob):
        request = _deposit(bob, 300)
        replies = await asyncio.gather(
            *(stubs.ledger.Deposit(request, metadata=admin.auth) for _ in range(10))
        )
        assert len({r.transfer.id for r in replies}) == 1
        assert await balance(stubs, bob) == 300

    async def test_is_idempotency_key_reused_when_body_differs(self, stubs, admin, bob):
        rid = request_id()
        await stubs.ledger.Deposit(_deposit(bob, 300, request_id=rid), metadata=admin.auth)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Deposit(_deposit(bob, 301, request_id=rid), metadata=admin.auth)
        assert error_info(caught.value).reason == "IDEMPOTENCY_KEY_REUSED"
        assert await balance(stubs, bob) == 300

    async def test_is_not_found_or_invalid_when_recipient_is_wrong(self, stubs, admin):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Deposit(
                ledger_pb2.DepositRequest(
                    request_id=request_id(), to_user_id=request_id(), currency="USD", amount_minor=1
                ),
                metadata=admin.auth,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Deposit(
                ledger_pb2.DepositRequest(request_id="r", currency="USD", amount_minor=0), metadata=admin.auth
            )
        assert set(field_violations(caught.value)) == {"request_id", "to_user_id", "amount_minor"}


INT64_MAX = 2**63 - 1
MAX_AMOUNT = 10**15  # one request's most


async def _issue_to_one_below_the_limit(server: Any, admin: Account, to: Account, currency: str) -> None:
    """Mint `currency` into `to` until its issuance is INT64_MAX - 10 (one statement of 9,223 deposits)."""
    count, rest = divmod(INT64_MAX - 10, MAX_AMOUNT)
    amounts = [MAX_AMOUNT] * count + [rest]
    await one_call_of_ledger_create_transfers(
        server.pool, admin.id, [("deposit", None, to.id, currency, amount) for amount in amounts]
    )


class TestIssuanceLimit:
    """A currency's money in circulation fits the int64 that AuditLedger reports it in."""

    async def test_a_deposit_past_it_is_refused_for_good_and_the_audit_still_answers(
        self, server, stubs, admin, bob
    ):
        await _issue_to_one_below_the_limit(server, admin, bob, "KES")
        await stubs.ledger.Deposit(_deposit(bob, 10, "KES"), metadata=admin.auth)  # exactly the limit
        past = _deposit(bob, 1, "KES")
        for _ in range(2):  # the refusal is final for its request_id
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.ledger.Deposit(past, metadata=admin.auth)
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert error_info(caught.value).reason == "ISSUANCE_LIMIT_REACHED"
        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        kes = next(x for x in audit.totals if x.currency == "KES")
        assert (audit.ok, kes.sum_minor, kes.issued_minor) == (True, 0, INT64_MAX)
        await stubs.ledger.Withdraw(_withdraw(bob, 5, "KES"), metadata=admin.auth)
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.ledger.Deposit(past, metadata=admin.auth)  # still refused, though it would fit now
        await stubs.ledger.Deposit(_deposit(bob, 5, "KES"), metadata=admin.auth)
        assert await balance(stubs, bob, "KES") == INT64_MAX

    async def test_a_deposit_refused_for_it_opens_no_account(self, server, stubs, admin, alice, bob):
        await _issue_to_one_below_the_limit(server, admin, bob, "KES")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.Deposit(_deposit(alice, 11, "KES"), metadata=admin.auth)
        assert error_info(caught.value).reason == "ISSUANCE_LIMIT_REACHED"
        accounts = await stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(), metadata=alice.auth)
        assert [a.currency for a in accounts.accounts] == ["USD"]

    async def test_concurrent_deposits_cannot_pass_it_together(self, server, stubs, admin, bob):
        await _issue_to_one_below_the_limit(server, admin, bob, "KES")
        results = await asyncio.gather(
            *(stubs.ledger.Deposit(_deposit(bob, 4, "KES"), metadata=admin.auth) for _ in range(5)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(refused) == 3
        assert {error_info(r).reason for r in refused} == {"ISSUANCE_LIMIT_REACHED"}
        assert await balance(stubs, bob, "KES") == INT64_MAX - 2

    async def test_the_database_refuses_a_system_balance_past_it(self, server):
        with pytest.raises(asyncpg.CheckViolationError):
            await server.pool.execute(
                "UPDATE accounts SET balance = $1 WHERE user_id IS NULL AND currency = 'KES'", -(2**63)
            )


class TestWithdraw:
    async def test_burns_money_into_the_system_account(self, stubs, admin, alice):
        reply = await stubs.ledger.Withdraw(_withdraw(alice, 4_000), metadata=admin.auth)
        t = reply.transfer
        assert (t.kind, t.from_user_id, t.to_user_id, t.to_account_id) == (
            ledger_pb2.TRANSFER_KIND_WITHDRAWAL,
            alice.id,
            "",
            "",
        )
        assert await balance(stubs, alice) == 6_000
        by_name = await stubs.ledger.Withdraw(
            ledger_pb2.WithdrawRequest(
                request_id=request_id(), from_username=alice.username, currency="USD", amount_minor=1_000
            ),
            metadata=admin.auth,
        )
        assert by_name.transfer.from_user_id == alice.id
        assert await balance(stubs, alice) == 5_000

    async def test_is_insufficient_funds_and_burns_nothing_when_balance_is_short(
        self, stubs, admin, alice, bob
    ):
        for source in (alice, bob):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.ledger.Withdraw(_withdraw(source, 10_001), metadata=admin.auth)
            assert error_info(caught.value).reason == "INSUFFICIENT_FUNDS"
        assert await balance(stubs, alice) == 10_000

    async def test_is_not_found_when_user_is_unknown(self, stubs, admin):
        for request in (
            ledger_pb2.WithdrawRequest(
                request_id=request_id(), from_user_id=request_id(), currency="USD", amount_minor=1
            ),
            ledger_pb2.WithdrawRequest(
                request_id=request_id(), from_username="ghost_user", currency="USD", amount_minor=1
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.ledger.Withdraw(request, metadata=admin.auth)
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


class TestAuditLedger:
    async def test_is_ok_and_counts_everything_on_a_healthy_ledger(self, stubs, admin, alice, bob):
        await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=7
            ),
            metadata=alice.auth,
        )
        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert audit.ok and list(audit.violations) == []
        assert audit.transfers_checked == 2
        assert audit.accounts_checked >= 3  # two users and the system accounts

    async def test_is_permission_denied_for_a_user(self, stubs, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=bob.auth)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED

    async def test_reports_violations_and_a_restarted_server_is_not_serving_when_ledger_is_tampered(
        self, server, servers, stubs, admin, alice
    ):
        account_id = (
            await stubs.ledger.GetAccount(ledger_pb2.GetAccountRequest(currency="USD"), metadata=alice.auth)
        ).account.id
        await server.pool.execute("UPDATE accounts SET balance = balance + 5 WHERE id = $1", account_id)
        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert not audit.ok
        kinds = {(v.kind, v.account_id) for v in audit.violations}
        assert ("BALANCE_MISMATCH", account_id) in kinds
        assert ("CURRENCY_NOT_BALANCED", "") in kinds
        replica = await servers.start(database_url=server.database_url)
        reply = await replica.stubs.health.Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        healthy = await stubs.health.Check(health_pb2.HealthCheckRequest())
        assert healthy.status == health_pb2.HealthCheckResponse.SERVING  # audited before the tampering

    async def test_reports_a_transfer_whose_account_does_not_exist(self, server, stubs, admin, alice):
        ghost = request_id()
        await server.pool.execute(
            """
            INSERT INTO transfers (initiator_id, request_id, kind, two_phase, state, from_account_id,
                                   to_account_id, from_user_id, currency, amount, posted_amount, resolved_at)
            SELECT $1, $2, 'transfer', false, 'posted', a.id, $3, $1, 'USD', 1, 1, now()
            FROM accounts a WHERE a.user_id = $1 AND a.currency = 'USD'
            """,
            alice.id,
            request_id(),
            ghost,
        )
        audit = await stubs.ledger.AuditLedger(ledger_pb2.AuditLedgerRequest(), metadata=admin.auth)
        assert ("BALANCE_MISMATCH", ghost) in {(v.kind, v.account_id) for v in audit.violations}

    async def test_ledger_rows_refuse_updates_and_deletes(self, server, stubs, alice, bob):
        import asyncpg

        sent = await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=bob.id, currency="USD", amount_minor=7
            ),
            metadata=alice.auth,
        )
        for statement in (
            "UPDATE transfers SET amount = 1 WHERE id = $1",
            "DELETE FROM transfers WHERE id = $1",
            "UPDATE ledger_events SET state = 'voided' WHERE transfer_id = $1",
            "DELETE FROM accounts WHERE id = (SELECT from_account_id FROM transfers WHERE id = $1)",
        ):
            with pytest.raises(asyncpg.IntegrityConstraintViolationError):
                await server.pool.execute(statement, sent.transfer.id)

    async def test_user_balance_cannot_go_negative_even_by_hand(self, server, alice):
        import asyncpg

        with pytest.raises(asyncpg.CheckViolationError):
            await server.pool.execute("UPDATE accounts SET balance = -1 WHERE user_id = $1", alice.id)
