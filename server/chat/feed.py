"""One room's feed in this process: its local subscribers and the reader that offers them its log.

The feed offers each stored message once, in sequence order, to every subscriber of the room; a
live message is built and serialized once for all of them. Messages come two ways: read from the
messages table after a wake-up (`want`, one reader per room at a time), or handed over by this
process's sender after commit (`stored`), which goes out at once when it is the next one due. A
wake-up that arrives while this process's sends to the room are in flight waits for those sends
(they usually bring the message) before reading; later sends do not hold it further.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import asyncpg

from sendinchat.v1 import chat_pb2
from server.chat import convert, messages
from server.chat.models import Message, MessageKind
from server.db import errors as db_errors

_FETCH_LIMIT = 100
_RETRY_START_SECONDS = 0.2
_RETRY_MAX_SECONDS = 5.0

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
    """What a feed needs from a stream."""

    @property
    def user_id(self) -> str:
        """Who is connected."""
        ...

    def offer(self, item: LiveMessage | chat_pb2.ConnectResponse) -> None:
        """Take a message or a state event without blocking (server/chat/stream.py says how)."""
        ...

    def drop_room(self, room_id: str) -> None:
        """The user is no longer a member of the room: stop sending it at once."""
        ...


@dataclass(eq=False)
class RoomFeed:
    """The room's subscribers here and how far its log has been offered to them."""

    pool: asyncpg.Pool
    room_id: str
    subscribers: set[Subscriber] = field(default_factory=set)
    present: set[Subscriber] = field(default_factory=set)  # subscribers whose membership was checked
    fetched: int | None = None  # highest sequence read and offered; None until a subscriber is confirmed
    wanted: int = 0
    closed: bool = False
    _task: asyncio.Task[None] | None = None
    _sends: set[int] = field(default_factory=set)  # tickets of this process's sends in flight
    _tickets: int = 0
    _hold_until: int = 0  # a read waits for the sends with tickets up to this one
    on_removed: Callable[[str], None] = field(default=lambda _user_id: None)  # a user is no longer a member

    @contextlib.contextmanager
    def sending(self) -> Iterator[None]:
        """Around a send of this process to the room, which ends with `stored` when it commits."""
        self._tickets += 1
        ticket = self._tickets
        self._sends.add(ticket)
        try:
            yield
        finally:
            self._sends.discard(ticket)
            self._read_if_due()

    def stored(self, message: Message) -> None:
        """A message this process stored has committed: offer it now if it is the room's next one.

        Otherwise (an earlier message is not offered yet, or a read is under way that may bring
        it) this is only a wake-up, like the bus's event that follows.
        """
        if self.fetched is None:
            return
        if message.sequence == self.fetched + 1:
            self.fetched = message.sequence
            self._offer_message(LiveMessage.of(message))
        else:
            self.want(message.sequence)

    def start_at(self, last_sequence: int) -> None:
        """A subscriber is confirmed, the room at `last_sequence` then: offer what comes after.

        What came before is the subscribers' replay. Wake-ups that came before this are read now.
        """
        if self.fetched is None:
            self.fetched = last_sequence
            self._read_if_due()

    def want(self, sequence: int) -> None:
        """The room's log reaches `sequence`: read and offer what was not offered yet.

        Only as far as the table holds: a wake-up's sequence from the bus is not trusted.
        """
        if sequence <= max(self.fetched or 0, self.wanted):
            return
        self.wanted = sequence
        if self.fetched is None:  # read once a subscriber is confirmed (start_at)
            return
        if not self._held():
            # The sends in flight now may bring what is wanted; the ones after them hold nothing.
            self._hold_until = max(self._sends, default=0)
        self._read_if_due()

    def offer_present(self, item: chat_pb2.ConnectResponse, *, skip_user: str | None) -> None:
        """Offer an event to the subscribers whose membership was checked."""
        for subscriber in tuple(self.present):
            if subscriber.user_id != skip_user:
                subscriber.offer(item)

    def close(self) -> asyncio.Task[None] | None:
        """Stop reading; returns the reader, cancelled, if one was running."""
        self.closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        return task

    async def _drop_non_members(self) -> None:
        # A member leaves or is removed only in a commit that also appends a SYSTEM message, so
        # the feed, which offers in sequence order, asks before offering one: whoever is no longer
        # a member loses the room before it and everything after, whether or not the removal's
        # event arrived (a listener reconnect or a lost publish loses it; a read may run ahead of it).
        users = sorted({s.user_id for s in self.subscribers})
        for _room_id, user_id in await messages.not_members(self.pool, [(self.room_id, u) for u in users]):
            self.on_removed(user_id)

    def _offer_message(self, item: LiveMessage) -> None:
        for subscriber in tuple(self.subscribers):
            subscriber.offer(item)

    def _held(self) -> bool:
        return any(ticket <= self._hold_until for ticket in self._sends)

    def _read_if_due(self) -> None:
        if self.closed or self._task is not None or self.fetched is None or self.wanted <= self.fetched:
            return
        if not self._held():
            self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        # One reader per room: wake-ups that arrive while it reads only raise `wanted`. A read that
        # fails is tried again (a quiet room has no next wake-up to rely on) until the feed closes.
        retry = _RETRY_START_SECONDS
        try:
            while self.fetched is not None and self.wanted > self.fetched and self.subscribers:
                try:
                    batch = await messages.messages_after(
                        self.pool,
                        room_id=self.room_id,
                        after=self.fetched,
                        upto=self.wanted,
                        limit=_FETCH_LIMIT,
                    )
                    if any(m.kind == MessageKind.SYSTEM and m.sequence > self.fetched for m in batch):
                        await self._drop_non_members()
                except Exception as exc:
                    log.warning(
                        "chat hub could not read room %s (%r); retrying in %.1f s",
                        self.room_id,
                        exc,
                        retry,
                        exc_info=not db_errors.is_transient(exc),
                    )
                    await asyncio.sleep(retry)
                    retry = min(retry * 2, _RETRY_MAX_SECONDS)
                    continue
                retry = _RETRY_START_SECONDS
                if not batch:
                    self.wanted = self.fetched
                    break
                for message in batch:
                    if message.sequence > self.fetched:  # not handed over by `stored` meanwhile
                        self.fetched = message.sequence
                        self._offer_message(LiveMessage.of(message))
        finally:
            self._task = None
