"""Chat test helpers: rooms in one call, and a Connect client with a concurrent reader."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import grpc

from sendinchat.v1 import chat_pb2
from tests.helpers import Account, lock_waiters, signed_up, waiting_on_a_lock

WAIT = 10.0


async def group(stubs: Any, owner: Account, *members: Account, name: str = "team") -> chat_pb2.Room:
    """A group room owned by `owner` with `members`."""
    reply = await stubs.chat.CreateRoom(
        chat_pb2.CreateRoomRequest(
            kind=chat_pb2.ROOM_KIND_GROUP, name=name, member_user_ids=[m.id for m in members]
        ),
        metadata=owner.auth,
    )
    room: chat_pb2.Room = reply.room
    return room


async def watched_group(stubs: Any) -> tuple[Account, Account, chat_pb2.Room, Stream]:
    """Alice's group with Bob, and Bob's Connect stream subscribed to it from the start."""
    alice, bob = await signed_up(stubs), await signed_up(stubs)
    room = await group(stubs, alice, bob)
    stream = Stream(stubs, bob)
    await stream.subscribe(room.id, 0)
    return alice, bob, room, stream


@contextlib.asynccontextmanager
async def room_locked(server: Any, room_id: str) -> AsyncIterator[asyncpg.Connection]:
    """Another connection holds the room's lock until the block ends."""
    holder = await asyncpg.connect(server.database_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM rooms WHERE id = $1 FOR UPDATE", room_id)
            yield holder
    finally:
        await holder.close()


async def flood_into_locked_room(
    server: Any, room_id: str, call: Callable[[int], Awaitable[Any]], count: int
) -> tuple[int, list[Any]]:
    """Make `count` calls `call(i)` at once into the locked room, and check other rooms are served.

    Returns how many backends waited for the room's lock, and the calls' outcomes (errors too).
    """
    owner, member = await signed_up(server.stubs), await signed_up(server.stubs)
    async with room_locked(server, room_id) as holder:
        calls = asyncio.gather(*(call(i) for i in range(count)), return_exceptions=True)
        await waiting_on_a_lock(holder)
        await asyncio.sleep(0.2)  # every call has reached the server
        waiting = len(await lock_waiters(holder))
        # The pool is not exhausted: the other rooms' calls are answered meanwhile.
        other = await asyncio.wait_for(group(server.stubs, owner, member, name="elsewhere"), WAIT)
        await asyncio.wait_for(say(server.stubs, member, other.id, "still served"), WAIT)
    return waiting, await asyncio.wait_for(calls, WAIT)


async def say(
    stubs: Any, who: Account, room_id: str, text: str, client_message_id: str = ""
) -> chat_pb2.Message:
    """Send a text message through the unary RPC."""
    reply = await stubs.chat.SendMessage(
        chat_pb2.SendMessageRequest(room_id=room_id, text=text, client_message_id=client_message_id),
        metadata=who.auth,
    )
    message: chat_pb2.Message = reply.message
    return message


class Stream:
    """One Connect stream; a reader task collects every server frame in arrival order."""

    def __init__(self, stubs: Any, account: Account) -> None:
        self.call: grpc.aio.StreamStreamCall[chat_pb2.ConnectRequest, chat_pb2.ConnectResponse] = (
            stubs.chat.Connect(metadata=account.auth)
        )
        self.frames: asyncio.Queue[chat_pb2.ConnectResponse] = asyncio.Queue()
        self.error: grpc.aio.AioRpcError | None = None
        self.ended = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for frame in self.call:
                await self.frames.put(frame)
        except grpc.aio.AioRpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    async def write(self, **frame: Any) -> None:
        """Send one client frame given as a keyword: ping=chat_pb2.PingFrame(nonce="x")."""
        await self.call.write(chat_pb2.ConnectRequest(**frame))

    async def subscribe(self, room_id: str, after_sequence: int = 0) -> chat_pb2.SubscribedEvent:
        """Subscribe and wait for the confirmation (frames before it are dropped)."""
        await self.write(subscribe=chat_pb2.SubscribeFrame(room_id=room_id, after_sequence=after_sequence))
        return (await self.next_of("subscribed")).subscribed

    async def next(self) -> chat_pb2.ConnectResponse:
        """The next server frame."""
        return await asyncio.wait_for(self.frames.get(), WAIT)

    async def next_of(self, kind: str) -> chat_pb2.ConnectResponse:
        """The next frame of one kind, skipping others (presence, typing, receipts)."""
        while True:
            frame = await self.next()
            if frame.WhichOneof("event") == kind:
                return frame

    async def messages(self, count: int) -> list[chat_pb2.Message]:
        """The next `count` message frames, skipping other kinds."""
        return [(await self.next_of("message")).message for _ in range(count)]

    async def wait_ended(self) -> grpc.aio.AioRpcError | None:
        """Wait for the stream to end; its error, or None if it ended OK."""
        await asyncio.wait_for(self.ended.wait(), WAIT)
        return self.error

    async def close(self) -> None:
        """Cancel the call and the reader."""
        self.call.cancel()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
