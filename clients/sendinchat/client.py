"""A typed async client: login and token refresh, safe retries for money, a resumable chat stream."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from sendinchat.errors import ConflictError, UnauthenticatedError, UnavailableError, from_rpc_error
from sendinchat.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    users_pb2,
    users_pb2_grpc,
)

__all__ = ["ChatConnection", "Client"]

T = TypeVar("T")
Metadata = tuple[tuple[str, str], ...]

_RETRYABLE = (ConflictError, UnavailableError)
_EXPIRY_MARGIN_SECONDS = 5


class Client:
    """One channel to a SendInChat server with the caller's tokens.

    Use as `async with Client("127.0.0.1:50051") as client: await client.login(...)`.
    The raw generated stubs are `client.users`, `client.ledger` and `client.chat`.
    """

    def __init__(
        self,
        target: str,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        money_retries: int = 3,
    ) -> None:
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self.users = users_pb2_grpc.UserServiceStub(self._channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self._channel)
        self.tokens: users_pb2.TokenPair | None = None
        self._username: str | None = None
        self._money_retries = money_retries
        self._refresh_lock = asyncio.Lock()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self._channel.close(None)

    @property
    def metadata(self) -> Metadata:
        """The authorization metadata for the current access token."""
        if self.tokens is None:
            raise UnauthenticatedError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
        return (("authorization", f"Bearer {self.tokens.access_token}"),)

    # --- users -----------------------------------------------------------------------------

    async def register(self, username: str, password: str, display_name: str = "") -> users_pb2.User:
        """Create an account (does not log in)."""
        request = users_pb2.RegisterRequest(username=username, password=password, display_name=display_name)
        reply = await _translated(self.users.Register(request))
        return reply.user

    async def login(self, username: str, password: str) -> users_pb2.User:
        """Log in and keep the token pair for later calls."""
        reply = await _translated(
            self.users.Login(users_pb2.LoginRequest(username=username, password=password))
        )
        self.tokens = reply.tokens
        self._username = reply.user.username
        return reply.user

    async def logout(self, *, all_sessions: bool = False) -> int:
        """End this session (or every session of the user) and forget the tokens; how many ended."""
        request = users_pb2.LogoutRequest(all_sessions=all_sessions)
        reply = await self._authorized(lambda md: self.users.Logout(request, metadata=md))
        self.tokens = None
        return reply.ended_sessions

    async def change_password(self, old_password: str, new_password: str) -> None:
        """Change the password. Every session ends (this one too), so the client logs in again."""
        username = self._username or (await self.me()).username
        request = users_pb2.ChangePasswordRequest(old_password=old_password, new_password=new_password)
        await self._authorized(lambda md: self.users.ChangePassword(request, metadata=md))
        self.tokens = None
        await self.login(username, new_password)

    @property
    def access_token_expiring(self) -> bool:
        """True when the access token expires within the next few seconds."""
        if self.tokens is None or not self.tokens.HasField("access_token_expire_time"):
            return False
        return self.tokens.access_token_expire_time.ToSeconds() < time.time() + _EXPIRY_MARGIN_SECONDS

    async def refresh_if_stale(self, stale: users_pb2.TokenPair | None) -> None:
        """Refresh unless another task already replaced `stale` (refresh tokens work once)."""
        async with self._refresh_lock:
            if self.tokens is stale:
                await self.refresh()

    async def refresh(self) -> None:
        """Rotate the token pair."""
        if self.tokens is None:
            raise UnauthenticatedError(grpc.StatusCode.UNAUTHENTICATED, "not logged in")
        request = users_pb2.RefreshTokenRequest(refresh_token=self.tokens.refresh_token)
        self.tokens = (await _translated(self.users.RefreshToken(request))).tokens

    async def me(self) -> users_pb2.User:
        """The logged-in user."""
        reply = await self._authorized(lambda md: self.users.GetMe(users_pb2.GetMeRequest(), metadata=md))
        return reply.user

    # --- ledger ----------------------------------------------------------------------------

    async def transfer(
        self,
        *,
        to_username: str,
        currency: str,
        amount_minor: int,
        memo: str = "",
        request_id: str | None = None,
    ) -> ledger_pb2.Transfer:
        """Send money; retried with the same request_id on ABORTED/UNAVAILABLE, so it moves once."""
        request = ledger_pb2.CreateTransferRequest(
            request_id=request_id or str(uuid.uuid4()),
            to_username=to_username,
            currency=currency,
            amount_minor=amount_minor,
            memo=memo,
        )
        reply = await self._money(lambda md: self.ledger.CreateTransfer(request, metadata=md))
        return reply.transfer

    async def account(self, currency: str) -> ledger_pb2.Account:
        """The caller's account in a currency."""
        request = ledger_pb2.GetAccountRequest(currency=currency)
        reply = await self._authorized(lambda md: self.ledger.GetAccount(request, metadata=md))
        return reply.account

    # --- chat ------------------------------------------------------------------------------

    async def send_message(
        self, room_id: str, text: str, client_message_id: str | None = None
    ) -> chat_pb2.Message:
        """Post a text message; retried safely with the same client_message_id."""
        request = chat_pb2.SendMessageRequest(
            room_id=room_id, text=text, client_message_id=client_message_id or str(uuid.uuid4())
        )
        reply = await self._money(lambda md: self.chat.SendMessage(request, metadata=md))
        return reply.message

    async def rooms(self) -> list[chat_pb2.Room]:
        """The caller's rooms (first page, most recently active first)."""
        request = chat_pb2.ListRoomsRequest(page_size=100)
        reply = await self._authorized(lambda md: self.chat.ListRooms(request, metadata=md))
        return list(reply.rooms)

    def connect(self) -> ChatConnection:
        """A chat stream that remembers the last sequence of each room, for resuming."""
        return ChatConnection(self)

    # --- plumbing --------------------------------------------------------------------------

    async def _authorized(self, call: Callable[[Metadata], Awaitable[T]]) -> T:
        """Run a call with the access token, refreshing it once if it has expired."""
        tokens = self.tokens
        try:
            return await _translated(call(self.metadata))
        except UnauthenticatedError as exc:
            if tokens is None or exc.reason != "TOKEN_EXPIRED":
                raise
        await self.refresh_if_stale(tokens)
        return await _translated(call(self.metadata))

    async def _money(self, call: Callable[[Metadata], Awaitable[T]]) -> T:
        """Run an idempotent call, retrying retryable failures with backoff."""
        for attempt in range(self._money_retries + 1):
            try:
                return await self._authorized(call)
            except _RETRYABLE:
                if attempt == self._money_retries:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")


