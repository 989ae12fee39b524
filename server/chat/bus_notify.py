"""The default chat bus: PostgreSQL LISTEN/NOTIFY on `chat_events`, one listener per replica.

The writing transaction notifies (server/db/functions/chat_events.sql), so the payload reaches
every listening replica at commit and never for a rollback; `publish` therefore does nothing. Every
replica hears every room, and notifying transactions commit one at a time (NOTIFY's lock): the
reasons to move to NATS past one database's worth of chat.
"""

from __future__ import annotations

import asyncio
import logging

from prometheus_client import Counter

from server.chat import events
from server.chat.bus import OnEvent, OnResync
from server.db.listener import Listener
from server.tasks import cancel_and_wait

CHANNEL = "chat_events"
APPLICATION_NAME = "sendinchat-chat-listener"  # how the listener's connection shows in pg_stat_activity

log = logging.getLogger(__name__)


class NotifyBus:
    """Chat events through the database."""

    name = "notify"
    notifies_in_database = True
    catch_up_seconds = None  # a notification is part of its commit: only a reconnect loses any

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._metric: Counter | None = None
        self._received = 0
        self._task: asyncio.Task[None] | None = None
        self._on_event: OnEvent = lambda _event: None

    @property
    def received(self) -> int:
        """Notifications heard (of every room)."""
        return self._received

    def count_received(self, counter: Counter) -> None:
        """Also count notifications in a metric."""
        self._metric = counter

    async def start(self, on_event: OnEvent, on_resync: OnResync) -> None:
        """LISTEN; returns once it is in effect."""
        self._on_event = on_event
        connected_before = False

        def on_connect() -> None:
            nonlocal connected_before
            if connected_before:
                on_resync()
            connected_before = True

        listener = Listener(
            self._dsn, CHANNEL, self._deliver, on_connect=on_connect, application_name=APPLICATION_NAME
        )
        self._task = asyncio.create_task(listener.run())
        await listener.listening.wait()

    async def stop(self) -> None:
        """Stop listening."""
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def publish(self, *published: events.ChatEvent) -> None:
        """Nothing to do: the transaction notified at commit."""

    def follow(self, room_id: str) -> None:
        """Every room is heard already."""

    def unfollow(self, room_id: str) -> None:
        """Every room is heard anyway."""

    async def following(self, room_id: str) -> None:
        """LISTEN is in effect from start()."""

    def _deliver(self, payload: str) -> None:
        self._received += 1
        if self._metric is not None:
            self._metric.inc()
        self._on_event(events.decode(payload))  # a bad payload is logged by the listener
