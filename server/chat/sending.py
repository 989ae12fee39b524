"""Group commit for a room's text messages (server/db/group_commit.py).

A room's writers take its row lock and hold it until they commit (chat_append), so one room
stores one message per commit. The messages of a room that arrive while its batch is in flight
wait for it, then go together in one call of `chat_send_messages`: one transaction and one commit
for all, so a slow commit (a loaded disk, a busy machine) delays a busy room's messages once
instead of once each. Rooms do not wait for each other: each has its own queue while it has
messages on the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from server.chat import events
from server.chat.bus import Publisher
from server.chat.models import MESSAGE_COLUMNS, Message
from server.db.group_commit import GroupCommit
from server.db.pool import Connection

_SEND = f"""
SELECT {MESSAGE_COLUMNS}
FROM chat_send_message($1, $2, $3, $4) AS m
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
"""
_SEND_MANY = f"""
SELECT b.idx, {MESSAGE_COLUMNS}
FROM chat_send_messages($1::uuid, $2::uuid[], $3::text[], $4::text[]) AS b
CROSS JOIN LATERAL (SELECT (b.message).*) AS m
LEFT JOIN payment_requests pr ON pr.id = m.payment_request_id
"""
# Large enough that a busy room's backlog leaves in one batch, small enough for one round trip.
_MAX_BATCH = 100


@dataclass(frozen=True, slots=True)
class MessageOrder:
    """One text message to store, already validated (room_id in canonical form)."""

    room_id: str
    sender_id: str
    client_message_id: str | None
    text: str


# The stored message (a retry's: the first one), or None when the sender is not a member.
Sent = Message | None


class MessageSender:
    """Stores text messages, each room's concurrent ones in one transaction, and announces them.

    A message is announced on the bus once stored, also when its caller has given up meanwhile
    (a deadline, a cancelled call): it is in the room's log, and its room's streams get it.
    """

    def __init__(self, pool: asyncpg.Pool, bus: Publisher) -> None:
        self._pool = pool
        self._bus = bus
        self._rooms: dict[str, _RoomBatcher] = {}

    @property
    def busy_rooms(self) -> int:
        """Rooms with messages on the way (a room's queue goes once it has none)."""
        return len(self._rooms)

    async def send(self, order: MessageOrder) -> Sent:
        """The stored message, in the room's next batch (None: the sender is not a member)."""
        batcher = self._rooms.get(order.room_id)
        if batcher is None:
            batcher = self._rooms[order.room_id] = _RoomBatcher(
                self._pool, self._bus, on_idle=lambda: self._forget(order.room_id)
            )
        return await batcher.submit(order)

    def _forget(self, room_id: str) -> None:
        batcher = self._rooms.get(room_id)
        if batcher is not None and batcher.idle:
            del self._rooms[room_id]


class _RoomBatcher(GroupCommit[MessageOrder, Sent]):
    """One room's queue: a batch leaves as soon as the previous one has returned."""

    def __init__(self, pool: asyncpg.Pool, bus: Publisher, *, on_idle: Callable[[], None]) -> None:
        super().__init__(pool, linger_seconds=0, max_batch=_MAX_BATCH, on_idle=on_idle)
        self._bus = bus

    async def _create(
        self, conn: Connection, live: list[tuple[MessageOrder, asyncio.Future[Sent]]]
    ) -> list[tuple[asyncio.Future[Sent], Sent]]:
        orders = [order for order, _ in live]
        rows = await conn.fetch(
            _SEND_MANY,
            orders[0].room_id,
            [order.sender_id for order in orders],
            [order.client_message_id for order in orders],
            [order.text for order in orders],
        )
        by_index = {row["idx"]: row for row in rows}
        answers = [(future, _sent(by_index[index])) for index, (_, future) in enumerate(live, start=1)]
        await self._announce(*(message for _, message in answers))
        return answers

    async def _alone(self, order: MessageOrder) -> Sent:
        try:
            row = await self._pool.fetchrow(
                _SEND, order.room_id, order.sender_id, order.client_message_id, order.text
            )
        except asyncpg.exceptions.NoDataFoundError:  # raised by chat_send_message: not a member
            return None
        assert row is not None
        message = Message.from_record(row)
        await self._announce(message)
        return message

    async def _announce(self, *sent: Sent) -> None:
        await self._bus.publish(*(events.MessageStored(m.room_id, m.sequence) for m in sent if m is not None))


def _sent(row: asyncpg.Record) -> Sent:
    return None if row["room_id"] is None else Message.from_record(row)
