"""In-process fan-out of chat events to the live streams, woken by PostgreSQL LISTEN/NOTIFY.

One dedicated connection per server process LISTENs on `chat_events` (pooled connections
never LISTEN: the pool skips its reset query). A notification is only a wake-up: for a new
message in room R the hub reads R's new rows from the messages table once, builds each
ConnectResponse once, and offers the same object to every local subscriber of R. Offers never
block; each stream has its own bounded queue and ends itself when it overflows. Because the
table is the log, a lost notification (say, while the listener reconnects) delays delivery
but loses nothing: the hub re-reads after reconnecting and streams fill any gap they see.

Presence spans replicas: the hub records when this process's streams of a user enter or all leave
a room (the latest state per room and user, off the streams' path), and the database announces a
change only when it flips the user's presence across every replica (migration 0006). At every
heartbeat the hub also reconciles its recorded rows with its streams (so a lost write or a reap
heals), and takes away the users of replicas silent for PRESENCE_STALE_SECONDS (crashed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import asyncpg

from sendinchat.v1 import chat_pb2
from server.chat import convert, messages
from server.db.pool import DATABASE_ERRORS
from server.errors import UnavailableError

CHANNEL = "chat_events"
_FETCH_LIMIT = 100
_EVERYTHING = 2**62
_RECONNECT_SECONDS = 1.0
PRESENCE_HEARTBEAT_SECONDS = 5.0
PRESENCE_STALE_SECONDS = 30.0
_PRESENCE_RETRY_SECONDS = 1.0
_LEAVE_ON_STOP_SECONDS = 2.0
# PostgreSQL error classes worth retrying: connection, rollback (deadlock, serialization),
# insufficient resources, operator intervention; and lock_not_available (lock_timeout).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57")
_LOCK_NOT_AVAILABLE = "55P03"

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LiveMessage:
    """A stored message on its way to the streams; one object shared by every subscriber."""

    room_id: str
    sequence: int
    response: chat_pb2.ConnectResponse


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


class ChatHub:
    """Room subscriptions of this process's streams and the listener that feeds them."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self.replica = str(uuid.uuid4())
        self._feeds: dict[str, _Feed] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        # (room, user) → online, oldest first: what this replica still has to record.
        self._presence_unrecorded: dict[tuple[str, str], bool] = {}
        self._presence_to_record = asyncio.Event()

    async def start(self) -> None:
        """Join the replicas and start listening; returns once LISTEN is in effect."""
        await _never_raising(self.heartbeat(), "chat presence heartbeat")  # before any presence of ours
        self._listener = asyncio.create_task(self._listen_forever())
        self._spawn(self._record_presence_forever())
        self._spawn(self._heartbeat_forever())
        self._spawn(self._reap_forever())
        await self._listening.wait()

    async def run_until_cancelled(self) -> None:
        """Wait, then stop() when cancelled (as the server's background tasks are on shutdown)."""
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop listening and every background task."""
        tasks = [t for t in (self._listener, *self._background) if t is not None]
        tasks += [f.task for f in self._feeds.values() if f.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # This replica's users leave its rooms now rather than when the others notice it is gone.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LEAVE_ON_STOP_SECONDS):
                await messages.leave_all_rooms(self._pool, replica=self.replica)

    def subscribe(self, room_id: str, subscriber: Subscriber) -> None:
        """Start offering the room's events to a stream (membership is confirmed separately)."""
        self._feeds.setdefault(room_id, _Feed(room_id)).subscribers.add(subscriber)

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
            self._announce_presence(subscriber.user_id, room_id, online=True)

    def unsubscribe(self, room_id: str, subscriber: Subscriber) -> None:
        """Stop offering the room's events to a stream."""
        feed = self._feeds.get(room_id)
        if feed is None or subscriber not in feed.subscribers:
            return
        feed.subscribers.discard(subscriber)
        if subscriber in feed.present:
            feed.present.discard(subscriber)
            if not any(s.user_id == subscriber.user_id for s in feed.present):
                self._announce_presence(subscriber.user_id, room_id, online=False)
        if not feed.subscribers:
            if feed.task is not None:
                feed.task.cancel()
            del self._feeds[room_id]

    def _announce_presence(self, user_id: str, room_id: str, *, online: bool) -> None:
        # Off the caller's path: a stream ending must not wait for the database.
        key = (room_id, user_id)
        self._presence_unrecorded.pop(key, None)
        self._presence_unrecorded[key] = online
        self._presence_to_record.set()

    async def _record_presence_forever(self) -> None:
        while True:
            await self._presence_to_record.wait()
            self._presence_to_record.clear()
            while self._presence_unrecorded:
                (room_id, user_id), online = next(iter(self._presence_unrecorded.items()))
                try:
                    await messages.set_presence(
                        self._pool, room_id=room_id, user_id=user_id, replica=self.replica, online=online
                    )
                except Exception as exc:
                    if _transient(exc):
                        log.warning("cannot record chat presence; retrying", exc_info=True)
                        await asyncio.sleep(_PRESENCE_RETRY_SECONDS)
                        continue
                    # Dropped: the next heartbeat's reconciliation records it.
                    log.exception("recording chat presence of %s in %s failed", user_id, room_id)
                if self._presence_unrecorded.get((room_id, user_id)) == online:
                    del self._presence_unrecorded[(room_id, user_id)]

    async def heartbeat(self) -> None:
        """Say this replica is alive, and queue whatever its recorded presence lacks or has too much."""
        stale = timedelta(seconds=PRESENCE_STALE_SECONDS)
        if await messages.register_replica(self._pool, replica=self.replica, stale_after=stale):
            log.info("chat replica %s registered (at start, or after being silent)", self.replica)
        recorded = await messages.recorded_presence(self._pool, replica=self.replica)
        present = {(feed.room_id, s.user_id) for feed in self._feeds.values() for s in feed.present}
        # Through the recorder, one writer per key: a change recorded since `recorded` was read
        # makes these writes no-ops (they announce nothing), never undoes it.
        for room_id, user_id in present ^ recorded:
            if (room_id, user_id) not in self._presence_unrecorded:
                self._announce_presence(user_id, room_id, online=(room_id, user_id) in present)

    async def _heartbeat_forever(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_HEARTBEAT_SECONDS)
            await _never_raising(self.heartbeat(), "chat presence heartbeat")

    async def _reap_forever(self) -> None:
        # Apart from the heartbeat, so a long reap never delays this replica's own registration.
        stale = timedelta(seconds=PRESENCE_STALE_SECONDS)
        while True:
            await asyncio.sleep(PRESENCE_HEARTBEAT_SECONDS)
            await _never_raising(
                messages.reap_silent_replicas(self._pool, stale_after=stale), "reaping silent chat replicas"
            )

    def _spawn(self, work: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(_logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _listen_forever(self) -> None:
        while True:
            try:
                conn = await asyncpg.connect(self._dsn)
            except Exception:
                log.warning("chat listener cannot connect; retrying", exc_info=True)
                await asyncio.sleep(_RECONNECT_SECONDS)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(_setter(lost))
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                if self._listening.is_set():
                    self._resync()  # notifications sent while we were away are gone; the log is not
                self._listening.set()
                await lost.wait()
                log.warning("chat listener connection lost; reconnecting")
            except DATABASE_ERRORS:
                log.warning("chat listener failed; reconnecting", exc_info=True)
                await asyncio.sleep(_RECONNECT_SECONDS)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))

    def _resync(self) -> None:
        for feed in self._feeds.values():
            if feed.fetched is not None:
                self._want(feed, _EVERYTHING)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        kind, _, rest = str(payload).partition("|")
        fields = rest.split("|")
        feed = self._feeds.get(fields[0])
        if feed is None:
            return
        if kind == "m":
            sequence = int(fields[1])
            if feed.fetched is None:
                # No subscriber is confirmed yet: what came before is their replay's business.
                feed.fetched = sequence - 1
            self._want(feed, sequence)
        elif kind == "x":
            for subscriber in [s for s in feed.subscribers if s.user_id == fields[1]]:
                self.unsubscribe(feed.room_id, subscriber)
                subscriber.drop_room(feed.room_id)
        elif kind == "r":
            receipt = chat_pb2.ReadReceiptEvent(room_id=fields[0], user_id=fields[1], sequence=int(fields[2]))
            self._offer_all(feed, chat_pb2.ConnectResponse(read_receipt=receipt), skip_user=None)
        elif kind == "t":
            typing = chat_pb2.TypingEvent(room_id=fields[0], user_id=fields[1])
            self._offer_all(feed, chat_pb2.ConnectResponse(typing=typing), skip_user=fields[1])
        elif kind == "p":
            presence = chat_pb2.PresenceEvent(room_id=fields[0], user_id=fields[1], online=fields[2] == "1")
            self._offer_all(feed, chat_pb2.ConnectResponse(presence=presence), skip_user=fields[1])

    @staticmethod
    def _offer_all(feed: _Feed, item: chat_pb2.ConnectResponse, *, skip_user: str | None) -> None:
        for subscriber in tuple(feed.present):
            if subscriber.user_id != skip_user:
                subscriber.offer(item)

    def _want(self, feed: _Feed, sequence: int) -> None:
        assert feed.fetched is not None
        if sequence <= max(feed.fetched, feed.wanted):
            return
        feed.wanted = sequence
        if feed.task is None:
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
                    item = LiveMessage(message.room_id, message.sequence, convert.connect_message(message))
                    for subscriber in tuple(feed.subscribers):
                        subscriber.offer(item)
                feed.fetched = batch[-1].sequence
        except DATABASE_ERRORS:
            # Subscribers notice the gap on the next message and read it themselves.
            log.warning("chat hub could not read room %s", feed.room_id, exc_info=True)
        finally:
            feed.task = None


def _transient(exc: Exception) -> bool:
    """Whether retrying the same statement later can succeed."""
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        return state[:2] in _TRANSIENT_SQLSTATE_CLASSES or state == _LOCK_NOT_AVAILABLE
    if isinstance(exc, asyncpg.exceptions._base.DataError):  # the client could not encode the arguments
        return False
    return isinstance(exc, (OSError, asyncpg.InterfaceError, UnavailableError))


async def _never_raising(work: Coroutine[Any, Any, object], what: str) -> None:
    """Run periodic work whose failure must not end its loop; the next round retries."""
    try:
        await work
    except Exception:
        log.exception("%s failed; retrying next round", what)


async def _logged(work: Coroutine[Any, Any, object]) -> None:
    try:
        await work
    except DATABASE_ERRORS:
        log.warning("chat background work failed", exc_info=True)


def _setter(event: asyncio.Event) -> Callable[[object], None]:
    def callback(_conn: object) -> None:
        event.set()

    return callback
