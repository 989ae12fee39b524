"""The chat bus: how chat events (server/chat/events.py) travel between this replica and the others.

Two implementations, chosen by SENDINCHAT_CHAT_BUS:

- server/chat/bus_notify.py (unset, the default): PostgreSQL LISTEN/NOTIFY. The writing
  transaction itself notifies (server/db/functions/chat_events.sql), so `publish` has nothing
  left to do, and every replica hears every room.
- server/chat/bus_nats.py: NATS, one subject per room. A replica subscribes to a room's subject
  only while one of its streams follows the room; writers publish after their transaction commits.

Writers (messages, rooms, payments, presence) call `publish` after commit with the events their
statements returned, whichever bus runs: that call is the one place a chat event is published.
Events are wake-ups, not the log: the messages table is. Whatever a bus loses (a publish lost
with a replica that died after its commit, a replica cut off from NATS) delays delivery by at most
the hub's catch-up read: after every reconnect and, where `catch_up_seconds` is set, periodically.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from prometheus_client import CollectorRegistry, Counter

from server.chat.events import ChatEvent

# The session setting that keeps chat_notify_*() quiet (server/db/functions/chat_events.sql).
QUIET_SETTING = "sendinchat.chat_notify"

OnEvent = Callable[[ChatEvent], None]
OnResync = Callable[[], None]


class Publisher(Protocol):
    """What a writer needs: announce events once its transaction has committed."""

    async def publish(self, *events: ChatEvent) -> None:
        """Send the events to every replica that follows their rooms; never raises."""
        ...


class ChatBus(Publisher, Protocol):
    """What the hub needs: events of the rooms it follows, and a word when some may have been missed."""

    @property
    def name(self) -> str:
        """`notify` or `nats` (log lines, metrics, the bench)."""
        ...

    @property
    def received(self) -> int:
        """Events the bus delivered: on NOTIFY every notification (its own too), on NATS followed rooms'."""
        ...

    @property
    def notifies_in_database(self) -> bool:
        """True when the writing transactions' NOTIFY is the bus (so `publish` does nothing)."""
        ...

    @property
    def catch_up_seconds(self) -> float | None:
        """How often the hub re-reads the rooms it follows (None: only after a reconnect)."""
        ...

    def count_received(self, counter: Counter) -> None:
        """Also count received events in a metric."""
        ...

    async def start(self, on_event: OnEvent, on_resync: OnResync) -> None:
        """Connect; return once events reach `on_event`. `on_resync` runs after each reconnect."""
        ...

    async def stop(self) -> None:
        """Disconnect (what was published before is sent first)."""
        ...

    def follow(self, room_id: str) -> None:
        """Start receiving the room's events (no-op where every room is heard)."""
        ...

    def unfollow(self, room_id: str) -> None:
        """Stop receiving the room's events."""
        ...

    async def following(self, room_id: str) -> None:
        """Return once the room's events published from now on reach this replica (bounded wait)."""
        ...


def open_bus(nats_servers: tuple[str, ...], dsn: str, registry: CollectorRegistry) -> ChatBus:
    """NATS when servers are configured (SENDINCHAT_CHAT_BUS), else LISTEN/NOTIFY on `dsn`.

    Its events are counted in `sendinchat_chat_bus_events_received_total{bus=...}`.
    """
    # Imported here: both implementations import this module's types.
    from server.chat.bus_nats import NatsBus
    from server.chat.bus_notify import NotifyBus

    bus: ChatBus = NatsBus(nats_servers) if nats_servers else NotifyBus(dsn)
    counter = Counter(
        "sendinchat_chat_bus_events_received",
        "Chat events this replica received from its bus (every room on NOTIFY, followed rooms on NATS)",
        ["bus"],
        registry=registry,
    )
    bus.count_received(counter.labels(bus.name))
    return bus


def quiet_database_url(dsn: str) -> str:
    """The DSN with `sendinchat.chat_notify=off`: its sessions' chat functions notify nothing.

    asyncpg sends unknown DSN query parameters as session settings at connect time.
    """
    parts = urlsplit(dsn)
    query = f"{parts.query}&" if parts.query else ""
    return urlunsplit(parts._replace(query=f"{query}{QUIET_SETTING}=off"))
