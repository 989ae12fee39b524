"""grpc.health.v1 status: SERVING only while a read-write database answers and no gate is closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from server.observability import Metrics

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0
APPLICATION_NAME = "sendinchat-health"  # how the probe's connection shows in pg_stat_activity
# 'off' only where a transaction may write: 'on' on a standby (hot standby) and on a primary
# fenced with default_transaction_read_only, both of which refuse every write with 25006.
_READ_WRITE = "SELECT current_setting('transaction_read_only') = 'off'"


class HealthState:
    """Combines named gates (database, ledger audit, shutdown) into the served health status.

    The database gate follows a probe on a connection of its own (opened from `dsn`, so a
    multi-host URL with target_session_attrs=read-write finds the current primary): every
    PROBE_INTERVAL_SECONDS, and at once when that connection is lost. A pool busy with slow calls
    cannot delay the probe, and a probe that fails or lands on a read-only server closes the gate
    within about a second of the primary going away.
    """

    def __init__(
        self,
        servicer: HealthServicer,
        service_names: list[str],
        metrics: Metrics,
        *,
        gates: tuple[str, ...],
        dsn: str,
    ) -> None:
        self.servicer = servicer
        self._service_names = ["", *service_names]
        self._metrics = metrics
        self._gates: dict[str, bool] = dict.fromkeys(gates, False)
        self._published: bool | None = None
        self._dsn = dsn
        self._connection: asyncpg.Connection | None = None
        self._probing = asyncio.Lock()  # the watcher and a direct call never share the connection at once
        self._lost = asyncio.Event()

    def set_gate(self, name: str, ok: bool) -> None:
        """Open or close one gate; the status is SERVING when every gate is open."""
        if self._gates.get(name) is ok:
            return
        self._gates[name] = ok
        if name == "database":
            self._metrics.database_up.set(1 if ok else 0)
        if not ok:
            log.warning("health gate %s closed", name)
        else:
            log.info("health gate %s open", name)

    @property
    def serving(self) -> bool:
        """True when every gate is open."""
        return all(self._gates.values())

    async def publish(self) -> None:
        """Push the current status to every service name (and to Watch streams) when it changed."""
        if self._published is self.serving:
            return
        self._published = self.serving
        value = (
            health_pb2.HealthCheckResponse.SERVING
            if self.serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._service_names:
            await self.servicer.set(name, value)

    async def probe_database(self, pool: asyncpg.Pool) -> None:
        """Check once that a read-write database answers, and publish the result.

        When the database goes away (or the server turns read-only), the pool's idle connections
        are expired too: they may be half-open, or on a server that refuses writes, and every
        call handed one would fail or hang before the pool opened a fresh one.
        """
        async with self._probing:
            ok = await self._read_write()
            if not ok and self._gates.get("database"):
                await pool.expire_connections()
            self.set_gate("database", ok)
            await self.publish()

    async def watch_database(self, pool: asyncpg.Pool) -> None:
        """Probe the database forever (cancel to stop)."""
        try:
            while True:
                self._lost.clear()
                await self.probe_database(pool)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(PROBE_INTERVAL_SECONDS):
                        await self._lost.wait()
        finally:
            self._drop_connection()

    async def _read_write(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                if self._connection is None or self._connection.is_closed():
                    self._connection = await asyncpg.connect(
                        self._dsn, server_settings={"application_name": APPLICATION_NAME}
                    )
                    self._connection.add_termination_listener(self._on_lost)
                writable = await self._connection.fetchval(_READ_WRITE)
        except Exception as exc:  # whatever it is, the database did not answer
            if self._gates.get("database"):
                log.warning("the database health probe failed: %r", exc)
            self._drop_connection()
            return False
        if writable is not True:
            if self._gates.get("database"):
                log.warning("the database health probe reached a read-only server")
            self._drop_connection()  # the next probe connects afresh, to whichever server accepts writes
            return False
        return True

    def _on_lost(self, _connection: object) -> None:
        self._lost.set()

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.remove_termination_listener(self._on_lost)  # a drop of our own is no news
            connection.terminate()
