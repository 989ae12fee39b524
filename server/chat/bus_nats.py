"""The chat bus on NATS: one subject per room, followed only while a stream of this replica follows it.

A replica subscribes to `sendinchat.chat.<room id>` when the first of its streams follows the room
and unsubscribes when the last one leaves, so NATS (which routes by interest, across its cluster)
sends a replica nothing of the rooms it has no follower of. Payloads are the chat event codec's
(server/chat/events.py), the same text NOTIFY carries. Writers publish after their transaction
commits; a replica's own events also go straight to its own followers, so its streams keep
hearing their own replica while NATS is away (the connection has `no_echo`: nothing comes twice).

Core NATS, not JetStream: an event is a wake-up and the messages table is the log. What NATS drops
(a node that dies, a replica cut off, a publish lost with a replica that died after its commit,
the moment before a new subscription's interest reaches the other nodes) costs a delay, not a
message: the hub re-reads the rooms it follows after every reconnect and every CATCH_UP_SECONDS,
and streams fill any gap from the table. Duplicates are harmless (the hub and the streams skip
sequences they have sent), so JetStream's deduplication would buy nothing, and its replay would
be a second, replicated copy of a log PostgreSQL already keeps (README, "Chat over NATS").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from server.chat import events
from server.chat.bus import OnEvent, OnResync
from server.errors import UnavailableError

SUBJECT_PREFIX = "sendinchat.chat."
CATCH_UP_SECONDS = 2.0  # the most a lost publish delays a delivery (plus one read)
FOLLOW_WAIT_SECONDS = 1.0  # the most a subscribe waits for its room's interest to reach NATS
CONNECT_WAIT_SECONDS = 60.0
_PING_SECONDS = 2  # a silent (half-open) connection is noticed after about two of these
_FLUSH_SECONDS = 30  # longer than any live PONG takes; a lost connection drops the wait sooner

log = logging.getLogger(__name__)


def subject(room_id: str) -> str:
    """The NATS subject of a room's events."""
    return SUBJECT_PREFIX + room_id


