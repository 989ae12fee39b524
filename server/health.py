"""grpc.health.v1 status: SERVING only while the database answers and no gate is closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import asyncpg
from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from server.observability import Metrics

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 2.0


class HealthState:
    """Combines named gates (database, ledger audit, shutdown) into the served health status."""

    def __init__(
        self, servicer: HealthServicer, service_names: list[str], metrics: Metrics, *, gates: tuple[str, ...]
    ) -> None:
        self.servicer = servicer
        self._service_names = ["", *service_names]
        self._metrics = metrics
        self._gates: dict[str, bool] = dict.fromkeys(gates, False)
        self._published: bool | None = None

    def set_gate(self, name: str, ok: bool) -> None:
        """Open or close one gate; the status is SERVING when every gate is open."""
        if self._gates.get(name) is ok:
            return
        self._gates[name] = ok
        if name == "database":
            self._metrics.database_up.set(1 if ok else 0)
        if not ok:
            log.warning("health gate %s closed", name)

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
        """Check the database once and publish the result.

        A pool with every connection busy is a loaded replica, not a broken one: when no
        connection frees up within the timeout, the previous verdict stands.
        """
        try:
            connection = await pool.acquire(timeout=PROBE_TIMEOUT_SECONDS)
        except TimeoutError:
            return
        except Exception:
            ok = False
        else:
            ok = False
            try:
                async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
                    ok = await connection.fetchval("SELECT 1") == 1
            except Exception:
                ok = False
            finally:
                with contextlib.suppress(Exception):
                    await pool.release(connection)
        self.set_gate("database", ok)
        await self.publish()

    async def watch_database(self, pool: asyncpg.Pool) -> None:
        """Probe the database forever (cancel to stop)."""
        while True:
            await self.probe_database(pool)
            await asyncio.sleep(PROBE_INTERVAL_SECONDS)
