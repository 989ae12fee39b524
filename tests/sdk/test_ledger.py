"""The typed SDK's LedgerService methods against a real server: accounts, money, pages, the live feed."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from sendinchat import (
    Client,
    IdempotencyKeyReusedError,
    InsufficientFundsError,
    NotFoundError,
    PermissionDeniedError,
)
from sendinchat.errors import FailedPreconditionError
from sendinchat.v1 import ledger_pb2
from tests.helpers import PASSWORD
from tests.sdk.conftest import FUNDS_MINOR, logged_in
from tests.sdk.lossy import proxied


async def _user_id(client: Client) -> str:
    return (await client.get_me()).id


async def _cursor_now(client: Client, admin: Client) -> str:
    """A cursor after a deposit to the client's user, read from a raw WatchTransfers stream."""
    call = client.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=client.metadata)
    try:
        await call.initial_metadata()  # the watch is registered
        await admin.deposit(to_user_id=await _user_id(client), currency="USD", amount_minor=1)
        event = await call.read()
        assert isinstance(event, ledger_pb2.WatchTransfersResponse)
        return event.cursor
    finally:
        call.cancel()


class TestAccounts:
    async def test_lists_currencies_with_their_exponents(self, alice):
        exponents = {c.code: c.minor_unit_exponent for c in await alice.list_currencies()}
        assert exponents["USD"] == 2
        assert exponents["JPY"] == 0

    async def test_opens_and_gets_an_account_by_currency_and_by_id(self, bob):
        opened = await bob.open_account("EUR")
        assert await bob.open_account("EUR") == opened
        assert await bob.get_account(currency="EUR") == opened
        assert await bob.get_account(account_id=opened.id) == opened

    async def test_get_account_raises_not_found_when_never_funded(self, bob):
        with pytest.raises(NotFoundError):
            await bob.get_account(currency="GBP")

    async def test_lists_every_account_across_pages(self, bob):
        for currency in ("USD", "EUR", "JPY"):
            await bob.open_account(currency)
        accounts = [a.currency async for a in bob.list_accounts(page_size=1)]
        assert accounts == ["EUR", "JPY", "USD"]


class TestCreateTransfer:
    async def test_moves_money_to_the_recipient(self, alice, bob):
        bob_id = await _user_id(bob)
        transfer = await alice.create_transfer(
            to_user_id=bob_id, currency="USD", amount_minor=250, memo="tea"
        )
        assert (transfer.to_user_id, transfer.amount_minor, transfer.memo) == (bob_id, 250, "tea")
        assert transfer.state == ledger_pb2.TRANSFER_STATE_POSTED
        assert (await bob.get_account(currency="USD")).balance_minor == 250

    async def test_raises_insufficient_funds_when_the_sender_has_no_money(self, alice, bob):
        alice_name = (await alice.get_me()).username
        with pytest.raises(InsufficientFundsError) as caught:
            await bob.create_transfer(to_username=alice_name, currency="USD", amount_minor=1)
        assert caught.value.reason == "INSUFFICIENT_FUNDS"

    async def test_raises_idempotency_key_reused_when_the_body_differs(self, alice, bob):
        bob_id = await _user_id(bob)
        first = await alice.create_transfer(to_user_id=bob_id, currency="USD", amount_minor=5)
        again = await alice.create_transfer(
            to_user_id=bob_id, currency="USD", amount_minor=5, request_id=first.request_id
        )
        assert again == first
        with pytest.raises(IdempotencyKeyReusedError):
            await alice.create_transfer(
                to_user_id=bob_id, currency="USD", amount_minor=6, request_id=first.request_id
            )

    async def test_raises_value_error_when_no_recipient_is_given(self, alice):
        with pytest.raises(ValueError, match="exactly one"):
            await alice.create_transfer(currency="USD", amount_minor=5)

    async def test_moves_money_once_when_the_answer_is_lost_and_the_call_retried(self, server, admin, bob):
        async with proxied(server.address) as proxy, logged_in(proxy.address) as payer:
            await admin.deposit(to_user_id=await _user_id(payer), currency="USD", amount_minor=1000)
            proxy.lose_next_answer()
            transfer = await payer.create_transfer(
                to_user_id=await _user_id(bob), currency="USD", amount_minor=300
            )
            assert proxy.lost_answers == 1
            assert (await payer.get_account(currency="USD")).balance_minor == 700
        received = [t async for t in bob.list_transfers()]
        assert [t.id for t in received] == [transfer.id]


class TestPendingTransfers:
    async def test_posts_a_pending_transfer_for_less_and_releases_the_rest(self, alice, bob):
        held = await alice.create_pending_transfer(
            to_user_id=await _user_id(bob),
            currency="USD",
            amount_minor=500,
            expire_time=datetime.now(UTC) + timedelta(hours=1),
        )
        assert held.state == ledger_pb2.TRANSFER_STATE_PENDING
        assert (await alice.get_account(currency="USD")).available_minor == FUNDS_MINOR - 500
        posted = await alice.post_pending_transfer(held.id, amount_minor=200)
        assert (posted.state, posted.posted_amount_minor) == (ledger_pb2.TRANSFER_STATE_POSTED, 200)
        assert (await alice.get_account(currency="USD")).available_minor == FUNDS_MINOR - 200

    async def test_either_party_voids_and_a_voided_transfer_cannot_be_posted(self, alice, bob):
        held = await alice.create_pending_transfer(
            to_username=(await bob.get_me()).username, currency="USD", amount_minor=500
        )
        voided = await bob.void_pending_transfer(held.id)
        assert voided.state == ledger_pb2.TRANSFER_STATE_VOIDED
        with pytest.raises(FailedPreconditionError) as caught:
            await alice.post_pending_transfer(held.id)
        assert caught.value.reason == "TRANSFER_NOT_PENDING"

    async def test_only_the_sender_may_post(self, alice, bob):
        held = await alice.create_pending_transfer(
            to_user_id=await _user_id(bob), currency="USD", amount_minor=5
        )
        with pytest.raises(PermissionDeniedError):
            await bob.post_pending_transfer(held.id)


