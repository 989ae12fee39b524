"""Chat domain values (frozen dataclasses) and how rows bind to them."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

import asyncpg

from server.db.records import bind
from server.ledger.models import Transfer


class RoomKind(StrEnum):
    """rooms.kind."""

    DIRECT = "direct"
    GROUP = "group"


class MemberRole(StrEnum):
    """room_members.role."""

    OWNER = "owner"
    MEMBER = "member"


class MessageKind(StrEnum):
    """messages.kind."""

    TEXT = "text"
    PAYMENT = "payment"
    PAYMENT_REQUEST = "payment_request"
    SYSTEM = "system"


class RequestState(StrEnum):
    """payment_requests.state (and messages.request_state: the state a message shows)."""

    OPEN = "open"
    PAID = "paid"
    DECLINED = "declined"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


# Every query that returns messages selects these, from `messages m LEFT JOIN payment_requests pr`.
MESSAGE_COLUMNS = """
m.room_id::text AS room_id, m.sequence, m.sender_id::text AS sender_id, m.client_message_id, m.kind,
m.body, m.created_at, m.transfer_id::text AS transfer_id, m.note, m.request_state AS pr_state,
pr.id::text AS pr_id, pr.requester_id::text AS pr_requester_id, pr.payer_id::text AS pr_payer_id,
pr.currency AS pr_currency, pr.amount_minor AS pr_amount_minor, pr.note AS pr_note,
pr.expire_at AS pr_expire_at,
CASE WHEN m.request_state = 'paid' THEN pr.transfer_id::text END AS pr_transfer_id
"""


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """A payment request as one message shows it (state as of that message)."""

    id: str
    requester_id: str
    payer_id: str
    currency: str
    amount_minor: int
    note: str
    state: RequestState
    expire_at: datetime | None
    transfer_id: str | None


@dataclass(frozen=True, slots=True)
class Message:
    """One entry of a room's log."""

    room_id: str
    sequence: int
    sender_id: str | None
    client_message_id: str | None
    kind: MessageKind
    body: str
    created_at: datetime
    transfer_id: str | None = None
    note: str | None = None
    payment_request: PaymentRequest | None = None
    transfer: Transfer | None = None  # the PAYMENT's transfer, once read (messages.attach_transfers)

    @classmethod
    def from_record(cls, row: asyncpg.Record) -> Message:
        """Bind a row selected with MESSAGE_COLUMNS."""
        message = bind(cls, row)
        if row["pr_id"] is None:
            return message
        return replace(message, payment_request=bind(PaymentRequest, row, prefix="pr_"))


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a room."""

    user_id: str
    username: str
    role: MemberRole
    last_read_sequence: int
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class Room:
    """A room as one member sees it."""

    id: str
    kind: RoomKind
    name: str
    created_at: datetime
    last_sequence: int
    members: tuple[Member, ...]
    last_message: Message | None
    unread_count: int


@dataclass(frozen=True, slots=True)
class RoomPage:
    """One page of ListRooms."""

    rooms: tuple[Room, ...]
    next_page_token: str


@dataclass(frozen=True, slots=True)
class MessagePage:
    """One page of ListMessages."""

    messages: tuple[Message, ...]
    next_page_token: str
