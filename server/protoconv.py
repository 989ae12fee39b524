"""Conversions more than one area uses.

Timestamps both ways, the ledger Transfer (chat shows them), and a money-moving request (ledger
and chat payments).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

from google.protobuf import timestamp_pb2

from sendinchat.v1 import ledger_pb2
from server.ledger import rules
from server.ledger.models import Transfer


class MoneyRequest(Protocol):
    """The fields every money-moving request has (CreateTransfer, Deposit, SendPayment...)."""

    @property
    def request_id(self) -> str: ...
    @property
    def currency(self) -> str: ...
    @property
    def amount_minor(self) -> int: ...
    @property
    def memo(self) -> str: ...


def money(request: MoneyRequest, *, user_id: str | None, username: str | None = None) -> rules.Money:
    """What the request asks to move, with the other party as the caller read it from the request."""
    return rules.Money(
        request_id=request.request_id,
        user_id=user_id,
        username=username,
        currency=request.currency,
        amount=request.amount_minor,
        memo=request.memo,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
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


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for an aware datetime; None stays None (the field is left unset)."""
    if value is None:
        return None
    # Integer arithmetic: Timestamp.FromDatetime costs several times this on the hot paths.
    micros = (value - _EPOCH) // _MICROSECOND
    return timestamp_pb2.Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def from_timestamp(stamp: timestamp_pb2.Timestamp, present: bool) -> datetime | None:
    """The aware datetime of a Timestamp field (range-checked by server/boundary.py), or None if unset."""
    if not present:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def transfer_proto(transfer: Transfer) -> ledger_pb2.Transfer:
    """The wire form of a ledger Transfer."""
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
        create_time=timestamp(transfer.created_at),
        expire_time=timestamp(transfer.expires_at) if transfer.state == "pending" else None,
        resolve_time=timestamp(transfer.resolved_at),
        from_account_id=transfer.from_account_id if transfer.from_user_id else "",
        to_account_id=transfer.to_account_id if transfer.to_user_id else "",
    )
