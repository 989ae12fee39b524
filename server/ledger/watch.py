"""WatchTransfers: one listener per server process fans ledger events out to the open streams.

The ledger_events table is the log; NOTIFY only wakes the hub. Events are ordered by
(transaction id, seq) and read only below the oldest running transaction id, so a cursor never
gets ahead of an event that commits later. A watcher catches up from the table (from its cursor),
then takes live events from the hub, skipping what it has already sent. A watcher that falls
behind by more than its buffer simply catches up from the table again: memory stays bounded and
nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg

from server import pagetokens
from server.db.listener import Listener
from server.ledger.models import Transfer
from server.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = "ledger_events"
APPLICATION_NAME = "sendinchat-ledger-watch"  # how the listener's connection shows in pg_stat_activity
POLL_SECONDS = 1.0  # also read without a notification, in case one was missed
BUFFER = 1024
_PAGE = 500

_HORIZON = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"
_SNAPSHOT = "SELECT pg_current_snapshot()::text"
_EVENT_COLUMNS = """
e.xid, e.seq, t.id, t.request_id, t.kind, e.state, t.from_user_id, t.to_user_id, t.from_account_id,
t.to_account_id, t.currency, t.amount, e.posted_amount, t.memo, t.created_at,
CASE WHEN e.state = 'pending' THEN t.expires_at END AS expires_at, e.resolved_at
"""
_EVENTS = f"""
SELECT {_EVENT_COLUMNS} FROM ledger_events e JOIN transfers t ON t.id = e.transfer_id
WHERE (e.xid, e.seq) > ($1, $2) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
ORDER BY e.xid, e.seq LIMIT $3
"""
# Two index range scans (sent, received; migration 0005) merged. An event is never both a user's:
# a transfer's two accounts differ (transfers_distinct_accounts), and a user has one per currency.
_USER_EVENTS = f"""
SELECT {_EVENT_COLUMNS} FROM (
    (SELECT * FROM ledger_events e
     WHERE e.from_user_id = $3 AND (e.from_user_id, e.xid, e.seq) > ($3, $1, $2)
       AND e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
     ORDER BY e.from_user_id, e.xid, e.seq LIMIT $4)
    UNION ALL
    (SELECT * FROM ledger_events e
     WHERE e.to_user_id = $3 AND (e.to_user_id, e.xid, e.seq) > ($3, $1, $2)
       AND e.xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint
     ORDER BY e.to_user_id, e.xid, e.seq LIMIT $4)
) e JOIN transfers t ON t.id = e.transfer_id
ORDER BY e.xid, e.seq LIMIT $4
"""


@dataclass(frozen=True, order=True, slots=True)
class EventKey:
    """A position in the ledger event log: (transaction id, sequence), totally ordered."""

    xid: int
    seq: int

    def encode(self) -> str:
        """The opaque cursor handed to WatchTransfers clients."""
        return pagetokens.WATCH.encode(self.xid, self.seq)

    @classmethod
    def decode(cls, cursor: str) -> EventKey:
        """Parse a cursor, or InvalidArgumentError on field `cursor`."""
        xid, seq = pagetokens.WATCH.decode(cursor, "cursor")
        return cls(xid, seq)


@dataclass(frozen=True, slots=True)
class TransferEvent:
    """A transfer as it was right after one state change, and where that change sits in the log."""

    key: EventKey
    transfer: Transfer


def _event(row: asyncpg.Record) -> TransferEvent:
    return TransferEvent(EventKey(row["xid"], row["seq"]), Transfer.from_record(row))


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Which transactions had committed when a cursor-less watch began: their events are past."""

    xmin: int
    xmax: int
    running: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> _Snapshot:  # PostgreSQL's own pg_snapshot text
        xmin, xmax, running = text.split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in running.split(",") if x))

    def is_future(self, xid: int) -> bool:
        return xid >= self.xmax or xid in self.running


class _Watcher:
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.events: deque[TransferEvent] = deque()
        self.overflowed = False
        self.wake = asyncio.Event()

    def push(self, event: TransferEvent) -> None:
        if self.overflowed:
            return
        if len(self.events) >= BUFFER:
            self.overflowed = True
            self.events.clear()
        else:
            self.events.append(event)
        self.wake.set()


