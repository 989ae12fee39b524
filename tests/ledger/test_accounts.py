"""OpenAccount, GetAccount, ListAccounts: the caller's own accounts, with currencies checked."""

from __future__ import annotations

import grpc
import pytest

from sendinchat.v1 import ledger_pb2
from server.ledger.currencies import EXPONENTS
from tests.helpers import field_violations, request_id, signed_up


class TestOpenAccount:
    async def test_opens_an_empty_account_with_its_exponent(self, stubs, bob):
        reply = await stubs.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(currency="JPY"), metadata=bob.auth
        )
        a = reply.account
        assert (a.user_id, a.currency, a.minor_unit_exponent) == (bob.id, "JPY", 0)
        assert (a.balance_minor, a.pending_debit_minor, a.pending_credit_minor, a.available_minor) == (
            0,
            0,
            0,
            0,
        )
        assert a.id and a.create_time.seconds > 0

    async def test_returns_the_same_account_when_already_open(self, stubs, bob):
        first = await stubs.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(currency="NGN"), metadata=bob.auth
        )
        second = await stubs.ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(currency="NGN"), metadata=bob.auth
        )
        assert first.account == second.account

    @pytest.mark.parametrize("currency", ["", "usd", "XXX", "US", "BTC"])
    async def test_is_invalid_argument_when_currency_is_unsupported(self, stubs, bob, currency):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.OpenAccount(
                ledger_pb2.OpenAccountRequest(currency=currency), metadata=bob.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "currency" in field_violations(caught.value)

    async def test_currency_table_matches_the_code(self, server):
        rows = await server.pool.fetch("SELECT code, exponent FROM currencies")
        assert {r["code"]: r["exponent"] for r in rows} == EXPONENTS
        assert {"USD", "EUR", "GBP", "JPY", "NGN"} <= set(EXPONENTS)


class TestGetAccount:
    async def test_finds_own_account_by_currency_and_by_id(self, stubs, alice):
        by_currency = await stubs.ledger.GetAccount(
            ledger_pb2.GetAccountRequest(currency="USD"), metadata=alice.auth
        )
        by_id = await stubs.ledger.GetAccount(
            ledger_pb2.GetAccountRequest(account_id=by_currency.account.id), metadata=alice.auth
        )
        assert by_id.account == by_currency.account
        assert by_id.account.balance_minor == 10_000

    async def test_is_not_found_for_another_users_account(self, stubs, alice, bob):
        theirs = await stubs.ledger.GetAccount(
            ledger_pb2.GetAccountRequest(currency="USD"), metadata=alice.auth
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetAccount(
                ledger_pb2.GetAccountRequest(account_id=theirs.account.id), metadata=bob.auth
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_not_found_when_no_account_in_currency(self, stubs, bob):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetAccount(ledger_pb2.GetAccountRequest(currency="EUR"), metadata=bob.auth)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [({}, "key"), ({"account_id": "zzz"}, "account_id"), ({"currency": "ABC"}, "currency")],
    )
    async def test_is_invalid_argument_when_key_is_missing_or_bad(self, stubs, bob, request_fields, field):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.GetAccount(ledger_pb2.GetAccountRequest(**request_fields), metadata=bob.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


class TestListAccounts:
    async def test_lists_own_accounts_by_currency_in_pages(self, stubs, alice, bob):
        for currency in ("GBP", "EUR", "JPY"):
            await stubs.ledger.OpenAccount(
                ledger_pb2.OpenAccountRequest(currency=currency), metadata=alice.auth
            )
        await stubs.ledger.OpenAccount(ledger_pb2.OpenAccountRequest(currency="CHF"), metadata=bob.auth)
        seen: list[str] = []
        token = ""
        while True:
            page = await stubs.ledger.ListAccounts(
                ledger_pb2.ListAccountsRequest(page_size=3, page_token=token), metadata=alice.auth
            )
            seen.extend(a.currency for a in page.accounts)
            token = page.next_page_token
            if not token:
                break
        assert seen == ["EUR", "GBP", "JPY", "USD"]

    async def test_first_credit_opens_the_recipients_account(self, stubs, alice):
        carol = await signed_up(stubs)
        await stubs.ledger.CreateTransfer(
            ledger_pb2.CreateTransferRequest(
                request_id=request_id(), to_user_id=carol.id, currency="USD", amount_minor=3
            ),
            metadata=alice.auth,
        )
        page = await stubs.ledger.ListAccounts(ledger_pb2.ListAccountsRequest(), metadata=carol.auth)
        assert [(a.currency, a.balance_minor) for a in page.accounts] == [("USD", 3)]

    @pytest.mark.parametrize(
        ("request_fields", "field"),
        [({"page_size": 101}, "page_size"), ({"page_token": "garbage"}, "page_token")],
    )
    async def test_is_invalid_argument_when_page_size_or_token_is_bad(
        self, stubs, bob, request_fields, field
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.ledger.ListAccounts(
                ledger_pb2.ListAccountsRequest(**request_fields), metadata=bob.auth
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)


class TestListCurrencies:
    async def test_lists_every_ledger_currency_with_its_exponent_when_signed_in(self, server):
        alice = await signed_up(server.stubs)
        reply = await server.stubs.ledger.ListCurrencies(
            ledger_pb2.ListCurrenciesRequest(), metadata=alice.auth
        )
        stored = {
            r["code"]: r["exponent"] for r in await server.pool.fetch("SELECT code, exponent FROM currencies")
        }
        assert {c.code: c.minor_unit_exponent for c in reply.currencies} == stored
        assert [c.code for c in reply.currencies] == sorted(stored)
        assert (stored["USD"], stored["JPY"]) == (2, 0)
