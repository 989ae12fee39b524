"""Stream lifetimes: a streaming RPC ends when its token expires, its session ends, or the server stops.

Each stream runs inside an asyncio timeout scope whose deadline is its access token's expiry;
ending a session or shutting down reschedules the scopes to now, and the reason decides the
status the stream ends with (UNAUTHENTICATED, or UNAVAILABLE so clients resume elsewhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

from server import errors
from server.auth.principal import Principal

T = TypeVar("T")

# Streams of one method (Connect, WatchTransfers) one user may hold open on one server process:
# phones, tabs, a desktop are far below this.
MAX_STREAMS_PER_USER = 32

SESSION_ENDED = (
    "the session of this access token has ended (logout, password change or a reused refresh token); "
    "log in again"
)


class StreamLifetimes:
    """Ends streaming RPCs when the caller's token expires or session ends, or the server shuts down."""

    def __init__(self) -> None:
        self._scopes: set[asyncio.Timeout] = set()
        self._by_session: dict[str, set[asyncio.Timeout]] = {}
        self._session_ended: set[asyncio.Timeout] = set()
        self.closing = False

    async def run(self, call: Callable[[], Awaitable[T]], principal: Principal | None) -> T:
        """Run a streaming handler until it returns, its token expires, end_session() or close_all()."""
        if self.closing:
            raise errors.UnavailableError("server is shutting down; reconnect to another replica")
        loop = asyncio.get_running_loop()
        deadline = None if principal is None else loop.time() + (principal.expires_at - time.time())
        scope = asyncio.timeout_at(deadline)
        session_id = None if principal is None else principal.session_id
        try:
            async with scope:
                self._track(scope, session_id)
                try:
                    return await call()
                finally:
                    self._untrack(scope, session_id)
        except TimeoutError:
            if not scope.expired():
                raise
            if self.closing:
                raise errors.UnavailableError("server is shutting down; reconnect and resume") from None
            if scope in self._session_ended:
                raise errors.UnauthenticatedError(SESSION_ENDED, reason="SESSION_ENDED") from None
            raise errors.UnauthenticatedError(
                "access token expired; reconnect with a fresh token", reason="TOKEN_EXPIRED"
            ) from None
        finally:
            self._session_ended.discard(scope)

    def _track(self, scope: asyncio.Timeout, session_id: str | None) -> None:
        self._scopes.add(scope)
        if session_id is not None:
            self._by_session.setdefault(session_id, set()).add(scope)

    def _untrack(self, scope: asyncio.Timeout, session_id: str | None) -> None:
        self._scopes.discard(scope)
        if session_id is not None and (session := self._by_session.get(session_id)) is not None:
            session.discard(scope)
            if not session:
                del self._by_session[session_id]

    def end_session(self, session_id: str) -> None:
        """End the open streams of a session that ended (they finish with UNAUTHENTICATED)."""
        scopes = self._by_session.pop(session_id, set())
        if scopes:
            now = asyncio.get_running_loop().time()
            for scope in scopes:
                if not scope.expired():  # an expiring one is ending already, and refuses a reschedule
                    self._session_ended.add(scope)
                    scope.reschedule(now)

    def close_all(self) -> None:
        """End every open stream now (they finish with UNAVAILABLE)."""
        self.closing = True
        now = asyncio.get_running_loop().time()
        for scope in list(self._scopes):
            if not scope.expired():
                scope.reschedule(now)


class StreamQuota:
    """At most MAX_STREAMS_PER_USER open streams of one method per user; the next is RESOURCE_EXHAUSTED."""

    def __init__(self, method: str) -> None:
        self._method = method
        self._open: Counter[str] = Counter()

    @contextlib.contextmanager
    def held(self, user_id: str) -> Iterator[None]:
        """One of the user's streams, for as long as the block runs."""
        if self._open[user_id] >= MAX_STREAMS_PER_USER:
            raise errors.RateLimitedError(
                f"at most {MAX_STREAMS_PER_USER} {self._method} streams a user at once; close one",
                retry_after_seconds=1.0,
            )
        self._open[user_id] += 1
        try:
            yield
        finally:
            self._open[user_id] -= 1
            if not self._open[user_id]:
                del self._open[user_id]
