"""One Connect stream: client frames in, a bounded queue of server frames out.

A reader task handles the client's frames one at a time; the session's own loop writes. Both
the hub's live items and the reader's answers go through one bounded queue; the memory a stream
holds is the queue (shared message objects), one replay page, and what waits outside the queue
(below: a sequence per room, a notice per room, the latest state event per room, user and kind).

Per room the writer keeps the last sequence it sent, which makes delivery exact: it skips what
it already sent, and on a gap it reads the missing messages from the database first. A
subscription is registered with the hub *before* its replay is read, so nothing committed in
between can fall through; the replay runs when the writer reaches it in the queue, and live
items queued behind it are then filtered by that last sequence.

The same rule lets a stream fall behind without losing anything or holding more. Messages and
state events take at most half the queue; past that:
- a live message is not queued but remembered as the room's point to read up to, and the
  writer reads it back from the table a page at a time when the queue has room again;
- a read receipt, presence or typing event is kept only as the latest per room, user and kind
  (each says how things are now), and queued when there is room.
The other half is for the answers to the client's own frames (acks, errors, pongs,
subscriptions) and for the notices that a room is gone. An answer that finds the queue full (or
notices waiting) waits, so a client that sends without reading is held back by its own stream; a
notice waits outside the queue, one per room.
A burst, or a client reading slowly, thus costs reads, not the stream. A slow consumer is one
more than `max_behind` messages behind a room it follows live, or one that takes none of its
frames while more than `max_behind` messages and events arrive for it (a client stuck in a
replay): its stream ends with RESOURCE_EXHAUSTED, and it resumes from its last sequence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from sendinchat.v1 import chat_pb2
from server import boundary
from server.chat import convert, frame_errors, messages
from server.chat.feed import LiveMessage
from server.chat.hub import ChatHub
from server.chat.models import MessageKind
from server.chat.typing_throttle import TypingThrottle
from server.db.pool import Pool
from server.errors import InvalidArgumentError, NotFoundError, RateLimitedError
from server.validation import parse_uuid

_REPLAY_PAGE = 100
_EVERYTHING = 2**62
_OVERFLOW_RETRY_SECONDS = 1.0

log = logging.getLogger(__name__)

# Bytes are a ConnectResponse serialized already (a live message's frame, shared by every stream).
Write = Callable[[chat_pb2.ConnectResponse | bytes], Awaitable[None]]


@dataclass(eq=False)
class _Subscription:
    room_id: str
    last_sent: int
    live: bool = False


@dataclass(frozen=True, slots=True)
class _Replay:
    subscription: _Subscription
    last_sequence: int


@dataclass(frozen=True, slots=True)
class _CatchUp:
    """Read a room's messages up to `upto` from the table: they were not queued (the stream was behind)."""

    subscription: _Subscription
    upto: int


_Item = LiveMessage | chat_pb2.ConnectResponse | _Replay | _CatchUp


_STATES = frozenset({"read_receipt", "typing", "presence"})


def _is_state(frame: chat_pb2.ConnectResponse) -> bool:
    return frame.WhichOneof("event") in _STATES


def _state_key(state: chat_pb2.ConnectResponse) -> tuple[str, str, str]:
    """What a state event is about: its kind, room and user (a later one replaces it)."""
    kind = state.WhichOneof("event") or ""
    event = getattr(state, kind, None)
    return kind, getattr(event, "room_id", ""), getattr(event, "user_id", "")


