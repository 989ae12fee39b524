"""LedgerService on the Client, moving money: transfers now or in two phases, deposits, withdrawals."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sendinchat._base import ClientBase, one_key, request_id_or_new, timestamp
from sendinchat.v1 import ledger_pb2


class _ToParty(Protocol):
    to_user_id: str
    to_username: str


def _with_recipient(request: _ToParty, user_id: str, username: str) -> None:
    if one_key(to_user_id=user_id, to_username=username) == "to_user_id":
        request.to_user_id = user_id
    else:
        request.to_username = username


class MoneyMixin(ClientBase):
    """The LedgerService RPCs that move money, one method each (snake_case of the RPC's name).

    Each takes an optional request_id; without one a UUID is made, and ABORTED or UNAVAILABLE
    is retried with that same id, so money moves once however often it is retried.
    """

    async def create_transfer(
        self,
        *,
        to_username: str = "",
        to_user_id: str = "",
        currency: str,
        amount_minor: int,
        memo: str = "",
        request_id: str | None = None,
    ) -> ledger_pb2.Transfer:
        """Send money to another user now.

        Args:
            to_username: The recipient's username (or give to_user_id).
            to_user_id: The recipient's UUID (or give to_username).
            currency: ISO-4217 code.
            amount_minor: Minor units, 1 to 10**15 (250 is 2.50 USD).
            memo: Optional free text, at most 256 characters.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The posted transfer (the first one, when request_id was used before for the same body).

        Raises:
            ValueError: Neither or both of to_username and to_user_id were given.
            InvalidArgumentError: Amount <= 0, bad currency or request_id, memo too long, or the
                recipient is the caller.
            NotFoundError: No such recipient.
            InsufficientFundsError: Not enough available balance (also when the caller has no account).
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id_or_new(request_id), currency=currency, amount_minor=amount_minor, memo=memo
        )
        _with_recipient(request, to_user_id, to_username)
        reply = await self._idempotent(lambda md: self.ledger.CreateTransfer(request, metadata=md))
        return reply.transfer

    async def create_pending_transfer(
        self,
        *,
        to_username: str = "",
        to_user_id: str = "",
        currency: str,
        amount_minor: int,
        memo: str = "",
        expire_time: datetime | None = None,
        request_id: str | None = None,
    ) -> ledger_pb2.Transfer:
        """Reserve money for another user, to post (possibly for less) or void later.

        Args:
            to_username: The recipient's username (or give to_user_id).
            to_user_id: The recipient's UUID (or give to_username).
            currency: ISO-4217 code.
            amount_minor: Minor units to reserve, 1 to 10**15.
            memo: Optional free text, at most 256 characters.
            expire_time: When the reservation lapses (aware datetime, at most 365 days ahead);
                None: never.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The transfer in state PENDING.

        Raises:
            ValueError: Neither or both of to_username and to_user_id were given.
            InvalidArgumentError: As create_transfer, or an expiry in the past or too far ahead.
            NotFoundError: No such recipient.
            InsufficientFundsError: Not enough available balance.
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.CreatePendingTransferRequest(
            request_id=request_id_or_new(request_id), currency=currency, amount_minor=amount_minor, memo=memo
        )
        if expire_time is not None:
            request.expire_time.CopyFrom(timestamp(expire_time))
        _with_recipient(request, to_user_id, to_username)
        reply = await self._idempotent(lambda md: self.ledger.CreatePendingTransfer(request, metadata=md))
        return reply.transfer

    async def post_pending_transfer(
        self, transfer_id: str, *, amount_minor: int = 0, request_id: str | None = None
    ) -> ledger_pb2.Transfer:
        """Settle a pending transfer the caller sent, in full or for less (the rest is released).

        Args:
            transfer_id: The pending transfer's id.
            amount_minor: 1 up to the reserved amount; 0 posts the full amount.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The transfer in state POSTED.

        Raises:
            InvalidArgumentError: Amount out of range or bad ids.
            NotFoundError: No such transfer of the caller's.
            PermissionDeniedError: The caller is the recipient (only the sender posts).
            FailedPreconditionError: reason TRANSFER_NOT_PENDING or TRANSFER_EXPIRED.
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.PostPendingTransferRequest(
            request_id=request_id_or_new(request_id), transfer_id=transfer_id, amount_minor=amount_minor
        )
        reply = await self._idempotent(lambda md: self.ledger.PostPendingTransfer(request, metadata=md))
        return reply.transfer

    async def void_pending_transfer(
        self, transfer_id: str, *, request_id: str | None = None
    ) -> ledger_pb2.Transfer:
        """Release a pending transfer (either party may).

        Args:
            transfer_id: The pending transfer's id.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The transfer in state VOIDED.

        Raises:
            InvalidArgumentError: Bad ids.
            NotFoundError: No such transfer of the caller's.
            FailedPreconditionError: reason TRANSFER_NOT_PENDING.
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.VoidPendingTransferRequest(
            request_id=request_id_or_new(request_id), transfer_id=transfer_id
        )
        reply = await self._idempotent(lambda md: self.ledger.VoidPendingTransfer(request, metadata=md))
        return reply.transfer

    async def deposit(
        self,
        *,
        to_username: str = "",
        to_user_id: str = "",
        currency: str,
        amount_minor: int,
        memo: str = "",
        request_id: str | None = None,
    ) -> ledger_pb2.Transfer:
        """Mint money into a user's account from the system account (admins only).

        Args:
            to_username: The recipient's username (or give to_user_id).
            to_user_id: The recipient's UUID (or give to_username).
            currency: ISO-4217 code.
            amount_minor: Minor units, 1 to 10**15.
            memo: Optional free text, at most 256 characters.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The transfer: kind DEPOSIT, state POSTED.

        Raises:
            ValueError: Neither or both of to_username and to_user_id were given.
            InvalidArgumentError: A bad amount, currency, memo or request_id.
            NotFoundError: No such user.
            PermissionDeniedError: The caller is not an admin.
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.DepositRequest(
            request_id=request_id_or_new(request_id), currency=currency, amount_minor=amount_minor, memo=memo
        )
        _with_recipient(request, to_user_id, to_username)
        reply = await self._idempotent(lambda md: self.ledger.Deposit(request, metadata=md))
        return reply.transfer

    async def withdraw(
        self,
        *,
        from_username: str = "",
        from_user_id: str = "",
        currency: str,
        amount_minor: int,
        memo: str = "",
        request_id: str | None = None,
    ) -> ledger_pb2.Transfer:
        """Burn money from a user's account into the system account (admins only).

        Args:
            from_username: The owner's username (or give from_user_id).
            from_user_id: The owner's UUID (or give from_username).
            currency: ISO-4217 code.
            amount_minor: Minor units, 1 to 10**15.
            memo: Optional free text, at most 256 characters.
            request_id: A UUID that makes retries safe; made for you when omitted.

        Returns:
            The transfer: kind WITHDRAWAL, state POSTED.

        Raises:
            ValueError: Neither or both of from_username and from_user_id were given.
            InvalidArgumentError: A bad amount, currency, memo or request_id.
            NotFoundError: No such user.
            PermissionDeniedError: The caller is not an admin.
            InsufficientFundsError: The user has less than amount_minor available.
            IdempotencyKeyReusedError: request_id was used for a different request.
            ConflictError: Still conflicting after the retries; retry with the same request_id.
            UnavailableError: Still unavailable after the retries; retry with the same request_id.
            UnauthenticatedError: Not logged in, or the session ended.
        """
        request = ledger_pb2.WithdrawRequest(
            request_id=request_id_or_new(request_id), currency=currency, amount_minor=amount_minor, memo=memo
        )
        if one_key(from_user_id=from_user_id, from_username=from_username) == "from_user_id":
            request.from_user_id = from_user_id
        else:
            request.from_username = from_username
        reply = await self._idempotent(lambda md: self.ledger.Withdraw(request, metadata=md))
        return reply.transfer