class ChatConnection:
    """One Connect stream. Iterate it for server events; call resume() after it breaks."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self.last_sequence: dict[str, int] = {}
        self._call: grpc.aio.StreamStreamCall[chat_pb2.ConnectRequest, chat_pb2.ConnectResponse] | None = None

    async def open(self) -> None:
        """Open the stream and resubscribe to every room seen so far, from its last sequence."""
        # No request iterator: grpc.aio then lets us write() frames as they come.
        self._call = self._client.chat.Connect(metadata=self._client.metadata)
        for room_id, sequence in self.last_sequence.items():
            await self.subscribe(room_id, after_sequence=sequence)

    async def resume(self) -> None:
        """Reopen after a disconnect, refreshing the access token first if it is (nearly) expired."""
        if self._call is not None:
            self._call.cancel()
        if self._client.access_token_expiring:
            await self._client.refresh_if_stale(self._client.tokens)
        await self.open()

    async def close(self) -> None:
        """Half-close and drop the stream."""
        if self._call is not None:
            await self._call.done_writing()
            self._call.cancel()

    async def subscribe(self, room_id: str, *, after_sequence: int = -1) -> None:
        """Receive a room: everything after after_sequence is replayed, then live messages.

        -1 means only new messages; the SubscribedEvent's last_sequence then becomes the point
        to resume from.
        """
        known = self.last_sequence.get(room_id, -1)
        self.last_sequence[room_id] = max(known, after_sequence)
        frame = chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=after_sequence)
        await self._write(chat_pb2.ConnectRequest(subscribe=frame))

    async def send(self, room_id: str, text: str, client_message_id: str | None = None) -> str:
        """Post a message; the AckEvent carries the returned client_message_id."""
        message_id = client_message_id or str(uuid.uuid4())
        frame = chat_pb2.SendFrame(room_id=room_id, text=text, client_message_id=message_id)
        await self._write(chat_pb2.ConnectRequest(send=frame))
        return message_id

    async def mark_read(self, room_id: str, sequence: int) -> None:
        """Move the read mark."""
        await self._write(
            chat_pb2.ConnectRequest(read=chat_pb2.ReadFrame(room_id=room_id, sequence=sequence))
        )

    async def typing(self, room_id: str) -> None:
        """Tell the room the caller is typing."""
        await self._write(chat_pb2.ConnectRequest(typing=chat_pb2.TypingFrame(room_id=room_id)))

    async def events(self) -> AsyncIterator[chat_pb2.ConnectResponse]:
        """Server events; typed errors are raised when the stream ends abnormally."""
        if self._call is None:
            await self.open()
        assert self._call is not None
        try:
            async for event in self._call:
                if event.HasField("message"):
                    room = event.message.room_id
                    self.last_sequence[room] = max(self.last_sequence.get(room, 0), event.message.sequence)
                elif event.HasField("subscribed") and self.last_sequence.get(event.subscribed.room_id) == -1:
                    self.last_sequence[event.subscribed.room_id] = event.subscribed.last_sequence
                yield event
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None

    async def _write(self, request: chat_pb2.ConnectRequest) -> None:
        if self._call is None:
            await self.open()
        assert self._call is not None
        await self._call.write(request)


async def _translated(call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc) from None
