"""Background jobs, started and stopped by app.py: audit, expiry sweepers, ended login counters.

Each sweep is one SQL function safe to run from every replica at once (SKIP LOCKED); a round that
fails (the database away) is logged and the next round retries. The start-up audit keeps health
NOT_SERVING while the ledger breaks an invariant; when the database cannot answer it, the audit
is retried each round until it has run once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg

from server.chat import payments
from server.chat.bus import Publisher
from server.db import errors as db_errors
from server.health import HealthState
from server.ledger import transfers
from server.ledger.audit import audit_ledger
from server.users import throttle

log = logging.getLogger(__name__)

PENDING_SWEEP_SECONDS = 1.0
PAYMENT_REQUEST_SWEEP_SECONDS = 5.0
LOGIN_COUNTER_SWEEP_SECONDS = 60.0


@dataclass(eq=False)
class Jobs:
    """The periodic work of one replica."""

    pool: asyncpg.Pool
    health: HealthState
    login_limits: throttle.LoginLimits
    chat_bus: Publisher
    _audited: bool = field(default=False, init=False)

    async def audit(self) -> None:
        """Audit the ledger once; a broken invariant closes the `ledger_audit` health gate."""
        try:
            report = await audit_ledger(self.pool)
        except Exception as exc:
            if not db_errors.is_transient(exc):
                raise
            log.warning("ledger audit could not run (%r); will retry", exc)
            return
        self._audited = True
        for violation in report.violations:
            log.error(
                "ledger audit: %s %s %s %s",
                violation.kind,
                violation.currency,
                violation.account_id,
                violation.detail,
            )
        self.health.set_gate("ledger_audit", report.ok)
        await self.health.publish()

    async def run(self) -> None:
        """Run every job until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(
                _every(PENDING_SWEEP_SECONDS, "expiring pending transfers", self._pending_round)
            )
            group.create_task(
                _every(
                    PAYMENT_REQUEST_SWEEP_SECONDS, "expiring payment requests", self._payment_request_round
                )
            )
            group.create_task(
                _every(
                    LOGIN_COUNTER_SWEEP_SECONDS, "forgetting ended login counters", self._login_counter_round
                )
            )

    async def _pending_round(self) -> None:
        if not self._audited:
            await self.audit()
        await transfers.expire_due(self.pool)

    async def _login_counter_round(self) -> None:
        async with self.pool.acquire() as conn:
            await throttle.forget_ended_windows(conn, self.login_limits)

    async def _payment_request_round(self) -> None:
        while await payments.expire_due_requests(self.pool, self.chat_bus) > 0:
            pass


async def _every(seconds: float, what: str, work: Callable[[], Awaitable[None]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception as exc:  # a job outlives any one failure; the next round retries
            log.warning("%s failed (%r); will retry", what, exc, exc_info=not db_errors.is_transient(exc))
