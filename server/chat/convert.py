"""Chat domain values to protobuf messages (used by the servicer, the stream and the hub)."""

from __future__ import annotations

from sendinchat.v1 import chat_pb2, ledger_pb2
from server.chat.models import Member, MemberRole, Message, MessageKind, RequestState, Room, RoomKind
from server.protoconv import timestamp, transfer_proto

ROOM_KINDS = {RoomKind.DIRECT: chat_pb2.ROOM_KIND_DIRECT, RoomKind.GROUP: chat_pb2.ROOM_KIND_GROUP}
ROOM_KINDS_FROM_PROTO = {v: k for k, v in ROOM_KINDS.items()}
_ROLES = {MemberRole.OWNER: chat_pb2.MEMBER_ROLE_OWNER, MemberRole.MEMBER: chat_pb2.MEMBER_ROLE_MEMBER}
_KINDS = {
    MessageKind.TEXT: chat_pb2.MESSAGE_KIND_TEXT,
    MessageKind.PAYMENT: chat_pb2.MESSAGE_KIND_PAYMENT,
    MessageKind.PAYMENT_REQUEST: chat_pb2.MESSAGE_KIND_PAYMENT_REQUEST,
    MessageKind.SYSTEM: chat_pb2.MESSAGE_KIND_SYSTEM,
}
_STATES = {
    RequestState.OPEN: chat_pb2.PAYMENT_REQUEST_STATE_OPEN,
    RequestState.PAID: chat_pb2.PAYMENT_REQUEST_STATE_PAID,
    RequestState.DECLINED: chat_pb2.PAYMENT_REQUEST_STATE_DECLINED,
    RequestState.CANCELLED: chat_pb2.PAYMENT_REQUEST_STATE_CANCELLED,
    RequestState.EXPIRED: chat_pb2.PAYMENT_REQUEST_STATE_EXPIRED,
}


def message(value: Message) -> chat_pb2.Message:
    """A Message (a PAYMENT whose transfer was not read carries only the transfer id)."""
    proto = chat_pb2.Message(
        room_id=value.room_id,
        sequence=value.sequence,
        sender_user_id=value.sender_id or "",
        client_message_id=value.client_message_id or "",
        kind=_KINDS[value.kind],
        text=value.body,
        create_time=timestamp(value.created_at),
    )
    if value.transfer_id is not None:
        proto.payment.CopyFrom(
            chat_pb2.PaymentInfo(
                transfer=(
                    ledger_pb2.Transfer(id=value.transfer_id)
                    if value.transfer is None
                    else transfer_proto(value.transfer)
                ),
                memo=value.note or "",
            )
        )
    request = value.payment_request
    if request is not None:
        proto.payment_request.CopyFrom(
            chat_pb2.PaymentRequestInfo(
                id=request.id,
                to_user_id=request.requester_id,
                from_user_id=request.payer_id,
                currency=request.currency,
                amount_minor=request.amount_minor,
                memo=request.note,
                state=_STATES[request.state],
                expire_time=timestamp(request.expire_at),
                transfer_id=request.transfer_id or "",
            )
        )
    return proto


def connect_message(value: Message) -> chat_pb2.ConnectResponse:
    """A stream frame carrying a message."""
    return chat_pb2.ConnectResponse(message=message(value))


def member(value: Member) -> chat_pb2.RoomMember:
    """A RoomMember."""
    return chat_pb2.RoomMember(
        user_id=value.user_id,
        username=value.username,
        role=_ROLES[value.role],
        last_read_sequence=value.last_read_sequence,
        join_time=timestamp(value.joined_at),
    )


def room(value: Room) -> chat_pb2.Room:
    """A Room as the caller sees it."""
    return chat_pb2.Room(
        id=value.id,
        kind=ROOM_KINDS[value.kind],
        name=value.name,
        members=[member(m) for m in value.members],
        create_time=timestamp(value.created_at),
        last_sequence=value.last_sequence,
        last_message=None if value.last_message is None else message(value.last_message),
        unread_count=value.unread_count,
    )