class WatchHub:
    """The process's one LISTEN connection (held only while someone watches) and its fan-out."""

    def __init__(self, pool: asyncpg.Pool, dsn: str) -> None:
        self._pool = pool
        self._dsn = dsn
        self._watchers: dict[str, set[_Watcher]] = defaultdict(set)
        self._count = 0
        self._wanted = asyncio.Event()
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._cursor: EventKey | None = None

    async def run(self) -> None:
        """Serve watchers until cancelled (the server runs this as a background task)."""
        while True:
            await self._wanted.wait()
            listener = Listener(
                self._dsn,
                CHANNEL,
                self._notified,
                on_connect=self._wake.set,
                application_name=APPLICATION_NAME,
            )
            listening = asyncio.create_task(listener.run())
            try:
                await self._fan_out(listener)
            except Exception:  # the hub must outlive any one failure; watchers resume from the log
                log.warning("ledger event fan-out failed; retrying", exc_info=True)
                await asyncio.sleep(1.0)
            finally:
                self._ready.clear()
                await cancel_and_wait(listening)
            if self._count == 0:
                self._wanted.clear()
                self._cursor = None

    async def _fan_out(self, listener: Listener) -> None:
        await listener.listening.wait()
        if self._cursor is None:
            self._cursor = EventKey(int(await self._pool.fetchval(_HORIZON)), 0)
        self._ready.set()
        while self._count > 0:
            self._wake.clear()
            await self._drain()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(POLL_SECONDS):
                    await self._wake.wait()

    def _notified(self, _payload: str) -> None:
        self._wake.set()

    async def _drain(self) -> None:
        assert self._cursor is not None
        while True:
            rows = await self._pool.fetch(_EVENTS, self._cursor.xid, self._cursor.seq, _PAGE)
            for row in rows:
                event = _event(row)
                self._cursor = event.key
                for user_id in {event.transfer.from_user_id, event.transfer.to_user_id}:
                    if user_id is not None:
                        for watcher in self._watchers.get(user_id, ()):
                            watcher.push(event)
            if len(rows) < _PAGE:
                return

    async def watch(self, user_id: str, after: EventKey | None) -> AsyncIterator[TransferEvent | None]:
        """Every event touching `user_id` after `after` (None: from now on), live, until closed.

        The first item is None, once the watch is registered: from then on nothing is missed.
        """
        watcher = _Watcher(user_id)
        self._watchers[user_id].add(watcher)
        self._count += 1
        try:
            self._wanted.set()
            self._wake.set()
            await self._ready.wait()
            last = after
            start: _Snapshot | None = None
            if last is None:
                # Events of transactions committed before now are history; those still running
                # (or not yet begun) are what this watch must deliver.
                start = _Snapshot.parse(str(await self._pool.fetchval(_SNAPSHOT)))
                last = EventKey(start.xmin, 0)
            yield None
            yield_from_table = after is not None
            while True:
                if yield_from_table:
                    watcher.overflowed = False
                    watcher.events.clear()
                    async for event in self._catch_up(user_id, last):
                        last = event.key
                        if start is None or start.is_future(event.key.xid):
                            yield event
                    yield_from_table = False
                while watcher.events:
                    event = watcher.events.popleft()
                    if event.key > last:
                        last = event.key
                        if start is None or start.is_future(event.key.xid):
                            yield event
                if watcher.overflowed:
                    yield_from_table = True
                    continue
                watcher.wake.clear()
                await watcher.wake.wait()
        finally:
            self._watchers[user_id].discard(watcher)
            if not self._watchers[user_id]:
                del self._watchers[user_id]
            self._count -= 1

    async def _catch_up(self, user_id: str, after: EventKey) -> AsyncIterator[TransferEvent]:
        while True:
            rows = await self._pool.fetch(_USER_EVENTS, after.xid, after.seq, user_id, _PAGE)
            for row in rows:
                event = _event(row)
                after = event.key
                yield event
            if len(rows) < _PAGE:
                return
