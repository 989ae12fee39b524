"""In-process fan-out of chat events to the live streams, fed by the chat bus (server/chat/bus.py).

The bus (PostgreSQL LISTEN/NOTIFY by default, or NATS) hands the hub the events of the rooms this
process's streams follow (server/chat/events.py has them). An event is only a wake-up: for a new
message in room R the room's feed (server/chat/feed.py) reads R's new rows from the messages table
once and offers each frame, serialized once, to every local subscriber of R; a message sent through
this process is handed to its feed by the sender after commit (`stored`). Offers never block; each
stream has its own bounded queue (server/chat/stream.py: a stream that falls behind reads messages
back from the table, and ends itself when it falls too far behind). Because the table is the log, a
lost event delays delivery but loses nothing: after the bus reconnects (and, on NATS, every few
seconds) the hub compares each followed room's newest sequence with what it has read, in one query
per thousand rooms, and reads what it lacks (the periodic round checks at most
PERIODIC_ROOMS_PER_SECOND rooms a second); streams fill any gap they see. Nor is an event trusted:
a wake-up's sequence only says how far to read (the table says what there is), and a stream loses
a room only once the table says its user is no longer a member.
Presence is recorded by server/chat/presence.py, told by the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg

from sendinchat.v1 import chat_pb2
from server.chat import events, messages
from server.chat import validation as rules
from server.chat.bus import QUIET_SETTING, ChatBus
from server.chat.feed import RoomFeed, Subscriber
from server.chat.models import Message
from server.chat.presence import Presence
from server.chat.sending import MessageSender
from server.chat.turns import RoomTurns
from server.db import errors as db_errors
from server.tasks import cancel_and_wait

_POSITIONS_BATCH = 1000  # rooms per catch-up query
PERIODIC_ROOMS_PER_SECOND = 5000  # the periodic catch-up's most (one index lookup each)
_NOTIFIES = "SELECT chat_notifies()"

log = logging.getLogger(__name__)


class ChatHub:
    """Room subscriptions of this process's streams and the bus that feeds them."""

    def __init__(self, pool: asyncpg.Pool, bus: ChatBus) -> None:
        self._pool = pool
        self.bus = bus
        self._sender = MessageSender(pool, bus)
        self.turns = RoomTurns()
        self._feeds: dict[str, RoomFeed] = {}
        self._catching_up: asyncio.Task[None] | None = None
        self._catch_up_again = False
        self._periodic: asyncio.Task[None] | None = None
        self._removal_checks: dict[tuple[str, str], asyncio.Task[None]] = {}
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
        readers = [feed.close() for feed in self._feeds.values()]
        checks = list(self._removal_checks.values())
        tasks = [t for t in (self._periodic, self._catching_up, *readers, *checks) if t is not None]
        await cancel_and_wait(*tasks)
        await self.presence.stop()
        await self.bus.stop()

    def subscribe(self, room_id: str, subscriber: Subscriber) -> None:
        """Start offering the room's events to a stream (membership is confirmed separately)."""
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = self._feeds[room_id] = RoomFeed(
                self._pool, room_id, on_removed=lambda user_id: self._remove(room_id, user_id)
            )
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
        feed.start_at(last_sequence)
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
            feed.close()
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
                    feed.want(last)

    def _on_event(self, event: events.ChatEvent) -> None:
        feed = self._feeds.get(event.room_id)
        if feed is None:
            return
        match event:
            case events.MessageStored(sequence=sequence):
                feed.want(sequence)
            case events.MemberRemoved(user_id=user_id):
                if any(s.user_id == user_id for s in feed.subscribers):
                    self._check_removal(feed.room_id, user_id)
            case events.ReadMarked(room_id, user_id, sequence):
                receipt = chat_pb2.ReadReceiptEvent(room_id=room_id, user_id=user_id, sequence=sequence)
                feed.offer_present(chat_pb2.ConnectResponse(read_receipt=receipt), skip_user=None)
            case events.Typing(room_id, user_id):
                typing = chat_pb2.TypingEvent(room_id=room_id, user_id=user_id)
                feed.offer_present(chat_pb2.ConnectResponse(typing=typing), skip_user=user_id)
            case events.PresenceChanged(room_id, user_id, online):
                presence = chat_pb2.PresenceEvent(room_id=room_id, user_id=user_id, online=online)
                feed.offer_present(chat_pb2.ConnectResponse(presence=presence), skip_user=user_id)

    def _check_removal(self, room_id: str, user_id: str) -> None:
        key = (room_id, user_id)
        if key not in self._removal_checks:
            task = asyncio.create_task(self._remove_unless_member(room_id, user_id))
            self._removal_checks[key] = task
            task.add_done_callback(lambda _task: self._removal_checks.pop(key, None))

    async def _remove_unless_member(self, room_id: str, user_id: str) -> None:
        try:
            gone = await messages.not_members(self._pool, [(room_id, user_id)])
        except Exception as exc:  # the removal's SYSTEM message makes the feed ask again
            log.warning("chat hub could not check a removal from room %s (%r)", room_id, exc)
            return
        if gone:
            self._remove(room_id, user_id)

    def _remove(self, room_id: str, user_id: str) -> None:
        """The user is no longer a member of the room: their streams here lose it at once."""
        feed = self._feeds.get(room_id)
        if feed is None:
            return
        for subscriber in [s for s in feed.subscribers if s.user_id == user_id]:
            self.unsubscribe(room_id, subscriber)
            subscriber.drop_room(room_id)

    async def send_message(
        self, *, user_id: str, room_id: str, client_message_id: str, text: str, stream: bool = False
    ) -> Message:
        """messages.send_message through this process.

        Once it commits, the room's feed here may offer it without reading it back
        (server/chat/feed.py).
        """
        feed_key = rules.room_key(room_id)  # the request may spell it in upper case
        feed = self._feeds.get(feed_key)
        with feed.sending() if feed is not None else contextlib.nullcontext():
            message = await messages.send_message(
                self._sender,
                user_id=user_id,
                room_id=room_id,
                client_message_id=client_message_id,
                text=text,
                stream=stream,
            )
            following = self._feeds.get(feed_key)  # the feed may have been replaced meanwhile
            if following is not None:
                following.stored(message)
        return message
