"""LedgerService on the Client, reading: currencies, accounts, transfers, the live feed, the audit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc

from sendinchat._base import ClientBase, backoff, cancelled_by_close, one_key, quiet_on_close
from sendinchat.errors import RateLimitedError, UnauthenticatedError, UnavailableError, from_rpc_error
from sendinchat.v1 import ledger_pb2


class LedgerMixin(ClientBase):
    """The LedgerService RPCs that move no money, one method each (snake_case of the RPC's name)."""

    async def list_currencies(self) -> list[ledger_pb2.Currency]:
        """Every currency the ledger holds with its minor-unit exponent (2 for USD, 0 for JPY).

        Raises:
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.ListCurrenciesRequest()
        reply = await self._idempotent(lambda md: self.ledger.ListCurrencies(request, metadata=md))
        return list(reply.currencies)

    async def open_account(self, currency: str) -> ledger_pb2.Account:
        """Open the caller's account in a currency, or return it if it is open already.

        Args:
            currency: ISO-4217 code.

        Raises:
            InvalidArgumentError: Unsupported currency.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.OpenAccountRequest(currency=currency)
        reply = await self._idempotent(lambda md: self.ledger.OpenAccount(request, metadata=md))
        return reply.account

    async def get_account(self, *, currency: str = "", account_id: str = "") -> ledger_pb2.Account:
        """One of the caller's accounts with its balances, by currency or by id (exactly one).

        Args:
            currency: ISO-4217 code: the caller's account in it.
            account_id: The account's UUID.

        Raises:
            ValueError: Neither or both keys were given.
            InvalidArgumentError: A bad currency or id.
            NotFoundError: The caller has no such account (none is opened before money arrives).
            UnauthenticatedError: Not logged in, or the session ended.
        """
        if one_key(currency=currency, account_id=account_id) == "currency":
            request = ledger_pb2.GetAccountRequest(currency=currency)
        else:
            request = ledger_pb2.GetAccountRequest(account_id=account_id)
        reply = await self._idempotent(lambda md: self.ledger.GetAccount(request, metadata=md))
        return reply.account

    def list_accounts(self, *, page_size: int = 0) -> AsyncGenerator[ledger_pb2.Account, None]:
        """Every account of the caller, ordered by currency, fetched a page at a time.

        Args:
            page_size: Accounts per page, 1-100; 0 lets the server choose.

        Raises:
            InvalidArgumentError: A bad page size.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.ListAccountsRequest(page_size=page_size)
        return self._paged(self.ledger.ListAccounts, request, lambda page: page.accounts)

    async def get_transfer(self, transfer_id: str) -> ledger_pb2.Transfer:
        """A transfer the caller sent or received.

        Args:
            transfer_id: The transfer's UUID.

        Raises:
            InvalidArgumentError: A bad id.
            NotFoundError: No such transfer, or the caller is not a party.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.GetTransferRequest(transfer_id=transfer_id)
        reply = await self._idempotent(lambda md: self.ledger.GetTransfer(request, metadata=md))
        return reply.transfer

    def list_transfers(
        self,
        *,
        direction: ledger_pb2.TransferDirection.ValueType = ledger_pb2.TRANSFER_DIRECTION_ALL,
        currency: str = "",
        page_size: int = 0,
    ) -> AsyncGenerator[ledger_pb2.Transfer, None]:
        """The caller's transfers, newest first, fetched a page at a time (pages stay stable).

        Args:
            direction: Sent, received or both.
            currency: Only this ISO-4217 currency; empty: all.
            page_size: Transfers per page, 1-100; 0 lets the server choose.

        Raises:
            InvalidArgumentError: A bad page size or currency.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.ListTransfersRequest(page_size=page_size, direction=direction, currency=currency)
        return self._paged(self.ledger.ListTransfers, request, lambda page: page.transfers)

    async def watch_transfers(
        self, *, cursor: str = "", reconnect_attempts: int = 10
    ) -> AsyncGenerator[ledger_pb2.WatchTransfersResponse, None]:
        """Every transfer touching the caller's accounts as it commits, for as long as you iterate.

        The feed survives its stream: after UNAVAILABLE (a server shutting down, a dropped
        connection) it reconnects with backoff, and after its access token expires it refreshes
        the token; either way it resumes after the last cursor it yielded, so nothing is missed
        or repeated. Keep `event.cursor` to resume in a later run. Before the first event there
        is no cursor: a break then resumes with what commits from the reconnection on.

        Args:
            cursor: Resume after this cursor (from an earlier event); empty starts with what
                commits from now on.
            reconnect_attempts: Failed reconnections in a row (the server unreachable, or the user's
                streams at their limit) before the error is raised.

        Yields:
            Each event: the transfer as it is after the change, and the cursor after it.

        Raises:
            InvalidArgumentError: A bad cursor.
            UnauthenticatedError: Not logged in, the session ended, or the refresh failed.
            UnavailableError: The server stayed unreachable for reconnect_attempts reconnections.
            RateLimitedError: The user's WatchTransfers streams stayed at their limit as long.
        """
        failures = 0
        while not self.closed:
            with quiet_on_close(lambda: self.closed):
                metadata = await self._fresh_metadata()
            if self.closed:
                return
            tokens = self.tokens
            call = self.ledger.WatchTransfers(
                ledger_pb2.WatchTransfersRequest(cursor=cursor), metadata=metadata
            )
            try:
                await call.initial_metadata()  # the server sends it once the watch is registered
                if not call.done():
                    failures = 0
                async for event in call:
                    cursor = event.cursor
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                if self.closed:
                    return
                error = from_rpc_error(exc)
            except asyncio.CancelledError:
                if cancelled_by_close(self.closed):
                    return
                raise
            finally:
                call.cancel()
            with quiet_on_close(lambda: self.closed):
                if isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_EXPIRED":
                    await self._refresh_if_stale(tokens)
                elif isinstance(error, UnavailableError | RateLimitedError) and failures < reconnect_attempts:
                    await asyncio.sleep(error.retry_after_seconds or backoff(failures))
                    failures += 1
                else:
                    raise error

    async def audit_ledger(self) -> ledger_pb2.AuditLedgerResponse:
        """Recompute every balance from the transfers and check the invariants (admins only).

        Returns:
            The verdict: ok, the violations found, what was checked and per-currency totals.

        Raises:
            PermissionDeniedError: The caller is not an admin.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.AuditLedgerRequest()
        return await self._idempotent(lambda md: self.ledger.AuditLedger(request, metadata=md))
