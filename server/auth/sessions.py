"""Ended sessions: the access tokens of a session stop working when it ends, not when they expire.

Access tokens are checked without the database, so each server process keeps the ids of the
sessions that ended (Logout, ChangePassword, a reused refresh token) within an access token's
lifetime. A session ended through this process counts at once; one ended through another replica
counts here after the next poll of the sessions table (every POLL_SECONDS).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

import asyncpg

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# A session's revoked_at is its transaction's start time, visible only once it commits: each poll
# looks this far further back than the time since the last one, so a slow commit is not missed.
OVERLAP_SECONDS = 30.0
_ENDED_WITHIN = (
    "SELECT id::text FROM sessions "
    "WHERE revoked_at IS NOT NULL AND revoked_at > now() - make_interval(secs => $1)"
)


class EndedSessions:
    """The sessions ended recently enough that some of their access tokens may still be unexpired."""

    def __init__(self, *, token_lifetime_seconds: float) -> None:
        # Polls cover this much; entries are dropped after it (their tokens have all expired).
        self._keep_seconds = token_lifetime_seconds + OVERLAP_SECONDS
        self._ended: dict[str, float] = {}  # session id -> when this process learned of it
        self._subscribers: list[Callable[[str], None]] = []
        self._last_poll: float | None = None

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._ended

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Call `callback(session_id)` once for every session that ends from now on."""
        self._subscribers.append(callback)

    def end(self, session_ids: Iterable[str]) -> None:
        """Record sessions as ended (idempotent) and tell the subscribers about the new ones."""
        now = time.monotonic()
        for session_id in session_ids:
            if session_id not in self._ended:
                self._ended[session_id] = now
                for callback in self._subscribers:
                    callback(session_id)

    async def poll(self, pool: asyncpg.Pool) -> None:
        """Learn the sessions ended since the last poll (on the first, within a token's lifetime)."""
        started = time.monotonic()
        window = self._keep_seconds
        if self._last_poll is not None:
            window = min(window, started - self._last_poll + OVERLAP_SECONDS)
        rows = await pool.fetch(_ENDED_WITHIN, window)
        self._last_poll = started
        self.end(row[0] for row in rows)
        self._forget_older_than(started - self._keep_seconds)

    async def poll_forever(self, pool: asyncpg.Pool) -> None:
        """Keep polling every POLL_SECONDS until cancelled; a failed poll is retried on the next tick."""
        while True:
            await asyncio.sleep(POLL_SECONDS)
            await self.try_poll(pool)

    async def try_poll(self, pool: asyncpg.Pool) -> bool:
        """poll(), logging instead of raising when the database cannot answer."""
        try:
            await self.poll(pool)
        except Exception:  # the poller must outlive any one failure
            # The next window reaches back to the last good poll: nothing is missed.
            log.warning("cannot read ended sessions; retrying", exc_info=True)
            return False
        return True

    def _forget_older_than(self, horizon: float) -> None:
        if next(iter(self._ended.values()), horizon) >= horizon:
            return  # the oldest entry (dicts keep insertion order) is still needed
        self._ended = {sid: at for sid, at in self._ended.items() if at >= horizon}