class TestReadingTransfers:
    async def test_list_transfers_iterates_every_page_newest_first(self, alice, bob):
        bob_id = await _user_id(bob)
        sent = [
            await alice.create_transfer(to_user_id=bob_id, currency="USD", amount_minor=n)
            for n in range(1, 6)
        ]
        listed = [t.id async for t in bob.list_transfers(page_size=2)]
        assert listed == [t.id for t in reversed(sent)]
        outgoing = [t async for t in alice.list_transfers(direction=ledger_pb2.TRANSFER_DIRECTION_SENT)]
        assert len(outgoing) == 5  # the deposit that funded alice is not one she sent

    async def test_get_transfer_is_not_found_for_someone_else(self, server, alice, bob):
        transfer = await alice.create_transfer(to_user_id=await _user_id(bob), currency="USD", amount_minor=1)
        assert await bob.get_transfer(transfer.id) == transfer
        async with logged_in(server.address) as stranger:
            with pytest.raises(NotFoundError):
                await stranger.get_transfer(transfer.id)


class TestWatchTransfers:
    async def test_resumes_after_the_connection_drops_without_losing_or_repeating(self, server, admin, alice):
        async with proxied(server.address) as proxy, logged_in(proxy.address) as watcher:
            watcher_id = await _user_id(watcher)
            cursor = await _cursor_now(watcher, admin)
            events = watcher.watch_transfers(cursor=cursor)
            before = await alice.create_transfer(to_user_id=watcher_id, currency="USD", amount_minor=1)
            async with asyncio.timeout(10):
                first = await anext(events)
                proxy.drop()
                after = [
                    await alice.create_transfer(to_user_id=watcher_id, currency="USD", amount_minor=n)
                    for n in (2, 3)
                ]
                rest = [await anext(events), await anext(events)]
            await events.aclose()
            assert proxy.accepted >= 2
        assert [e.transfer.id for e in [first, *rest]] == [t.id for t in [before, *after]]

    async def test_ends_when_the_client_closes(self, server):
        async with logged_in(server.address) as watcher:

            async def read_all() -> int:
                return len([event async for event in watcher.watch_transfers()])

            reader = asyncio.ensure_future(read_all())
            await asyncio.sleep(0.3)
            await watcher.close()
            async with asyncio.timeout(10):
                assert await reader == 0  # ended, neither cancelled nor failed

    async def test_refreshes_the_token_and_resumes_when_the_stream_expires(
        self, servers, server, admin, alice
    ):
        async with logged_in(server.address) as setup:  # a long-lived token: no race with setup
            me = await setup.get_me()
            cursor = await _cursor_now(setup, admin)
        short = await servers.start(database_url=server.database_url, access_token_ttl_seconds=1)
        async with Client(short.address) as watcher:
            await watcher.login(me.username, PASSWORD)
            watcher_id = me.id
            first_tokens = watcher.tokens
            events = watcher.watch_transfers(cursor=cursor)
            async with asyncio.timeout(20):
                waiting = asyncio.ensure_future(anext(events))
                await asyncio.sleep(2.5)  # the stream's token expires meanwhile
                sent = await alice.create_transfer(to_user_id=watcher_id, currency="USD", amount_minor=7)
                event = await waiting
            await events.aclose()
            assert event.transfer.id == sent.id
            assert watcher.tokens is not first_tokens


class TestAdmin:
    async def test_deposit_and_withdraw_move_money_and_the_audit_holds(self, admin, bob):
        name = (await bob.get_me()).username
        await admin.deposit(to_username=name, currency="JPY", amount_minor=1000)
        out = await admin.withdraw(from_username=name, currency="JPY", amount_minor=400, memo="cash")
        assert out.kind == ledger_pb2.TRANSFER_KIND_WITHDRAWAL
        assert (await bob.get_account(currency="JPY")).balance_minor == 600
        audit = await admin.audit_ledger()
        assert audit.ok, audit.violations
        assert {t.currency: t.issued_minor for t in audit.totals}["JPY"] == 600

    async def test_withdraw_raises_insufficient_funds_beyond_the_balance(self, admin, bob):
        with pytest.raises(InsufficientFundsError):
            await admin.withdraw(from_user_id=await _user_id(bob), currency="USD", amount_minor=1)

    async def test_users_may_not_mint_or_audit(self, alice):
        with pytest.raises(PermissionDeniedError):
            await alice.deposit(to_user_id=await _user_id(alice), currency="USD", amount_minor=1)
        with pytest.raises(PermissionDeniedError):
            await alice.audit_ledger()
