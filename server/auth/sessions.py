"""Ended sessions: the access tokens of a session stop working when it ends, not when they expire.

Access tokens are checked without the database, so each server process keeps the ids of the
sessions that ended (Logout, ChangePassword, a reused refresh token) within an access token's
lifetime. A session ended through this process counts at once; one ended through another replica
counts here after the next poll of the sessions table (every POLL_SECONDS). While polls fail for
longer than STALE_SECONDS the list may be missing sessions, and `current` says so: the interceptor
then refuses authenticated calls with UNAVAILABLE rather than trust it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import asyncpg

from server.auth.tokens import LEEWAY_SECONDS
from server.db import errors as db_errors

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
APPLICATION_NAME = "sendinchat-session-poller"  # how the poller's connection shows in pg_stat_activity
STALE_SECONDS = 10.0
POLL_TIMEOUT_SECONDS = 5.0
# A session's revoked_at is its transaction's start time, visible only once it commits: each poll
# reaches this far behind the previous one's database time, so a revocation committing up to this
# long after it started is still seen (the revoking statements are single short transactions).
OVERLAP = timedelta(seconds=10)
# One row whatever matches: the database's own time (the next poll's cursor) and the ids.
_ENDED_SINCE = """
SELECT now() AS polled_at, coalesce(array_agg(id::text), '{}') AS ended
FROM sessions WHERE revoked_at > coalesce($1, now() - make_interval(secs => $2))
"""


class EndedSessions:
    """The sessions ended recently enough that some of their access tokens may still be unexpired."""

    def __init__(self, *, access_ttl_seconds: float) -> None:
        # What a first poll reads, and how long an entry is kept: by then its tokens have expired.
        self._keep_seconds = access_ttl_seconds + LEEWAY_SECONDS + OVERLAP.total_seconds()
        self._ended: OrderedDict[str, float] = OrderedDict()  # id -> when this process learned it
        self._subscribers: list[Callable[[str], None]] = []
        self._cursor: datetime | None = None
        self._current_until = 0.0  # monotonic time until which the last good poll vouches

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._ended

    @property
    def current(self) -> bool:
        """True while a poll succeeded within STALE_SECONDS (the list misses nothing older)."""
        return time.monotonic() < self._current_until

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call `callback(session_id)` once for every session that ends from now on."""
        self._subscribers.append(callback)

    def end(self, session_ids: Iterable[str]) -> None:
        """Record sessions as ended (idempotent), then tell the subscribers about the new ones."""
        now = time.monotonic()
        new = [sid for sid in dict.fromkeys(session_ids) if sid not in self._ended]
        for session_id in new:
            self._ended[session_id] = now
        for session_id in new:
            for callback in self._subscribers:
                try:
                    callback(session_id)
                except Exception:
                    log.exception("a subscriber failed on the end of session %s", session_id)

    async def poll(self, db: asyncpg.Pool | asyncpg.Connection) -> None:
        """Learn the sessions ended since the last poll (on the first, within a token's lifetime)."""
        started = time.monotonic()
        async with asyncio.timeout(POLL_TIMEOUT_SECONDS):
            row = await db.fetchrow(_ENDED_SINCE, self._cursor, self._keep_seconds)
        assert row is not None  # an aggregate without GROUP BY returns one row
        self.end(row["ended"])
        self._cursor = row["polled_at"] - OVERLAP
        self._current_until = started + STALE_SECONDS
        horizon = started - self._keep_seconds
        while self._ended and next(iter(self._ended.values())) < horizon:
            self._ended.popitem(last=False)

    async def try_poll(self, db: asyncpg.Pool | asyncpg.Connection) -> bool:
        """poll(), logging instead of raising when the database cannot answer; True if it could."""
        try:
            await self.poll(db)
        except Exception:  # the poller must outlive any one failure
            # The cursor stays where the last good poll left it: the next one catches up.
            log.warning("cannot read ended sessions; retrying", exc_info=True)
            return False
        return True

    async def poll_forever(self, dsn: str) -> None:
        """Poll every POLL_SECONDS until cancelled, on a connection of its own.

        A pool busy with slow calls must not starve the poll: every authenticated call would fail.
        """
        conn: asyncpg.Connection | None = None
        try:
            while True:
                await asyncio.sleep(POLL_SECONDS)
                if conn is None:
                    conn = await _connect(dsn)
                if conn is not None and not await self.try_poll(conn):
                    conn.terminate()  # a timed-out query leaves it unusable: start afresh
                    conn = None
        finally:
            if conn is not None:
                conn.terminate()


async def _connect(dsn: str) -> asyncpg.Connection | None:
    try:
        async with asyncio.timeout(POLL_TIMEOUT_SECONDS):
            return await asyncpg.connect(dsn, server_settings={"application_name": APPLICATION_NAME})
    except Exception as exc:
        # Whatever the classifier calls a failure to connect, or the poller would die with it:
        # in a failover, "no host accepts writes yet" (asyncpg's TargetServerAttributeNotMatched).
        if not db_errors.is_connect_failure(exc):
            raise
        log.warning("cannot connect to read ended sessions; retrying", exc_info=True)
        return None