def _where(url: str) -> str:
    """host:port of a server URL, never its credentials."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


@dataclass(eq=False)
class _Follow:
    room_id: str
    wanted: bool = True
    subscription: Subscription | None = None
    in_effect: asyncio.Task[None] | None = None  # subscribe, then a PING/PONG round trip


class NatsBus:
    """Chat events through NATS subjects, one per room."""

    name = "nats"
    notifies_in_database = False
    catch_up_seconds = CATCH_UP_SECONDS

    def __init__(self, servers: Sequence[str], *, connect_seconds: float = CONNECT_WAIT_SECONDS) -> None:
        self._servers = list(servers)
        self._connect_seconds = connect_seconds
        self._metric: Counter | None = None
        self._nc = Client()
        self._follows: dict[str, _Follow] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._received = 0
        self._lost_since_connect = 0
        self._stopping = False
        self._on_event: OnEvent = lambda _event: None
        self._on_resync: OnResync = lambda: None

    @property
    def received(self) -> int:
        """Events that came from NATS (of followed rooms only; this replica's own never do)."""
        return self._received

    @property
    def connected_server(self) -> str | None:
        """host:port of the NATS server this replica is connected to, if any."""
        url = self._nc.connected_url
        return None if url is None else f"{url.hostname}:{url.port}"

    def count_received(self, counter: Counter) -> None:
        """Also count received events in a metric."""
        self._metric = counter

    async def start(self, on_event: OnEvent, on_resync: OnResync) -> None:
        """Connect to one of the servers, retrying for up to CONNECT_WAIT_SECONDS.

        Raises:
            UnavailableError: no server answered in time.
        """
        self._on_event, self._on_resync = on_event, on_resync
        try:
            async with asyncio.timeout(self._connect_seconds):
                await self._nc.connect(
                    servers=self._servers,
                    name="sendinchat",
                    no_echo=True,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    connect_timeout=2,
                    ping_interval=_PING_SECONDS,
                    max_outstanding_pings=2,
                    error_cb=self._error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
        except TimeoutError:
            with contextlib.suppress(Exception):
                await self._nc.close()
            where = ", ".join(_where(s) for s in self._servers)
            raise UnavailableError(
                f"SENDINCHAT_CHAT_BUS: no NATS server answered within {self._connect_seconds:g} s ({where})"
            ) from None
        log.info("chat bus on NATS at %s", self.connected_server)

    async def stop(self) -> None:
        """Send what is still buffered, then close the connection."""
        self._stopping = True
        for task in list(self._background):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=1)
        with contextlib.suppress(Exception):
            await self._nc.close()

    async def publish(self, *published: events.ChatEvent) -> None:
        """This replica's followers at once; the others' through NATS. Never raises."""
        for event in published:
            if event.room_id in self._follows:
                self._deliver(event)
            try:
                await self._nc.publish(subject(event.room_id), events.encode(event).encode())
            except Exception as exc:  # closed, or the reconnect buffer is full
                self._lost_since_connect += 1
                if self._lost_since_connect == 1:
                    log.warning("chat bus cannot publish (%r); other replicas catch up from the table", exc)

    def follow(self, room_id: str) -> None:
        """Subscribe to the room's subject (in the background; `following` waits for it)."""
        if room_id in self._follows:
            return
        follow = self._follows[room_id] = _Follow(room_id)
        follow.in_effect = self._spawn(self._subscribe(follow))

    def unfollow(self, room_id: str) -> None:
        """Unsubscribe from the room's subject."""
        follow = self._follows.pop(room_id, None)
        if follow is None:
            return
        follow.wanted = False
        if follow.subscription is not None:
            self._spawn(self._unsubscribe(follow.subscription))

    async def following(self, room_id: str) -> None:
        """Wait until the local NATS server has the room's subscription, for FOLLOW_WAIT_SECONDS at most.

        The interest then spreads to the other nodes within a route's round trip; what is published
        there before it arrives is the hub's periodic catch-up's to find.
        """
        follow = self._follows.get(room_id)
        if follow is None or follow.in_effect is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FOLLOW_WAIT_SECONDS):
                await asyncio.shield(follow.in_effect)

    async def _subscribe(self, follow: _Follow) -> None:
        try:
            subscription = await self._nc.subscribe(subject(follow.room_id), cb=self._on_message)
        except Exception as exc:  # only when the connection is closed: the catch-up read covers the room
            log.warning("chat bus cannot follow room %s (%r)", follow.room_id, exc)
            return
        if not follow.wanted:
            await self._unsubscribe(subscription)
            return
        follow.subscription = subscription
        # Not bounded from outside: a PONG arriving after nats-py gave up on its ping would end
        # its read loop. A lost connection drops the outstanding pings, so this ends either way.
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=_FLUSH_SECONDS)

    async def _unsubscribe(self, subscription: Subscription) -> None:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()

    async def _on_message(self, msg: Msg) -> None:
        try:
            event = events.decode(msg.data.decode())
        except ValueError:  # UnicodeDecodeError included
            log.warning("chat bus: not a chat event on %s: %.100r", msg.subject, msg.data)
            return
        self._received += 1
        if self._metric is not None:
            self._metric.inc()
        self._deliver(event)

    def _deliver(self, event: events.ChatEvent) -> None:
        try:
            self._on_event(event)
        except Exception:  # one bad event must not stop the others
            log.exception("a chat event could not be handled: %s", events.encode(event))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _error(self, exc: Exception) -> None:
        log.warning("chat bus: NATS error (%r)", exc)

    async def _disconnected(self) -> None:
        if self._stopping:
            return
        log.warning("chat bus lost NATS; reconnecting (this replica's own events still reach its streams)")

    async def _reconnected(self) -> None:
        # nats-py has sent our subscriptions again and flushed them: re-read what went by meanwhile.
        log.info("chat bus reconnected to NATS at %s; catching up from the table", self.connected_server)
        self._lost_since_connect = 0
        self._on_resync()
