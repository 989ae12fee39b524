"""LedgerService: transport for the ledger's domain modules.

ListCurrencies, OpenAccount, GetAccount, ListAccounts: server/ledger/accounts.py.
CreateTransfer, CreatePendingTransfer, PostPendingTransfer, VoidPendingTransfer, GetTransfer,
ListTransfers: server/ledger/transfers.py (creations through the TransferBatcher).
WatchTransfers: server/ledger/watch.py. Deposit, Withdraw, AuditLedger: server/ledger/admin.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeAlias

import grpc

from sendinchat.v1 import ledger_pb2, ledger_pb2_grpc
from server.auth.principal import current_principal
from server.db.pool import Pool
from server.ledger import accounts, admin, rules, transfers
from server.ledger.audit import AuditReport
from server.ledger.batching import TransferBatcher
from server.ledger.currencies import EXPONENTS
from server.ledger.models import Account
from server.ledger.watch import EventKey, WatchHub
from server.protoconv import from_timestamp, money, timestamp, transfer_proto
from server.streams import StreamQuota

_DIRECTIONS: dict[int, transfers.Direction] = {
    ledger_pb2.TRANSFER_DIRECTION_UNSPECIFIED: "all",
    ledger_pb2.TRANSFER_DIRECTION_ALL: "all",
    ledger_pb2.TRANSFER_DIRECTION_SENT: "sent",
    ledger_pb2.TRANSFER_DIRECTION_RECEIVED: "received",
}


def _account(account: Account) -> ledger_pb2.Account:
    return ledger_pb2.Account(
        id=account.id,
        user_id=account.user_id,
        currency=account.currency,
        minor_unit_exponent=account.exponent,
        balance_minor=account.balance,
        pending_debit_minor=account.pending_debit,
        pending_credit_minor=account.pending_credit,
        available_minor=account.available,
        create_time=timestamp(account.created_at),
    )


def _audit(report: AuditReport) -> ledger_pb2.AuditLedgerResponse:
    return ledger_pb2.AuditLedgerResponse(
        ok=report.ok,
        violations=[
            ledger_pb2.AuditViolation(
                kind=v.kind, account_id=v.account_id, currency=v.currency, detail=v.detail
            )
            for v in report.violations
        ],
        accounts_checked=report.accounts_checked,
        transfers_checked=report.transfers_checked,
        totals=[
            ledger_pb2.CurrencyTotal(currency=t.currency, sum_minor=t.sum, issued_minor=t.issued)
            for t in report.totals
        ],
    )


def _oneof(request: object, group: str, first: str, second: str) -> tuple[str | None, str | None]:
    which = request.WhichOneof(group)  # type: ignore[attr-defined]  # every request message has it
    return (
        getattr(request, first) if which == first else None,
        getattr(request, second) if which == second else None,
    )


_MoneyRequest: TypeAlias = (
    ledger_pb2.CreateTransferRequest
    | ledger_pb2.CreatePendingTransferRequest
    | ledger_pb2.DepositRequest
    | ledger_pb2.WithdrawRequest
)


def _money(request: _MoneyRequest, party: str, prefix: str) -> rules.Money:
    user_id, username = _oneof(request, party, f"{prefix}_user_id", f"{prefix}_username")
    return money(request, user_id=user_id, username=username)


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Accounts, transfers, two-phase holds, the live feed, minting and the audit."""

    def __init__(self, pool: Pool, batcher: TransferBatcher, watch_hub: WatchHub) -> None:
        self._pool = pool
        self._batcher = batcher
        self._hub = watch_hub
        self._watches = StreamQuota("WatchTransfers")

    async def ListCurrencies(
        self,
        request: ledger_pb2.ListCurrenciesRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.ListCurrenciesRequest, ledger_pb2.ListCurrenciesResponse
        ],
    ) -> ledger_pb2.ListCurrenciesResponse:
        """LedgerService.ListCurrencies."""
        return ledger_pb2.ListCurrenciesResponse(
            currencies=[
                ledger_pb2.Currency(code=code, minor_unit_exponent=exponent)
                for code, exponent in sorted(EXPONENTS.items())
            ]
        )

    async def OpenAccount(
        self,
        request: ledger_pb2.OpenAccountRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.OpenAccountRequest, ledger_pb2.OpenAccountResponse],
    ) -> ledger_pb2.OpenAccountResponse:
        """LedgerService.OpenAccount."""
        account = await accounts.open_account(
            self._pool, principal=current_principal(), currency=request.currency
        )
        return ledger_pb2.OpenAccountResponse(account=_account(account))

    async def GetAccount(
        self,
        request: ledger_pb2.GetAccountRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetAccountRequest, ledger_pb2.GetAccountResponse],
    ) -> ledger_pb2.GetAccountResponse:
        """LedgerService.GetAccount."""
        account_id, currency = _oneof(request, "key", "account_id", "currency")
        account = await accounts.get_account(
            self._pool, principal=current_principal(), account_id=account_id, currency=currency
        )
        return ledger_pb2.GetAccountResponse(account=_account(account))

    async def ListAccounts(
        self,
        request: ledger_pb2.ListAccountsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListAccountsRequest, ledger_pb2.ListAccountsResponse],
    ) -> ledger_pb2.ListAccountsResponse:
        """LedgerService.ListAccounts."""
        page, token = await accounts.list_accounts(
            self._pool,
            principal=current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ledger_pb2.ListAccountsResponse(accounts=[_account(a) for a in page], next_page_token=token)

    async def CreateTransfer(
        self,
        request: ledger_pb2.CreateTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.CreateTransferRequest, ledger_pb2.CreateTransferResponse
        ],
    ) -> ledger_pb2.CreateTransferResponse:
        """LedgerService.CreateTransfer."""
        transfer = await transfers.create_transfer(
            self._batcher, principal=current_principal(), money=_money(request, "recipient", "to")
        )
        return ledger_pb2.CreateTransferResponse(transfer=transfer_proto(transfer))

    async def CreatePendingTransfer(
        self,
        request: ledger_pb2.CreatePendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.CreatePendingTransferRequest, ledger_pb2.CreatePendingTransferResponse
        ],
    ) -> ledger_pb2.CreatePendingTransferResponse:
        """LedgerService.CreatePendingTransfer."""
        transfer = await transfers.create_transfer(
            self._batcher,
            principal=current_principal(),
            money=_money(request, "recipient", "to"),
            pending=True,
            expires_at=from_timestamp(request.expire_time, request.HasField("expire_time")),
        )
        return ledger_pb2.CreatePendingTransferResponse(transfer=transfer_proto(transfer))

    async def PostPendingTransfer(
        self,
        request: ledger_pb2.PostPendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.PostPendingTransferRequest, ledger_pb2.PostPendingTransferResponse
        ],
    ) -> ledger_pb2.PostPendingTransferResponse:
        """LedgerService.PostPendingTransfer."""
        transfer = await transfers.post_pending_transfer(
            self._pool,
            principal=current_principal(),
            request_id=request.request_id,
            transfer_id=request.transfer_id,
            amount=request.amount_minor,
        )
        return ledger_pb2.PostPendingTransferResponse(transfer=transfer_proto(transfer))

    async def VoidPendingTransfer(
        self,
        request: ledger_pb2.VoidPendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.VoidPendingTransferRequest, ledger_pb2.VoidPendingTransferResponse
        ],
    ) -> ledger_pb2.VoidPendingTransferResponse:
        """LedgerService.VoidPendingTransfer."""
        transfer = await transfers.void_pending_transfer(
            self._pool,
            principal=current_principal(),
            request_id=request.request_id,
            transfer_id=request.transfer_id,
        )
        return ledger_pb2.VoidPendingTransferResponse(transfer=transfer_proto(transfer))

    async def GetTransfer(
        self,
        request: ledger_pb2.GetTransferRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetTransferRequest, ledger_pb2.GetTransferResponse],
    ) -> ledger_pb2.GetTransferResponse:
        """LedgerService.GetTransfer."""
        transfer = await transfers.get_transfer(
            self._pool, principal=current_principal(), transfer_id=request.transfer_id
        )
        return ledger_pb2.GetTransferResponse(transfer=transfer_proto(transfer))

    async def ListTransfers(
        self,
        request: ledger_pb2.ListTransfersRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListTransfersRequest, ledger_pb2.ListTransfersResponse],
    ) -> ledger_pb2.ListTransfersResponse:
        """LedgerService.ListTransfers."""
        page, token = await transfers.list_transfers(
            self._pool,
            principal=current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            direction=_DIRECTIONS[request.direction],
            currency=request.currency,
        )
        return ledger_pb2.ListTransfersResponse(
            transfers=[transfer_proto(t) for t in page], next_page_token=token
        )

    async def WatchTransfers(
        self,
        request: ledger_pb2.WatchTransfersRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.WatchTransfersRequest, ledger_pb2.WatchTransfersResponse
        ],
    ) -> AsyncIterator[ledger_pb2.WatchTransfersResponse]:
        """LedgerService.WatchTransfers."""
        after = EventKey.decode(request.cursor) if request.cursor else None
        user_id = current_principal().user_id
        with self._watches.held(user_id):
            events = self._hub.watch(user_id, after)
            try:
                async for event in events:
                    if event is None:
                        # Initial metadata tells the client the watch is registered.
                        await context.send_initial_metadata(())
                        continue
                    yield ledger_pb2.WatchTransfersResponse(
                        transfer=transfer_proto(event.transfer), cursor=event.key.encode()
                    )
            finally:
                # Cancelled by token expiry, shutdown or the client: unregister at once.
                with contextlib.suppress(Exception):
                    await events.aclose()  # type: ignore[attr-defined]  # an async generator

    async def Deposit(
        self,
        request: ledger_pb2.DepositRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.DepositRequest, ledger_pb2.DepositResponse],
    ) -> ledger_pb2.DepositResponse:
        """LedgerService.Deposit."""
        transfer = await admin.deposit(
            self._batcher, principal=current_principal(), money=_money(request, "recipient", "to")
        )
        return ledger_pb2.DepositResponse(transfer=transfer_proto(transfer))

    async def Withdraw(
        self,
        request: ledger_pb2.WithdrawRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.WithdrawRequest, ledger_pb2.WithdrawResponse],
    ) -> ledger_pb2.WithdrawResponse:
        """LedgerService.Withdraw."""
        transfer = await admin.withdraw(
            self._batcher, principal=current_principal(), money=_money(request, "source", "from")
        )
        return ledger_pb2.WithdrawResponse(transfer=transfer_proto(transfer))

    async def AuditLedger(
        self,
        request: ledger_pb2.AuditLedgerRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.AuditLedgerRequest, ledger_pb2.AuditLedgerResponse],
    ) -> ledger_pb2.AuditLedgerResponse:
        """LedgerService.AuditLedger."""
        return _audit(await admin.audit(self._pool, principal=current_principal()))
