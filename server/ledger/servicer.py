"""LedgerService: transport for server/ledger/service.py (and the audit, and the watch hub)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2

from sendinchat.v1 import ledger_pb2, ledger_pb2_grpc
from server.auth.principal import current_principal
from server.db.pool import DATABASE_ERRORS, Pool
from server.health import HealthState
from server.ledger import service
from server.ledger.audit import AuditReport, audit_ledger
from server.ledger.batching import TransferBatcher
from server.ledger.currencies import EXPONENTS
from server.ledger.models import Account, Transfer
from server.ledger.pagination import EventKey
from server.ledger.watch import WatchHub
from server.protoconv import from_timestamp, timestamp

log = logging.getLogger(__name__)

EXPIRY_SWEEP_SECONDS = 1.0

_KINDS = {
    "transfer": ledger_pb2.TRANSFER_KIND_TRANSFER,
    "deposit": ledger_pb2.TRANSFER_KIND_DEPOSIT,
    "withdrawal": ledger_pb2.TRANSFER_KIND_WITHDRAWAL,
}
_STATES = {
    "pending": ledger_pb2.TRANSFER_STATE_PENDING,
    "posted": ledger_pb2.TRANSFER_STATE_POSTED,
    "voided": ledger_pb2.TRANSFER_STATE_VOIDED,
    "expired": ledger_pb2.TRANSFER_STATE_EXPIRED,
}
_DIRECTIONS: dict[int, service.Direction] = {
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


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _stamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    # Timestamp.FromDatetime costs several times this on the CreateTransfer hot path.
    if value is None:
        return None
    micros = (value - _EPOCH) // _MICROSECOND
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def transfer_proto(transfer: Transfer) -> ledger_pb2.Transfer:
    """The wire form of a ledger Transfer (also used by chat for payment messages)."""
    return ledger_pb2.Transfer(
        id=transfer.id,
        request_id=transfer.request_id,
        kind=_KINDS[transfer.kind],
        state=_STATES[transfer.state],
        from_user_id=transfer.from_user_id or "",
        to_user_id=transfer.to_user_id or "",
        currency=transfer.currency,
        amount_minor=transfer.amount,
        posted_amount_minor=transfer.posted_amount,
        memo=transfer.memo,
        create_time=_stamp(transfer.created_at),
        expire_time=_stamp(transfer.expires_at) if transfer.state == "pending" else None,
        resolve_time=_stamp(transfer.resolved_at),
        from_account_id=transfer.from_account_id if transfer.from_user_id else "",
        to_account_id=transfer.to_account_id if transfer.to_user_id else "",
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


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Accounts, transfers, two-phase holds, the live feed, minting and the audit."""

    def __init__(self, pool: Pool, batcher: TransferBatcher) -> None:
        self._pool = pool
        self._batcher = batcher
        self._hub = WatchHub(pool)
        self._audited = False

    async def audit_into(self, health: HealthState) -> None:
        """Audit the ledger and close the `ledger_audit` health gate if it is broken.

        When the database cannot be reached the audit is left for run_background to retry (the
        database gate already reports NOT_SERVING meanwhile).
        """
        try:
            report = await audit_ledger(self._pool)
        except DATABASE_ERRORS:
            log.warning("ledger audit could not run; will retry", exc_info=True)
            return
        self._audited = True
        for violation in report.violations:
            log.error(
                "ledger audit: %s %s %s %s",
                violation.kind,
                violation.currency,
                violation.account_id,
                violation.detail,
            )
        health.set_gate("ledger_audit", report.ok)
        await health.publish()

    async def run_background(self, health: HealthState) -> None:
        """The watch hub, the expiry sweeper and (if the start-up one could not run) the audit."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._hub.run())
            group.create_task(self._sweep_expired(health))

    async def _sweep_expired(self, health: HealthState) -> None:
        while True:
            await asyncio.sleep(EXPIRY_SWEEP_SECONDS)
            if not self._audited:
                with contextlib.suppress(Exception):  # audit_into logs; retried next round
                    await self.audit_into(health)
            try:
                await service.expire_due(self._pool)
            except Exception:  # keep sweeping; the next round retries
                log.warning("expiring pending transfers failed; will retry", exc_info=True)

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
        account = await service.open_account(
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
        account = await service.get_account(
            self._pool, principal=current_principal(), account_id=account_id, currency=currency
        )
        return ledger_pb2.GetAccountResponse(account=_account(account))

    async def ListAccounts(
        self,
        request: ledger_pb2.ListAccountsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListAccountsRequest, ledger_pb2.ListAccountsResponse],
    ) -> ledger_pb2.ListAccountsResponse:
        """LedgerService.ListAccounts."""
        accounts, token = await service.list_accounts(
            self._pool,
            principal=current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return ledger_pb2.ListAccountsResponse(
            accounts=[_account(a) for a in accounts], next_page_token=token
        )

    async def CreateTransfer(
        self,
        request: ledger_pb2.CreateTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.CreateTransferRequest, ledger_pb2.CreateTransferResponse
        ],
    ) -> ledger_pb2.CreateTransferResponse:
        """LedgerService.CreateTransfer."""
        to_user_id, to_username = _oneof(request, "recipient", "to_user_id", "to_username")
        transfer = await service.create_transfer(
            self._batcher,
            principal=current_principal(),
            request_id=request.request_id,
            to_user_id=to_user_id,
            to_username=to_username,
            currency=request.currency,
            amount=request.amount_minor,
            memo=request.memo,
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
        to_user_id, to_username = _oneof(request, "recipient", "to_user_id", "to_username")
        transfer = await service.create_transfer(
            self._batcher,
            principal=current_principal(),
            request_id=request.request_id,
            to_user_id=to_user_id,
            to_username=to_username,
            currency=request.currency,
            amount=request.amount_minor,
            memo=request.memo,
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
        transfer = await service.post_pending_transfer(
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
        transfer = await service.void_pending_transfer(
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
        transfer = await service.get_transfer(
            self._pool, principal=current_principal(), transfer_id=request.transfer_id
        )
        return ledger_pb2.GetTransferResponse(transfer=transfer_proto(transfer))

    async def ListTransfers(
        self,
        request: ledger_pb2.ListTransfersRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListTransfersRequest, ledger_pb2.ListTransfersResponse],
    ) -> ledger_pb2.ListTransfersResponse:
        """LedgerService.ListTransfers."""
        transfers, token = await service.list_transfers(
            self._pool,
            principal=current_principal(),
            page_size=request.page_size,
            page_token=request.page_token,
            direction=_DIRECTIONS.get(request.direction, "all"),
            currency=request.currency,
        )
        return ledger_pb2.ListTransfersResponse(
            transfers=[transfer_proto(t) for t in transfers], next_page_token=token
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
        events = self._hub.watch(current_principal().user_id, after)
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
        to_user_id, to_username = _oneof(request, "recipient", "to_user_id", "to_username")
        transfer = await service.deposit(
            self._batcher,
            principal=current_principal(),
            request_id=request.request_id,
            to_user_id=to_user_id,
            to_username=to_username,
            currency=request.currency,
            amount=request.amount_minor,
            memo=request.memo,
        )
        return ledger_pb2.DepositResponse(transfer=transfer_proto(transfer))

    async def Withdraw(
        self,
        request: ledger_pb2.WithdrawRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.WithdrawRequest, ledger_pb2.WithdrawResponse],
    ) -> ledger_pb2.WithdrawResponse:
        """LedgerService.Withdraw."""
        from_user_id, from_username = _oneof(request, "source", "from_user_id", "from_username")
        transfer = await service.withdraw(
            self._pool,
            self._batcher,
            principal=current_principal(),
            request_id=request.request_id,
            from_user_id=from_user_id,
            from_username=from_username,
            currency=request.currency,
            amount=request.amount_minor,
            memo=request.memo,
        )
        return ledger_pb2.WithdrawResponse(transfer=transfer_proto(transfer))

    async def AuditLedger(
        self,
        request: ledger_pb2.AuditLedgerRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.AuditLedgerRequest, ledger_pb2.AuditLedgerResponse],
    ) -> ledger_pb2.AuditLedgerResponse:
        """LedgerService.AuditLedger."""
        return _audit(await service.audit(self._pool, principal=current_principal()))
