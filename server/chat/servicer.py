"""ChatService: placeholder answering UNIMPLEMENTED until its issue lands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from sendinchat.v1 import chat_pb2, chat_pb2_grpc


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """Every RPC of ChatService answers UNIMPLEMENTED for now."""

    async def CreateRoom(
        self,
        request: chat_pb2.CreateRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.CreateRoomRequest, chat_pb2.CreateRoomResponse],
    ) -> chat_pb2.CreateRoomResponse:
        """ChatService.CreateRoom."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.CreateRoom is not built yet")

    async def GetRoom(
        self,
        request: chat_pb2.GetRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.GetRoomRequest, chat_pb2.GetRoomResponse],
    ) -> chat_pb2.GetRoomResponse:
        """ChatService.GetRoom."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.GetRoom is not built yet")

    async def ListRooms(
        self,
        request: chat_pb2.ListRoomsRequest,
        context: grpc.aio.ServicerContext[chat_pb2.ListRoomsRequest, chat_pb2.ListRoomsResponse],
    ) -> chat_pb2.ListRoomsResponse:
        """ChatService.ListRooms."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.ListRooms is not built yet")

    async def AddMembers(
        self,
        request: chat_pb2.AddMembersRequest,
        context: grpc.aio.ServicerContext[chat_pb2.AddMembersRequest, chat_pb2.AddMembersResponse],
    ) -> chat_pb2.AddMembersResponse:
        """ChatService.AddMembers."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.AddMembers is not built yet")

    async def RemoveMember(
        self,
        request: chat_pb2.RemoveMemberRequest,
        context: grpc.aio.ServicerContext[chat_pb2.RemoveMemberRequest, chat_pb2.RemoveMemberResponse],
    ) -> chat_pb2.RemoveMemberResponse:
        """ChatService.RemoveMember."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.RemoveMember is not built yet")

    async def LeaveRoom(
        self,
        request: chat_pb2.LeaveRoomRequest,
        context: grpc.aio.ServicerContext[chat_pb2.LeaveRoomRequest, chat_pb2.LeaveRoomResponse],
    ) -> chat_pb2.LeaveRoomResponse:
        """ChatService.LeaveRoom."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.LeaveRoom is not built yet")

    async def SendMessage(
        self,
        request: chat_pb2.SendMessageRequest,
        context: grpc.aio.ServicerContext[chat_pb2.SendMessageRequest, chat_pb2.SendMessageResponse],
    ) -> chat_pb2.SendMessageResponse:
        """ChatService.SendMessage."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.SendMessage is not built yet")

    async def ListMessages(
        self,
        request: chat_pb2.ListMessagesRequest,
        context: grpc.aio.ServicerContext[chat_pb2.ListMessagesRequest, chat_pb2.ListMessagesResponse],
    ) -> chat_pb2.ListMessagesResponse:
        """ChatService.ListMessages."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.ListMessages is not built yet")

    async def MarkRead(
        self,
        request: chat_pb2.MarkReadRequest,
        context: grpc.aio.ServicerContext[chat_pb2.MarkReadRequest, chat_pb2.MarkReadResponse],
    ) -> chat_pb2.MarkReadResponse:
        """ChatService.MarkRead."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.MarkRead is not built yet")

    async def SendPayment(
        self,
        request: chat_pb2.SendPaymentRequest,
        context: grpc.aio.ServicerContext[chat_pb2.SendPaymentRequest, chat_pb2.SendPaymentResponse],
    ) -> chat_pb2.SendPaymentResponse:
        """ChatService.SendPayment."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.SendPayment is not built yet")

    async def RequestPayment(
        self,
        request: chat_pb2.RequestPaymentRequest,
        context: grpc.aio.ServicerContext[chat_pb2.RequestPaymentRequest, chat_pb2.RequestPaymentResponse],
    ) -> chat_pb2.RequestPaymentResponse:
        """ChatService.RequestPayment."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.RequestPayment is not built yet")

    async def RespondToPaymentRequest(
        self,
        request: chat_pb2.RespondToPaymentRequestRequest,
        context: grpc.aio.ServicerContext[
            chat_pb2.RespondToPaymentRequestRequest, chat_pb2.RespondToPaymentRequestResponse
        ],
    ) -> chat_pb2.RespondToPaymentRequestResponse:
        """ChatService.RespondToPaymentRequest."""
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "ChatService.RespondToPaymentRequest is not built yet"
        )

    async def Connect(
        self,
        request_iterator: AsyncIterator[chat_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[chat_pb2.ConnectRequest, chat_pb2.ConnectResponse],
    ) -> AsyncIterator[Any]:
        """ChatService.Connect."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "ChatService.Connect is not built yet")
        yield  # an async generator, as the streaming signature requires
