"""LISTEN on a connection of its own: reconnect with backoff, notice a dead connection, resync after.

A pooled connection never LISTENs (the pool skips its reset query, so a LISTEN could outlive its
user). Notifications are wake-ups only: whoever listens keeps its log in a table, and after every
(re)connect `on_connect` runs, since what was notified while the connection was away is gone. A
connection can die without a word (a half-open TCP connection after a failover or a cut cable), so
the listener also runs a probe query every PROBE_SECONDS and starts over when it does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import asyncpg

log = logging.getLogger(__name__)

PROBE_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0
_BACKOFF_START_SECONDS = 0.2
_BACKOFF_MAX_SECONDS = 5.0


class Listener:
    """Delivers the payloads of one channel's notifications until cancelled."""

    def __init__(
        self,
        dsn: str,
        channel: str,
        on_notify: Callable[[str], None],
        *,
        on_connect: Callable[[], None] = lambda: None,
        application_name: str = "sendinchat-listener",
    ) -> None:
        self._dsn = dsn
        self._channel = channel
        self._on_notify = on_notify
        self._on_connect = on_connect
        self._application_name = application_name
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """LISTEN until cancelled, reconnecting whenever the connection is lost."""
        backoff = _BACKOFF_START_SECONDS
        while True:
            try:
                conn = await asyncpg.connect(
                    self._dsn, server_settings={"application_name": self._application_name}
                )
            except Exception as exc:
                log.warning(
                    "listener on %s cannot connect (%r); retrying in %.1f s", self._channel, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_SECONDS)
                continue
            try:
                await self._serve(conn)
                backoff = _BACKOFF_START_SECONDS
            except Exception as exc:
                log.warning("listener on %s lost its connection (%r); reconnecting", self._channel, exc)
                await asyncio.sleep(backoff)
            finally:
                self.listening.clear()
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=2))

    async def _serve(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        await conn.add_listener(self._channel, self._deliver)
        self._on_connect()
        self.listening.set()
        while not lost.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_SECONDS):
                    await lost.wait()
            if not lost.is_set():
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    await conn.fetchval("SELECT 1")
        raise ConnectionError("the connection was closed")

    def _deliver(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            self._on_notify(str(payload))
        except Exception:  # one bad payload must not end the listener
            log.exception("a %s notification could not be handled: %.200r", self._channel, payload)
