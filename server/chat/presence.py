"""Presence across replicas: this replica's record of who has a live stream in which room.

The hub says when this process's streams of a user enter a room or all leave it; the record is
written off the streams' path (the latest state per room and user, one writer per key), and the
database decides whether a change flips the user's presence across every replica
(server/db/functions/chat_presence.sql) and returns the flips, which go out on the chat bus. At
every heartbeat the replica also reconciles its recorded rows with its streams, so a lost write or
a reap heals by itself, and takes away the users of replicas silent for STALE_SECONDS (crashed, or
cut off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import asyncpg

from server.chat import events
from server.chat.bus import Publisher
from server.db import errors as db_errors
from server.tasks import cancel_and_wait

HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0
_RETRY_SECONDS = 1.0
_LEAVE_ON_STOP_SECONDS = 2.0
# Rows one call locks at most (each lock holds a slot of PostgreSQL's shared lock table).
BATCH = 500

_CHANGE = "SELECT chat_presence_change($1::uuid, $2::uuid, $3::uuid, $4)"
_RECORDED = "SELECT room_id::text, user_id::text FROM chat_presence WHERE replica = $1::uuid"
_REGISTER = "SELECT chat_presence_register($1::uuid, $2::interval)"
_TAKE_AWAY = (
    "SELECT gone_room::text, gone_user::text, went_offline"
    " FROM chat_presence_take_away($1::uuid, $2::interval, $3)"
)

log = logging.getLogger(__name__)

Pairs = set[tuple[str, str]]


class Presence:
    """Records, heartbeats and reaps presence for one replica."""

    def __init__(self, pool: asyncpg.Pool, present: Callable[[], Pairs], bus: Publisher) -> None:
        self._pool = pool
        self._present = present  # the (room, user) pairs this replica's streams are in now
        self._bus = bus
        self.replica = str(uuid.uuid4())
        # (room, user) -> online, oldest first: what this replica still has to record.
        self._unrecorded: dict[tuple[str, str], bool] = {}
        self._to_record = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Join the replicas (before any presence of ours is recorded) and start the background work."""
        await _never_raising(self.heartbeat(), "chat presence heartbeat")
        self._tasks = [
            asyncio.create_task(self._record_forever()),
            asyncio.create_task(self._every_heartbeat(self.heartbeat, "chat presence heartbeat")),
            # Apart from the heartbeat, so a long reap never delays this replica's own registration.
            asyncio.create_task(self._every_heartbeat(self._reap, "reaping silent chat replicas")),
        ]

    async def stop(self) -> None:
        """Stop the background work; this replica's users leave its rooms now, not when it is missed."""
        await cancel_and_wait(*self._tasks)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_LEAVE_ON_STOP_SECONDS):
                while await self._went_offline(self.replica, None) == BATCH:
                    pass

    def announce(self, room_id: str, user_id: str, *, online: bool) -> None:
        """This replica's streams of the user entered (or all left) the room; recorded soon, in order."""
        key = (room_id, user_id)
        self._unrecorded.pop(key, None)
        self._unrecorded[key] = online
        self._to_record.set()

    async def heartbeat(self) -> None:
        """Say this replica is alive, and queue whatever its recorded presence lacks or has too much."""
        stale = timedelta(seconds=STALE_SECONDS)
        if await self._pool.fetchval(_REGISTER, self.replica, stale):
            log.info("chat replica %s registered (at start, or after being silent)", self.replica)
        recorded = {(r[0], r[1]) for r in await self._pool.fetch(_RECORDED, self.replica)}
        present = self._present()
        # Through the recorder, one writer per key: a change recorded since `recorded` was read
        # makes these writes no-ops (they announce nothing), never undoes it.
        for room_id, user_id in present ^ recorded:
            if (room_id, user_id) not in self._unrecorded:
                self.announce(room_id, user_id, online=(room_id, user_id) in present)

    async def _reap(self) -> None:
        stale = timedelta(seconds=STALE_SECONDS)
        while await self._went_offline(None, stale) == BATCH:
            pass

    async def _went_offline(self, replica: str | None, stale: timedelta | None) -> int:
        """Take a batch of rows away (a replica's, or silent ones'), publish who went offline; how many."""
        rows = await self._pool.fetch(_TAKE_AWAY, replica, stale, BATCH)
        await self._bus.publish(*(events.PresenceChanged(r[0], r[1], False) for r in rows if r[2]))
        return len(rows)

    async def _record_forever(self) -> None:
        while True:
            await self._to_record.wait()
            self._to_record.clear()
            while self._unrecorded:
                (room_id, user_id), online = next(iter(self._unrecorded.items()))
                try:
                    if await self._pool.fetchval(_CHANGE, room_id, user_id, self.replica, online):
                        await self._bus.publish(events.PresenceChanged(room_id, user_id, online))
                except Exception as exc:
                    if db_errors.is_transient(exc):
                        log.warning("cannot record chat presence (%r); retrying", exc)
                        await asyncio.sleep(_RETRY_SECONDS)
                        continue
                    # Dropped: the next heartbeat's reconciliation records it.
                    log.exception("recording chat presence of %s in %s failed", user_id, room_id)
                if self._unrecorded.get((room_id, user_id)) == online:
                    del self._unrecorded[(room_id, user_id)]

    @staticmethod
    async def _every_heartbeat(work: Callable[[], Coroutine[Any, Any, None]], what: str) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await _never_raising(work(), what)


async def _never_raising(work: Coroutine[Any, Any, object], what: str) -> None:
    """Run periodic work whose failure must not end its loop; the next round retries."""
    try:
        await work
    except Exception as exc:
        log.warning(
            "%s failed (%r); retrying next round", what, exc, exc_info=not db_errors.is_transient(exc)
        )