class ConnectSession:
    """The server side of one Connect stream for one authenticated user."""

    def __init__(
        self, *, pool: Pool, hub: ChatHub, user_id: str, buffer: int, max_behind: int, write: Write
    ) -> None:
        self._pool = pool
        self._hub = hub
        self._user_id = user_id
        self._write_to_client = write
        self._max_behind = max_behind
        self._arrived_untaken = 0  # messages and events offered since the client last took a frame
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=buffer)
        self._half = max(1, buffer // 2)  # past this the stream is behind: see the module's docstring
        self._room_to_answer = asyncio.Event()
        self._behind: dict[str, int] = {}  # room id → the last sequence offered but not queued
        self._latest_states: dict[tuple[str, str, str], chat_pb2.ConnectResponse] = {}
        self._notices: dict[str, chat_pb2.ConnectResponse] = {}  # room id → "the room is gone" error
        self._subscriptions: dict[str, _Subscription] = {}
        self._typing_throttle = TypingThrottle()
        self._overflowed = asyncio.Event()
        self._reader_done = asyncio.Event()

    @property
    def user_id(self) -> str:
        """Who is connected."""
        return self._user_id

    def offer(self, item: LiveMessage | chat_pb2.ConnectResponse) -> None:
        """Take a message or a state event (receipt, presence, typing) for the client; never blocks.

        Behind (messages and states fill half the queue), a message is read back from the table
        later and a state event waits as the latest of its kind. A slow consumer ends: more than
        `max_behind` messages behind a room it follows live, or taking none of its frames while
        more than `max_behind` messages and events arrive for it.
        """
        self._arrived_untaken += 1
        if self._arrived_untaken > self._max_behind:
            self._overflow(f"took nothing while {self._arrived_untaken} messages and events arrived")
            return
        if isinstance(item, LiveMessage):
            subscription = self._subscriptions.get(item.room_id)
            if subscription is None:
                return
            if subscription.live and item.sequence - subscription.last_sent > self._max_behind:
                self._overflow(f"over {self._max_behind} messages behind in room {item.room_id}")
            elif self._queue.qsize() < self._half:
                self._put(item)
            else:
                self._fall_behind(item.room_id, item.sequence)
            return
        key = _state_key(item)
        if key in self._latest_states or self._queue.qsize() >= self._half:
            self._latest_states[key] = item  # an older one still waiting must not arrive after it
        else:
            self._put(item)

    def drop_room(self, room_id: str) -> None:
        """The user left or was removed: nothing more of the room is sent, even if queued."""
        if room_id in self._subscriptions:
            self._unfollow(room_id)
            self._notify(
                room_id,
                frame_errors.event(
                    grpc.StatusCode.NOT_FOUND, "no longer a member of the room", room_id=room_id
                ),
            )

    def _unfollow(self, room_id: str) -> None:
        """Stop following a room: no more of its events come, and nothing that waits for it is sent."""
        self._subscriptions.pop(room_id, None)
        self._hub.unsubscribe(room_id, self)
        self._behind.pop(room_id, None)
        for key in [key for key in self._latest_states if key[1] == room_id]:
            del self._latest_states[key]

    def _notify(self, room_id: str, notice: chat_pb2.ConnectResponse) -> None:
        """Queue a notice that a room is gone from the stream, or keep it for when there is room."""
        if self._notices or self._queue.full():
            self._notices[room_id] = notice
        else:
            self._put(notice)

    def _put(self, item: _Item) -> None:
        if self._overflowed.is_set():
            return
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:  # every caller checks for room first; a bug if it comes here
            self._overflow(f"its queue of {self._queue.maxsize} frames is full")

    async def _answer(self, item: _Item) -> None:
        """Queue the answer to a client's frame, waiting while the queue is full (or notices wait)."""
        while (self._queue.full() or self._notices) and not self._overflowed.is_set():
            self._room_to_answer.clear()
            await self._room_to_answer.wait()
        self._put(item)

    def _overflow(self, why: str) -> None:
        log.info("chat stream of user %s ends: %s", self._user_id, why)
        self._overflowed.set()
        self._room_to_answer.set()
        self._leave_hub()  # stop accepting work at once; the queue is released with the session

    def _leave_hub(self) -> None:
        for room_id in list(self._subscriptions):
            self._hub.unsubscribe(room_id, self)
        self._subscriptions.clear()

    async def run(self, requests: AsyncIterator[chat_pb2.ConnectRequest]) -> None:
        """Serve the stream until the client stops sending, overflows, or this task is cancelled.

        Raises:
            RateLimitedError: a slow consumer (took nothing while over max_behind messages arrived).
        """
        reader = asyncio.create_task(self._read(requests))
        writer = asyncio.create_task(self._write_loop())
        overflow = asyncio.create_task(self._overflowed.wait())
        drained = asyncio.create_task(self._drained())
        tasks = (reader, writer, overflow, drained)
        try:
            await self._first_of(reader, writer, overflow)
            # The client is done sending: no new live events; deliver what is queued, then end OK.
            for room_id in self._subscriptions:
                self._hub.unsubscribe(room_id, self)
            self._reader_done.set()
            await self._first_of(drained, writer, overflow)
        finally:
            self._leave_hub()
            for task in tasks:
                task.cancel()
            # Ending (cancelled, shut down, or the client went away): a write to a finished call
            # fails, and that failure is not news; whatever ended the stream is what propagates.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _first_of(self, *tasks: asyncio.Task[Any]) -> None:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if self._overflowed.is_set():
            raise RateLimitedError(
                "the stream fell too far behind; reconnect and resubscribe from the last sequence",
                retry_after_seconds=_OVERFLOW_RETRY_SECONDS,
            )
        for task in done:
            task.result()  # errors propagate

    async def _drained(self) -> None:
        await self._reader_done.wait()
        await self._queue.join()

    async def _read(self, requests: AsyncIterator[chat_pb2.ConnectRequest | boundary.Unparsable]) -> None:
        async for request in requests:
            # Each frame gets its own answer; nothing one frame does ends the stream.
            try:
                if isinstance(request, boundary.Unparsable):
                    raise request.error()
                boundary.check(request)
                await self._handle(request)
            except Exception as exc:
                await self._answer(frame_errors.answer(exc, request))

    async def _handle(self, request: chat_pb2.ConnectRequest) -> None:
        frame = request.WhichOneof("frame")
        if frame == "subscribe":
            await self._subscribe(request.subscribe)
        elif frame == "unsubscribe":
            room_id = parse_uuid(request.unsubscribe.room_id, "room_id")
            if room_id in self._subscriptions:
                self._unfollow(room_id)
        elif frame == "send":
            await self._send(request.send)
        elif frame == "typing":
            await self._typing(request.typing.room_id)
        elif frame == "read":
            await messages.mark_read(
                self._pool,
                user_id=self._user_id,
                room_id=request.read.room_id,
                sequence=request.read.sequence,
                bus=self._hub.bus,
            )
        elif frame == "ping":
            await self._answer(chat_pb2.ConnectResponse(pong=chat_pb2.PongEvent(nonce=request.ping.nonce)))
        else:
            raise InvalidArgumentError.field("frame", "the frame is empty")

    async def _typing(self, room_id: str) -> None:
        room_id = parse_uuid(room_id, "room_id")  # junk is refused before it is remembered
        throttle = self._typing_throttle
        if throttle.refused(room_id):
            raise NotFoundError(messages.NOT_FOUND)  # a repeat gets the first answer, unasked
        if throttle.due(room_id):
            try:
                await messages.announce_typing(
                    self._pool, user_id=self._user_id, room_id=room_id, bus=self._hub.bus
                )
            except NotFoundError:
                throttle.refuse(room_id)
                raise

    async def _subscribe(self, frame: chat_pb2.SubscribeFrame) -> None:
        if frame.after_sequence < -1:
            raise InvalidArgumentError.field("after_sequence", "must be -1 or more")
        room_id = parse_uuid(frame.room_id, "room_id")
        # Register before checking membership: a removal that commits after the check then
        # reaches this subscription through the hub, and one that committed before fails the check.
        subscription = _Subscription(room_id, last_sent=0)
        self._subscriptions[room_id] = subscription
        self._notices.pop(room_id, None)  # this subscribe's own answer says where the room stands
        self._hub.subscribe(room_id, self)
        try:
            # The room's events must reach this process before the replay's end is fixed (on NATS,
            # its subscription takes a round trip to the server).
            await self._hub.following(room_id)
            last = await messages.room_position(self._pool, user_id=self._user_id, room_id=room_id)
        except Exception:
            if self._subscriptions.get(room_id) is subscription:
                self._unfollow(room_id)
            raise
        if self._subscriptions.get(room_id) is not subscription:
            return  # removed (and told so) or unsubscribed meanwhile
        self._hub.confirm(room_id, self, last)
        subscription.last_sent = last if frame.after_sequence == -1 else min(frame.after_sequence, last)
        await self._answer(_Replay(subscription, last))

    async def _send(self, frame: chat_pb2.SendFrame) -> None:
        message = await self._hub.send_message(
            user_id=self._user_id,
            room_id=frame.room_id,
            client_message_id=frame.client_message_id,
            text=frame.text,
            stream=True,
        )
        ack = chat_pb2.AckEvent(
            client_message_id=frame.client_message_id, room_id=message.room_id, sequence=message.sequence
        )
        await self._answer(chat_pb2.ConnectResponse(ack=ack))

    def _lose(self, subscription: _Subscription, exc: Exception) -> None:
        """A room's history could not be read: drop the room and tell the client to subscribe again."""
        if self._subscriptions.get(subscription.room_id) is subscription:
            self._unfollow(subscription.room_id)
        error = frame_errors.answer(
            exc, chat_pb2.ConnectRequest(subscribe=chat_pb2.SubscribeFrame(room_id=subscription.room_id))
        )
        error.error.message += "; subscribe again from the last sequence"
        self._notify(subscription.room_id, error)

    async def _write_loop(self) -> None:
        while True:
            item = await self._queue.get()
            if isinstance(item, LiveMessage):
                await self._deliver(item)
            elif isinstance(item, _Replay):
                await self._replay(item)
            elif isinstance(item, _CatchUp):
                await self._read_back(item)
            elif not _is_state(item) or _state_key(item)[1] in self._subscriptions:
                await self._write(item)  # but no state event of a room the stream has left
            self._refill()  # before task_done: the stream is not drained while it is behind
            self._queue.task_done()
            self._room_to_answer.set()

    async def _write(self, frame: chat_pb2.ConnectResponse | bytes) -> None:
        await self._write_to_client(frame)
        self._arrived_untaken = 0

    def _refill(self) -> None:
        """Queue what waits outside the queue while there is room: notices; read-backs and states."""
        while self._notices and not self._queue.full():
            self._queue.put_nowait(self._notices.pop(next(iter(self._notices))))
        while self._behind and self._queue.qsize() < self._half:
            room_id = next(iter(self._behind))
            upto = self._behind.pop(room_id)
            subscription = self._subscriptions.get(room_id)
            if subscription is not None:
                self._queue.put_nowait(_CatchUp(subscription, upto))
        while self._latest_states and self._queue.qsize() < self._half:
            key = next(iter(self._latest_states))
            state = self._latest_states.pop(key)
            if key[1] in self._subscriptions:  # not for a room the user has left meanwhile
                self._queue.put_nowait(state)

    async def _read_back(self, item: _CatchUp) -> None:
        subscription = item.subscription
        if self._subscriptions.get(subscription.room_id) is not subscription or not subscription.live:
            return  # gone, or its replay (still to come) reads everything
        if item.upto > subscription.last_sent and await self._send_page(subscription, upto=item.upto):
            self._fall_behind(subscription.room_id, item.upto)  # the rest after what waits now

    def _fall_behind(self, room_id: str, upto: int) -> None:
        self._behind[room_id] = max(upto, self._behind.get(room_id, 0))

    async def _deliver(self, item: LiveMessage) -> None:
        subscription = self._subscriptions.get(item.room_id)
        if subscription is None or not subscription.live or item.sequence <= subscription.last_sent:
            return
        if item.sequence > subscription.last_sent + 1:
            if item.sequence - 1 - subscription.last_sent > _REPLAY_PAGE:
                self._fall_behind(item.room_id, item.sequence)  # read back a page at a time
                return
            await self._send_page(subscription, upto=item.sequence - 1)
            if self._subscriptions.get(item.room_id) is not subscription:
                return
        await self._write(item.frame)
        subscription.last_sent = item.sequence

    async def _replay(self, replay: _Replay) -> None:
        subscription = replay.subscription
        if self._subscriptions.get(subscription.room_id) is not subscription:
            return  # unsubscribed or resubscribed meanwhile
        subscribed = chat_pb2.SubscribedEvent(
            room_id=subscription.room_id, last_sequence=replay.last_sequence
        )
        await self._write(chat_pb2.ConnectResponse(subscribed=subscribed))
        # The whole history before the answers to later frames: a ping after a subscribe is
        # answered after its replay.
        while await self._send_page(subscription, upto=_EVERYTHING):
            pass
        subscription.live = True

    async def _send_page(self, subscription: _Subscription, *, upto: int) -> bool:
        """Send the room's next page of messages up to `upto`; True when it was full (more may follow)."""
        try:
            page = await messages.messages_after(
                self._pool,
                room_id=subscription.room_id,
                after=subscription.last_sent,
                upto=upto,
                limit=_REPLAY_PAGE,
            )
            # A member leaves or is removed only in a commit that also appends a SYSTEM message: a
            # page holding one is sent only up to it unless the user is still a member (a removal
            # whose event has not arrived, or never will, stops it there).
            removed = any(m.kind == MessageKind.SYSTEM for m in page) and bool(
                await messages.not_members(self._pool, [(subscription.room_id, self._user_id)])
            )
        except Exception as exc:  # the subscription is lost, not the stream
            self._lose(subscription, exc)
            return False
        for message in page:
            if self._subscriptions.get(subscription.room_id) is not subscription:
                return False
            if message.kind == MessageKind.SYSTEM and removed:
                self.drop_room(subscription.room_id)
                return False
            await self._write(convert.connect_message(message))
            subscription.last_sent = message.sequence
        return len(page) == _REPLAY_PAGE
