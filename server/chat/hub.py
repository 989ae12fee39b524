"""In-process fan-out of chat events to the live streams, fed by the chat bus (server/chat/bus.py).

The bus (PostgreSQL LISTEN/NOTIFY by default, or NATS) hands the hub the events of the rooms this
process's streams follow (server/chat/events.py has them). An event is only a wake-up: for a new
message in room R the hub reads R's new rows from the messages table once, builds and serializes
each ConnectResponse once, and offers the same bytes to every local subscriber of R. A message
sent through this process is handed over by its sender after commit (`stored`): when it is the
next one the hub is due to offer, it goes out at once, without that read; and a wake-up that
arrives while such sends are in flight waits for them before reading (only for those: later
sends do not hold it further). Offers never block; each stream has its own bounded queue and
ends itself when it overflows. Because the table is the log, a lost event delays delivery but
loses nothing: after the bus reconnects (and, on NATS, every few seconds) the hub compares each
followed room's newest sequence with what it has read, in one query per thousand rooms, and
reads what it lacks (the periodic round checks at most PERIODIC_ROOMS_PER_SECOND rooms a
second); streams fill any gap they see.
Presence is recorded by server/chat/presence.py, told by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from sendinchat.v1 import chat_pb2
from server.chat import convert, events, messages
from server.chat.bus import QUIET_SETTING, ChatBus
from server.chat.models import Message
from server.chat.presence import Presence
from server.db import errors as db_errors

_FETCH_LIMIT = 100
_POSITIONS_BATCH = 1000  # rooms per catch-up query
PERIODIC_ROOMS_PER_SECOND = 5000  # the periodic catch-up's most (one index lookup each)
_NOTIFIES = "SELECT chat_notifies()"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """A stored message on its way to the streams; one object shared by every subscriber.

    `frame` is its ConnectResponse, serialized once for all of them (Connect's response serializer
    passes bytes through: server/interceptor.py).
    """

    room_id: str
    sequence: int
    frame: bytes

    @classmethod
    def of(cls, message: Message) -> LiveMessage:
        """The frame of a stored message."""
        return cls(message.room_id, message.sequence, convert.connect_message(message).SerializeToString())


class Subscriber(Protocol):
    """What the hub needs from a stream."""

    @property
    def user_id(self) -> str:
        """Who is connected."""
        ...

    def offer(self, item: LiveMessage | chat_pb2.ConnectResponse) -> None:
        """Queue an item without blocking (a full queue ends the stream)."""
        ...

    def drop_room(self, room_id: str) -> None:
        """The user is no longer a member of the room: stop sending it at once."""
        ...


@dataclass(eq=False)
class _Feed:
    room_id: str
    subscribers: set[Subscriber] = field(default_factory=set)
    present: set[Subscriber] = field(default_factory=set)  # subscribers whose membership was checked
    fetched: int | None = None  # highest sequence read and offered; None until the first wake-up
    wanted: int = 0
    task: asyncio.Task[None] | None = None
    sends: set[int] = field(default_factory=set)  # tickets of this process's sends in flight
    hold_until: int = 0  # a read waits for the sends with tickets up to this one (they may bring it)


class ChatHub:
    """Room subscriptions of this process's streams and the bus that feeds them."""

    def __init__(self, pool: asyncpg.Pool, bus: ChatBus) -> None:
        self._pool = pool
        self.bus = bus
        self._feeds: dict[str, _Feed] = {}
        self._catching_up: asyncio.Task[None] | None = None
        self._catch_up_again = False
        self._periodic: asyncio.Task[None] | None = None
        self._tickets = 0
        self.presence = Presence(pool, self._present, bus)

    async def start(self) -> None:
        """Connect the bus, join the replicas; returns once events of followed rooms arrive."""
        if not self.bus.notifies_in_database and await self._pool.fetchval(_NOTIFIES):
            # Harmless to delivery (nothing listens), but every chat commit still takes NOTIFY's lock.
            log.warning(
                "chat bus %s: this pool's transactions still NOTIFY chat events; connect them with %s=off",
                self.bus.name,
                QUIET_SETTING,
            )
        await self.bus.start(self._on_event, self._resync)
        await self.presence.start()
        if self.bus.catch_up_seconds is not None:
            self._periodic = asyncio.create_task(self._catch_up_every(self.bus.catch_up_seconds))

    async def run_until_cancelled(self) -> None:
        """Wait, then stop() when cancelled (as the server's background tasks are on shutdown)."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop the feeds and presence (its users leave their rooms, told on the bus), then the bus."""
        feeds = [f.task for f in self._feeds.values()]
        tasks = [t for t in (self._periodic, self._catching_up, *feeds) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.presence.stop()
        await self.bus.stop()

    def subscribe(self, room_id: str, subscriber: Subscriber) -> None:
        """Start offering the room's events to a stream (membership is confirmed separately)."""
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = self._feeds[room_id] = _Feed(room_id)
            self.bus.follow(room_id)
        feed.subscribers.add(subscriber)

    async def following(self, room_id: str) -> None:
        """Return once the room's events published from now on reach this process (bounded wait)."""
        await self.bus.following(room_id)

    def confirm(self, room_id: str, subscriber: Subscriber, last_sequence: int) -> None:
        """The stream's membership was checked and the room was at `last_sequence` then.

        The user counts as present in the room, and the feed follows the room from there on
        (what came before is the stream's replay), also across a listener reconnect.
        """
        feed = self._feeds.get(room_id)
        if feed is None or subscriber not in feed.subscribers or subscriber in feed.present:
            return
        if feed.fetched is None:
            feed.fetched = last_sequence
        online = not any(s.user_id == subscriber.user_id for s in feed.present)
        feed.present.add(subscriber)
        if online:
            self.presence.announce(room_id, subscriber.user_id, online=True)

    def unsubscribe(self, room_id: str, subscriber: Subscriber) -> None:
        """Stop offering the room's events to a stream."""
        feed = self._feeds.get(room_id)
        if feed is None or subscriber not in feed.subscribers:
            return
        feed.subscribers.discard(subscriber)
        if subscriber in feed.present:
            feed.present.discard(subscriber)
            if not any(s.user_id == subscriber.user_id for s in feed.present):
                self.presence.announce(room_id, subscriber.user_id, online=False)
        if not feed.subscribers:
            if feed.task is not None:
                feed.task.cancel()
            del self._feeds[room_id]
            self.bus.unfollow(room_id)

    def _present(self) -> set[tuple[str, str]]:
        return {(feed.room_id, s.user_id) for feed in self._feeds.values() for s in feed.present}

    def _resync(self) -> None:
        # After a reconnect: what the bus carried meanwhile is gone, the log is not.
        self._request_catch_up()

    async def _catch_up_every(self, seconds: float) -> None:
        # Round robin over the followed rooms, at most PERIODIC_ROOMS_PER_SECOND of them: a replica
        # following many rooms costs the database a bounded read rate, and a lost publish waits
        # at most max(seconds, rooms followed / PERIODIC_ROOMS_PER_SECOND) for its round.
        due: list[str] = []
        per_round = max(1, int(PERIODIC_ROOMS_PER_SECOND * seconds))
        while True:
            await asyncio.sleep(seconds)
            if not due:
                due = self._followed()
            batch, due = due[:per_round], due[per_round:]
            try:
                await self._check(batch)
            except Exception as exc:  # the loop must outlive any one failure; the next round retries
                log.warning(
                    "chat hub could not check its rooms' positions (%r)",
                    exc,
                    exc_info=not db_errors.is_transient(exc),
                )

    def _request_catch_up(self) -> None:
        self._catch_up_again = True
        if self._catching_up is None:
            self._catching_up = asyncio.create_task(self._catch_up_while_asked())

    async def _catch_up_while_asked(self) -> None:
        try:
            while self._catch_up_again:
                self._catch_up_again = False
                try:
                    await self._check(self._followed())
                except Exception as exc:
                    if not db_errors.is_transient(exc):
                        raise
                    log.warning("chat hub could not check its rooms' positions (%r); retrying", exc)
                    self._catch_up_again = True
                    await asyncio.sleep(1.0)
        finally:
            self._catching_up = None

    def _followed(self) -> list[str]:
        return [feed.room_id for feed in self._feeds.values() if feed.fetched is not None]

    async def _check(self, rooms: list[str]) -> None:
        """Read what the rooms' logs have beyond what was offered (one query per thousand rooms)."""
        for start in range(0, len(rooms), _POSITIONS_BATCH):
            positions = await messages.room_positions(self._pool, rooms[start : start + _POSITIONS_BATCH])
            for room_id, last in positions.items():
                feed = self._feeds.get(room_id)
                if feed is not None and feed.fetched is not None:
                    self._want(feed, last)

    def _on_event(self, event: events.ChatEvent) -> None:
        feed = self._feeds.get(event.room_id)
        if feed is None:
            return
        match event:
            case events.MessageStored(sequence=sequence):
                if feed.fetched is None:
                    # No subscriber is confirmed yet: what came before is their replay's business.
                    feed.fetched = sequence - 1
                self._want(feed, sequence)
            case events.MemberRemoved(user_id=user_id):
                for subscriber in [s for s in feed.subscribers if s.user_id == user_id]:
                    self.unsubscribe(feed.room_id, subscriber)
                    subscriber.drop_room(feed.room_id)
            case events.ReadMarked(room_id, user_id, sequence):
                receipt = chat_pb2.ReadReceiptEvent(room_id=room_id, user_id=user_id, sequence=sequence)
                self._offer_all(feed, chat_pb2.ConnectResponse(read_receipt=receipt), skip_user=None)
            case events.Typing(room_id, user_id):
                typing = chat_pb2.TypingEvent(room_id=room_id, user_id=user_id)
                self._offer_all(feed, chat_pb2.ConnectResponse(typing=typing), skip_user=user_id)
            case events.PresenceChanged(room_id, user_id, online):
                presence = chat_pb2.PresenceEvent(room_id=room_id, user_id=user_id, online=online)
                self._offer_all(feed, chat_pb2.ConnectResponse(presence=presence), skip_user=user_id)

    @staticmethod
    def _offer_all(feed: _Feed, item: chat_pb2.ConnectResponse, *, skip_user: str | None) -> None:
        for subscriber in tuple(feed.present):
            if subscriber.user_id != skip_user:
                subscriber.offer(item)

    @contextlib.contextmanager
    def sending(self, room_id: str) -> Iterator[None]:
        """Around a send of this process to the room, which ends with `stored` when it commits."""
        feed = self._feeds.get(room_id)
        if feed is None:
            yield
            return
        self._tickets += 1
        ticket = self._tickets
        feed.sends.add(ticket)
        try:
            yield
        finally:
            feed.sends.discard(ticket)
            self._read_if_due(feed)

    def stored(self, message: Message) -> None:
        """A message this process stored has committed: offer it now if it is the room's next one.

        Otherwise (an earlier message is not offered yet, or a read is under way that may bring
        it) this is only a wake-up, like the bus's event that follows.
        """
        feed = self._feeds.get(message.room_id)
        if feed is None or feed.fetched is None:
            return
        if message.sequence == feed.fetched + 1:
            feed.fetched = message.sequence
            self._offer_message(feed, LiveMessage.of(message))
        else:
            self._want(feed, message.sequence)

    @staticmethod
    def _offer_message(feed: _Feed, item: LiveMessage) -> None:
        for subscriber in tuple(feed.subscribers):
            subscriber.offer(item)

    def _want(self, feed: _Feed, sequence: int) -> None:
        assert feed.fetched is not None
        if sequence <= max(feed.fetched, feed.wanted):
            return
        feed.wanted = sequence
        if not self._held(feed):
            # The sends in flight now may bring what is wanted; the ones after them hold nothing.
            feed.hold_until = max(feed.sends, default=0)
        self._read_if_due(feed)

    @staticmethod
    def _held(feed: _Feed) -> bool:
        return any(ticket <= feed.hold_until for ticket in feed.sends)

    def _read_if_due(self, feed: _Feed) -> None:
        if feed.task is not None or feed.fetched is None or feed.wanted <= feed.fetched or self._held(feed):
            return
        if self._feeds.get(feed.room_id) is feed:
            feed.task = asyncio.create_task(self._pump(feed))

    async def _pump(self, feed: _Feed) -> None:
        # One reader per room: wake-ups that arrive while it reads only raise `wanted`.
        try:
            while feed.fetched is not None and feed.wanted > feed.fetched and feed.subscribers:
                batch = await messages.messages_after(
                    self._pool, room_id=feed.room_id, after=feed.fetched, upto=feed.wanted, limit=_FETCH_LIMIT
                )
                if not batch:
                    feed.wanted = feed.fetched
                    break
                for message in batch:
                    if message.sequence > feed.fetched:  # not handed over by `stored` meanwhile
                        feed.fetched = message.sequence
                        self._offer_message(feed, LiveMessage.of(message))
        except Exception as exc:
            if not db_errors.is_transient(exc):
                raise
            # Subscribers notice the gap on the next message and read it themselves.
            log.warning("chat hub could not read room %s (%r)", feed.room_id, exc)
        finally:
            feed.task = None
