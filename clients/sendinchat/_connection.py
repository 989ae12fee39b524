"""ChatConnection: the one Connect stream, resumed from each room's last sequence when it breaks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, Coroutine

import grpc

from sendinchat._base import ClientBase, backoff, cancelled_by_close, quiet_on_close
from sendinchat.errors import (
    RateLimitedError,
    SendInChatError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from sendinchat.v1 import chat_pb2

_Call = grpc.aio.StreamStreamCall[chat_pb2.ConnectRequest, chat_pb2.ConnectResponse]


class ChatConnection:
    """One Connect stream. Subscribe to rooms, write frames, and iterate events() for what comes.

    The connection remembers the last sequence of each subscribed room. When the stream ends
    with UNAVAILABLE (a server shutting down), RESOURCE_EXHAUSTED (too far behind) or an
    expired access token, events() reopens it (refreshing the token first) and resubscribes
    every room from its last sequence: the server replays what was missed, without gaps or
    duplicates. Frames written while the stream is down raise UnavailableError; the unary
    Client.send_message retries by itself.
    """

    def __init__(self, client: ClientBase, *, reconnect_attempts: int = 10) -> None:
        self._client = client
        self._reconnect_attempts = reconnect_attempts
        self.last_sequence: dict[str, int] = {}
        self._call: _Call | None = None
        self._tokens = client.tokens
        self._closing = False
        self._closed = asyncio.Event()  # close() was called: events() stops waiting for anything

    async def open(self) -> None:
        """Open the stream and subscribe to every room seen so far, from its last sequence.

        Raises:
            UnauthenticatedError: Not logged in, or the token refresh failed.
        """
        self._closing = False
        self._closed.clear()
        await self._open()

    async def resume(self) -> None:
        """Reopen after a disconnect (events() does this by itself), refreshing a stale token first.

        Raises:
            UnauthenticatedError: Not logged in, or the token refresh failed.
        """
        if self._call is not None:
            self._call.cancel()
        await self._open()

    @property
    def _ended(self) -> bool:
        """close() was called, on this connection or on its client."""
        return self._closing or self._client.closed

    async def _open(self) -> None:
        metadata = await self._client._fresh_metadata()
        if self._ended:  # closed while the token was refreshed
            return
        self._tokens = self._client.tokens
        # No request iterator: grpc.aio then lets us write() frames as they come.
        self._call = self._client.chat.Connect(metadata=metadata)
        for room_id, sequence in self.last_sequence.items():
            await self._write(_subscribe(room_id, sequence))

    async def _unless_closed(self, step: Coroutine[object, object, None]) -> bool:
        """Run `step` unless close() comes first, which cancels it; True when it finished.

        A refresh cancelled so is safe: the Client retries it later as the same request.
        """
        task = asyncio.ensure_future(step)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((task, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait((task,))  # unlike suppressing CancelledError, keeps a cancel of ours
        if task.cancelled():
            return False
        task.result()  # its error, if it failed
        return True

    async def close(self) -> None:
        """Half-close and drop the stream; events() then ends, also while it reconnects or refreshes."""
        self._closing = True
        self._closed.set()
        if self._call is not None:
            if not self._call.done():
                await self._call.done_writing()
            self._call.cancel()

    async def subscribe(self, room_id: str, *, after_sequence: int = -1) -> None:
        """Receive a room: everything after after_sequence is replayed, then live messages.

        Sends one SubscribeFrame (opening the stream first, if need be); the server answers
        with one SubscribedEvent.

        Args:
            room_id: The room's UUID.
            after_sequence: The last sequence the caller has: 0 replays the whole history, -1
                sends only new messages (the SubscribedEvent's last_sequence then becomes the
                point to resume from). For a room this connection follows already, the later of
                this and what it has received counts: nothing is delivered twice.

        Raises:
            UnavailableError: The stream is down.
            UnauthenticatedError: Not logged in.
        """
        self.last_sequence[room_id] = max(self.last_sequence.get(room_id, -1), after_sequence)
        if self._call is None:
            await self.open()  # subscribes to every known room, this one included
        else:
            await self._write(_subscribe(room_id, self.last_sequence[room_id]))

    async def unsubscribe(self, room_id: str) -> None:
        """Stop receiving a room (and stop resubscribing it).

        Args:
            room_id: The room's UUID.

        Raises:
            UnavailableError: The stream is down.
        """
        self.last_sequence.pop(room_id, None)
        frame = chat_pb2.UnsubscribeFrame(room_id=room_id)
        await self._write(chat_pb2.ConnectRequest(unsubscribe=frame))

    async def send(self, room_id: str, text: str, client_message_id: str | None = None) -> str:
        """Post a message; an AckEvent (or an ErrorEvent) with the returned id answers it.

        Args:
            room_id: The room's UUID.
            text: 1-4000 characters.
            client_message_id: 1-64 characters; sending again with it posts nothing new.

        Returns:
            The client_message_id, made for you when omitted.

        Raises:
            UnavailableError: The stream is down; send again with the same id once it is back.
        """
        message_id = client_message_id or str(uuid.uuid4())
        frame = chat_pb2.SendFrame(room_id=room_id, text=text, client_message_id=message_id)
        await self._write(chat_pb2.ConnectRequest(send=frame))
        return message_id

    async def mark_read(self, room_id: str, sequence: int) -> None:
        """Move the read mark (the room's members get a ReadReceiptEvent).

        Args:
            room_id: The room's UUID.
            sequence: Read up to and including this sequence.

        Raises:
            UnavailableError: The stream is down.
        """
        frame = chat_pb2.ReadFrame(room_id=room_id, sequence=sequence)
        await self._write(chat_pb2.ConnectRequest(read=frame))

    async def typing(self, room_id: str) -> None:
        """Tell the room the caller is typing.

        Args:
            room_id: The room's UUID.

        Raises:
            UnavailableError: The stream is down.
        """
        await self._write(chat_pb2.ConnectRequest(typing=chat_pb2.TypingFrame(room_id=room_id)))

    async def ping(self, nonce: str) -> None:
        """Ask for a PongEvent carrying nonce.

        Args:
            nonce: Echoed back.

        Raises:
            UnavailableError: The stream is down.
        """
        await self._write(chat_pb2.ConnectRequest(ping=chat_pb2.PingFrame(nonce=nonce)))

    async def events(self) -> AsyncGenerator[chat_pb2.ConnectResponse, None]:
        """Server events, across reconnections, until close() or an error that reconnecting cannot fix.

        Yields:
            Each ConnectResponse: messages, acks, per-frame errors, typing, presence, receipts.

        Raises:
            UnauthenticatedError: Not logged in, the session ended, or the refresh failed.
            UnavailableError: Still down after reconnect_attempts reconnections in a row.
            RateLimitedError: Still overflowing after reconnect_attempts reconnections in a row.
        """
        failures = 0
        reopen = False
        while not self._ended:
            call = None
            try:
                if reopen:
                    if not await self._unless_closed(self.resume()):
                        return
                elif self._call is None and not await self._unless_closed(self._open()):
                    return
                call = self._call
                if call is None or self._ended:
                    return
                async for event in call:
                    failures = 0
                    self._track(event)
                    yield event
                return
            except grpc.aio.AioRpcError as exc:
                if self._ended:
                    return
                if call is not None and call is not self._call:
                    reopen = False
                    continue  # resume() replaced the call: read the new one
                error: SendInChatError = from_rpc_error(exc)
            except UnavailableError as exc:  # reopening failed: the server is still down
                if self._ended:
                    return
                error = exc
            except asyncio.CancelledError:
                if cancelled_by_close(self._ended):
                    return
                raise
            with quiet_on_close(lambda: self._ended):
                if isinstance(error, UnauthenticatedError) and error.reason == "TOKEN_EXPIRED":
                    await self._unless_closed(self._client._refresh_if_stale(self._tokens))
                elif (
                    isinstance(error, UnavailableError | RateLimitedError)
                    and failures < self._reconnect_attempts
                ):
                    await self._unless_closed(asyncio.sleep(error.retry_after_seconds or backoff(failures)))
                    failures += 1
                else:
                    raise error
            reopen = True

    def _track(self, event: chat_pb2.ConnectResponse) -> None:
        kind = event.WhichOneof("event")
        if kind == "message":
            room = event.message.room_id
            if room in self.last_sequence:
                self.last_sequence[room] = max(self.last_sequence[room], event.message.sequence)
        elif kind == "subscribed" and self.last_sequence.get(event.subscribed.room_id) == -1:
            self.last_sequence[event.subscribed.room_id] = event.subscribed.last_sequence
        elif kind == "error" and event.error.code == chat_pb2.ERROR_CODE_NOT_FOUND and event.error.room_id:
            self.last_sequence.pop(event.error.room_id, None)  # not (or no longer) a member

    async def _write(self, request: chat_pb2.ConnectRequest) -> None:
        if self._call is None:
            await self.open()
        assert self._call is not None
        try:
            await self._call.write(request)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc) from None
        except asyncio.InvalidStateError:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, "the chat stream has ended; events() reopens it"
            ) from None


def _subscribe(room_id: str, after_sequence: int) -> chat_pb2.ConnectRequest:
    return chat_pb2.ConnectRequest(
        subscribe=chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=after_sequence)
    )
