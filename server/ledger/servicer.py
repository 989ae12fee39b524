"""LedgerService: placeholder answering UNIMPLEMENTED until its issue lands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from sendinchat.v1 import ledger_pb2, ledger_pb2_grpc


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """Every RPC of LedgerService answers UNIMPLEMENTED for now."""

    async def OpenAccount(
        self,
        request: ledger_pb2.OpenAccountRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.OpenAccountRequest, ledger_pb2.OpenAccountResponse],
    ) -> ledger_pb2.OpenAccountResponse:
        """LedgerService.OpenAccount."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.OpenAccount is not built yet")

    async def GetAccount(
        self,
        request: ledger_pb2.GetAccountRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetAccountRequest, ledger_pb2.GetAccountResponse],
    ) -> ledger_pb2.GetAccountResponse:
        """LedgerService.GetAccount."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.GetAccount is not built yet")

    async def ListAccounts(
        self,
        request: ledger_pb2.ListAccountsRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListAccountsRequest, ledger_pb2.ListAccountsResponse],
    ) -> ledger_pb2.ListAccountsResponse:
        """LedgerService.ListAccounts."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.ListAccounts is not built yet")

    async def CreateTransfer(
        self,
        request: ledger_pb2.CreateTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.CreateTransferRequest, ledger_pb2.CreateTransferResponse
        ],
    ) -> ledger_pb2.CreateTransferResponse:
        """LedgerService.CreateTransfer."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.CreateTransfer is not built yet")

    async def CreatePendingTransfer(
        self,
        request: ledger_pb2.CreatePendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.CreatePendingTransferRequest, ledger_pb2.CreatePendingTransferResponse
        ],
    ) -> ledger_pb2.CreatePendingTransferResponse:
        """LedgerService.CreatePendingTransfer."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "LedgerService.CreatePendingTransfer is not built yet"
        )

    async def PostPendingTransfer(
        self,
        request: ledger_pb2.PostPendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.PostPendingTransferRequest, ledger_pb2.PostPendingTransferResponse
        ],
    ) -> ledger_pb2.PostPendingTransferResponse:
        """LedgerService.PostPendingTransfer."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "LedgerService.PostPendingTransfer is not built yet"
        )

    async def VoidPendingTransfer(
        self,
        request: ledger_pb2.VoidPendingTransferRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.VoidPendingTransferRequest, ledger_pb2.VoidPendingTransferResponse
        ],
    ) -> ledger_pb2.VoidPendingTransferResponse:
        """LedgerService.VoidPendingTransfer."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "LedgerService.VoidPendingTransfer is not built yet"
        )

    async def GetTransfer(
        self,
        request: ledger_pb2.GetTransferRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.GetTransferRequest, ledger_pb2.GetTransferResponse],
    ) -> ledger_pb2.GetTransferResponse:
        """LedgerService.GetTransfer."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.GetTransfer is not built yet")

    async def ListTransfers(
        self,
        request: ledger_pb2.ListTransfersRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.ListTransfersRequest, ledger_pb2.ListTransfersResponse],
    ) -> ledger_pb2.ListTransfersResponse:
        """LedgerService.ListTransfers."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.ListTransfers is not built yet")

    async def WatchTransfers(
        self,
        request: ledger_pb2.WatchTransfersRequest,
        context: grpc.aio.ServicerContext[
            ledger_pb2.WatchTransfersRequest, ledger_pb2.WatchTransfersResponse
        ],
    ) -> AsyncIterator[Any]:
        """LedgerService.WatchTransfers."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.WatchTransfers is not built yet")
        yield  # an async generator, as the streaming signature requires

    async def Deposit(
        self,
        request: ledger_pb2.DepositRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.DepositRequest, ledger_pb2.DepositResponse],
    ) -> ledger_pb2.DepositResponse:
        """LedgerService.Deposit."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.Deposit is not built yet")

    async def Withdraw(
        self,
        request: ledger_pb2.WithdrawRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.WithdrawRequest, ledger_pb2.WithdrawResponse],
    ) -> ledger_pb2.WithdrawResponse:
        """LedgerService.Withdraw."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.Withdraw is not built yet")

    async def AuditLedger(
        self,
        request: ledger_pb2.AuditLedgerRequest,
        context: grpc.aio.ServicerContext[ledger_pb2.AuditLedgerRequest, ledger_pb2.AuditLedgerResponse],
    ) -> ledger_pb2.AuditLedgerResponse:
        """LedgerService.AuditLedger."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "LedgerService.AuditLedger is not built yet")
