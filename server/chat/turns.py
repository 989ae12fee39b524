"""One room-locking call per room at a time from this process.

A call that locks a room holds a pool connection while it waits for the room's row lock, and
the room's writers go one at a time anyway. So the calls that lock one room (payments, payment
requests and the answers to them, membership changes) wait for their turn here, off the pool: a
flood of them into one room cannot take every connection. (Text messages share their turn
instead, in one transaction: server/chat/sending.py.) Replicas still meet at the row lock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from server.chat import validation as rules


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    callers: int = 0


class RoomTurns:
    """A lock per room that has callers, gone with its last one."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Turn] = {}

    @property
    def busy_rooms(self) -> int:
        """Rooms with a caller in their turn or waiting for it."""
        return len(self._rooms)

    @contextlib.asynccontextmanager
    async def of(self, room_id: str) -> AsyncIterator[None]:
        """The block runs in the room's turn."""
        key = rules.room_key(room_id)
        turn = self._rooms.get(key)
        if turn is None:
            turn = self._rooms[key] = _Turn()
        turn.callers += 1
        try:
            async with turn.lock:
                yield
        finally:
            turn.callers -= 1
            if turn.callers == 0:
                del self._rooms[key]
