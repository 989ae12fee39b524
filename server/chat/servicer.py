"""ChatService: transport for chat's domain modules.

CreateRoom, GetRoom, ListRooms: server/chat/rooms.py. AddMembers, RemoveMember, LeaveRoom:
server/chat/members.py.
SendMessage, ListMessages, MarkRead: server/chat/messages.py (the message log); SendMessage goes
through server/chat/hub.py, which hands the stored message to this process's streams.
SendPayment, RequestPayment, RespondToPaymentRequest: server/chat/payments.py.
Connect: server/chat/stream.py (one session per stream), fed by server/chat/hub.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import cast

import grpc

from sendinchat.v1 import chat_pb2, chat_pb2_grpc, ledger_pb2
from server.auth.principal import current_principal
from server.chat import convert, members, messages, payments, rooms
from server.chat.hub import ChatHub
from server.chat.stream import ConnectSession, Write
from server.db.pool import Pool
from server.protoconv import from_timestamp, money, transfer_proto
from server.streams import StreamQuota

_ACTIONS = {
    chat_pb2.PAYMENT_REQUEST_ACTION_ACCEPT: payments.RequestAction.ACCEPT,
    chat_pb2.PAYMENT_REQUEST_ACTION_DECLINE: payments.RequestAction.DECLINE,
    chat_pb2.PAYMENT_REQUEST_ACTION_CANCEL: payments.RequestAction.CANCEL,
}


def _transfer(result: payments.PaymentResult) -> ledger_pb2.Transfer | None:
    return None if result.transfer is None else transfer_proto(result.transfer)


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Rooms, messages, the Connect stream and payments in chat."""

    def __init__(self, pool: Pool, hub: ChatHub, *, stream_buffer: int, stream_max_behind: int) -> None:
        self._pool = pool
        self._hub = hub
        self._stream_buffer = stream_buffer
        self._stream_max_behind = stream_max_behind
        self._streams = StreamQuota("Connect")

    async def CreateRoom(
        self,
        request: chat_pb2.CreateRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.CreateRoomRequest, chat_pb2.CreateRoomResponse],
    ) -> chat_pb2.CreateRoomResponse:
        """ChatService.CreateRoom."""
        room, created = await rooms.create_room(
            self._pool,
            user_id=current_principal().user_id,
            kind=convert.ROOM_KINDS_FROM_PROTO.get(request.kind),
            name=request.name,
            member_ids=list(request.member_user_ids),
        )
        return chat_pb2.CreateRoomResponse(room=convert.room(room), created=created)

    async def GetRoom(
        self,
        request: chat_pb2.GetRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.GetRoomRequest, chat_pb2.GetRoomResponse],
    ) -> chat_pb2.GetRoomResponse:
        """ChatService.GetRoom."""
        room = await rooms.get_room(self._pool, user_id=current_principal().user_id, room_id=request.room_id)
        return chat_pb2.GetRoomResponse(room=convert.room(room))

    async def ListRooms(
        self,
        request: chat_pb2.ListRoomsRequest,
        context: grpc.aio.ServicerContext[chat_pb2.ListRoomsRequest, chat_pb2.ListRoomsResponse],
    ) -> chat_pb2.ListRoomsResponse:
        """ChatService.ListRooms."""
        page = await rooms.list_rooms(
            self._pool,
            user_id=current_principal().user_id,
            page_size=request.page_size,
            page_token=request.page_token,
        )
        return chat_pb2.ListRoomsResponse(
            rooms=[convert.room(r) for r in page.rooms], next_page_token=page.next_page_token
        )

    async def AddMembers(
        self,
        request: chat_pb2.AddMembersRequest,
        context: grpc.aio.ServicerContext[chat_pb2.AddMembersRequest, chat_pb2.AddMembersResponse],
    ) -> chat_pb2.AddMembersResponse:
        """ChatService.AddMembers."""
        async with self._hub.turns.of(request.room_id):
            room = await members.add_members(
                self._pool,
                user_id=current_principal().user_id,
                room_id=request.room_id,
                member_ids=list(request.user_ids),
                bus=self._hub.bus,
            )
        return chat_pb2.AddMembersResponse(room=convert.room(room))

    async def RemoveMember(
        self,
        request: chat_pb2.RemoveMemberRequest,
        context: grpc.aio.ServicerContext[chat_pb2.RemoveMemberRequest, chat_pb2.RemoveMemberResponse],
    ) -> chat_pb2.RemoveMemberResponse:
        """ChatService.RemoveMember."""
        async with self._hub.turns.of(request.room_id):
            room = await members.remove_member(
                self._pool,
                user_id=current_principal().user_id,
                room_id=request.room_id,
                member_id=request.user_id,
                bus=self._hub.bus,
            )
        return chat_pb2.RemoveMemberResponse(room=convert.room(room))

    async def LeaveRoom(
        self,
        request: chat_pb2.LeaveRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.LeaveRoomRequest, chat_pb2.LeaveRoomResponse],
    ) -> chat_pb2.LeaveRoomResponse:
        """ChatService.LeaveRoom."""
        async with self._hub.turns.of(request.room_id):
            await members.leave_room(
                self._pool, user_id=current_principal().user_id, room_id=request.room_id, bus=self._hub.bus
            )
        return chat_pb2.LeaveRoomResponse()

    async def SendMessage(
        self,
        request: chat_pb2.SendMessageRequest,
        context: grpc.aio.ServicerContext[chat_pb2.SendMessageRequest, chat_pb2.SendMessageResponse],
    ) -> chat_pb2.SendMessageResponse:
        """ChatService.SendMessage."""
        message = await self._hub.send_message(
            user_id=current_principal().user_id,
            room_id=request.room_id,
            client_message_id=request.client_message_id,
            text=request.text,
        )
        return chat_pb2.SendMessageResponse(message=convert.message(message))

    async def ListMessages(
        self,
        request: chat_pb2.ListMessagesRequest,
        context: grpc.aio.ServicerContext[chat_pb2.ListMessagesRequest, chat_pb2.ListMessagesResponse],
    ) -> chat_pb2.ListMessagesResponse:
        """ChatService.ListMessages."""
        page = await messages.list_messages(
            self._pool,
            user_id=current_principal().user_id,
            room_id=request.room_id,
            page_size=request.page_size,
            page_token=request.page_token,
            before_sequence=request.before_sequence,
            after_sequence=request.after_sequence,
        )
        return chat_pb2.ListMessagesResponse(
            messages=[convert.message(m) for m in page.messages], next_page_token=page.next_page_token
        )

    async def MarkRead(
        self,
        request: chat_pb2.MarkReadRequest,
        context: grpc.aio.ServicerContext[chat_pb2.MarkReadRequest, chat_pb2.MarkReadResponse],
    ) -> chat_pb2.MarkReadResponse:
        """ChatService.MarkRead."""
        mark = await messages.mark_read(
            self._pool,
            user_id=current_principal().user_id,
            room_id=request.room_id,
            sequence=request.sequence,
            bus=self._hub.bus,
        )
        return chat_pb2.MarkReadResponse(last_read_sequence=mark)

    async def SendPayment(
        self,
        request: chat_pb2.SendPaymentRequest,
        context: grpc.aio.ServicerContext[chat_pb2.SendPaymentRequest, chat_pb2.SendPaymentResponse],
    ) -> chat_pb2.SendPaymentResponse:
        """ChatService.SendPayment."""
        async with self._hub.turns.of(request.room_id):
            result = await payments.send_payment(
                self._pool,
                user_id=current_principal().user_id,
                room_id=request.room_id,
                money=money(request, user_id=request.to_user_id),
                bus=self._hub.bus,
            )
        return chat_pb2.SendPaymentResponse(
            message=convert.message(result.message), transfer=_transfer(result)
        )

    async def RequestPayment(
        self,
        request: chat_pb2.RequestPaymentRequest,
        context: grpc.aio.ServicerContext[chat_pb2.RequestPaymentRequest, chat_pb2.RequestPaymentResponse],
    ) -> chat_pb2.RequestPaymentResponse:
        """ChatService.RequestPayment."""
        async with self._hub.turns.of(request.room_id):
            result = await payments.request_payment(
                self._pool,
                user_id=current_principal().user_id,
                room_id=request.room_id,
                money=money(request, user_id=request.from_user_id),
                expire_at=from_timestamp(request.expire_time, request.HasField("expire_time")),
                bus=self._hub.bus,
            )
        return chat_pb2.RequestPaymentResponse(message=convert.message(result.message))

    async def RespondToPaymentRequest(
        self,
        request: chat_pb2.RespondToPaymentRequestRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.RespondToPaymentRequestRequest, chat_pb2.RespondToPaymentRequestResponse
        ],
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """ChatService.RespondToPaymentRequest."""
        room_id = await payments.room_of_request(self._pool, request.payment_request_id)
        async with self._hub.turns.of(room_id) if room_id else contextlib.nullcontext():
            result = await payments.respond_to_payment_request(
                self._pool,
                user_id=current_principal().user_id,
                request_id=request.request_id,
                payment_request_id=request.payment_request_id,
                action=_ACTIONS.get(request.action),
                bus=self._hub.bus,
            )
        return chat_pb2.RespondToPaymentRequestResponse(
            message=convert.message(result.message), transfer=_transfer(result)
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[chat_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[chat_pb2.ConnectRequest, chat_pb2.ConnectResponse],
    ) -> AsyncIterator[chat_pb2.ConnectResponse]:
        """ChatService.Connect."""
        user_id = current_principal().user_id
        # Connect's response serializer passes bytes through (server/interceptor.py), so the session
        # may write a frame serialized once for every stream.
        write = cast(Write, context.write)
        session = ConnectSession(
            pool=self._pool,
            hub=self._hub,
            user_id=user_id,
            buffer=self._stream_buffer,
            max_behind=self._stream_max_behind,
            write=write,
        )
        with self._streams.held(user_id):
            # The session writes through context.write from its own loop, so that an overflowing
            # queue can end the stream even while a write waits on a client that does not read.
            await session.run(request_iterator)
        return
        yield  # an async generator, as the streaming signature requires
