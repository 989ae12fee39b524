"""Group commit: concurrent transfer creations share one statement, each keeps its own outcome.

While fewer than `max_in_flight` batches are running, whatever has queued in the current event-loop
tick is sent at once (so a lone caller waits for nobody). Otherwise requests queue and leave together,
up to `max_batch`, as soon as a running batch returns. One batch in flight per process measured best
(bench/README.md): a second one mostly waits for the first one's account locks, and halves both
batches, so the database does more work per transfer. One batch is one call of the PL/pgSQL function
`ledger_create_transfers`: one round trip, one transaction, one row per request (by position).
If the statement itself fails, every request of that batch is retried alone, so an unexpected error
reaches only the request that causes it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

log = logging.getLogger(__name__)

_CREATE_TRANSFERS = """
SELECT * FROM ledger_create_transfers(
    $1::uuid[], $2::uuid[], $3::text[], $4::boolean[], $5::uuid[], $6::uuid[], $7::text[], $8::text[],
    $9::bigint[], $10::text[], $11::timestamptz[])
"""


@dataclass(frozen=True, slots=True)
class TransferOrder:
    """One request to create a transfer, already validated. A None user is the system account."""

    initiator_id: str
    request_id: str
    kind: str
    two_phase: bool
    from_user_id: str | None
    to_user_id: str | None
    to_username: str | None
    currency: str
    amount: int
    memo: str
    expires_at: datetime | None = None


_Pending = tuple[TransferOrder, "asyncio.Future[asyncpg.Record]"]


class TransferBatcher:
    """Coalesces concurrent TransferOrders into batched calls of `ledger_create_transfers`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
        linger_seconds: float = 0.0005,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Pending] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # A batch leaves as soon as about as many requests wait as left last time, or after a
        # short linger: at steady load that keeps batches large (less database work per transfer).
        self._expected = 1
        self._linger: asyncio.TimerHandle | None = None
        self._linger_seconds = linger_seconds
        self.batches = 0
        self.orders = 0

    async def submit(self, order: TransferOrder) -> asyncpg.Record:
        """The function's row for this order (its outcome and, when there is one, the transfer)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[asyncpg.Record] = loop.create_future()
        self._queue.append((order, future))
        if self._in_flight < self._max_in_flight and not self._flush_scheduled:
            if len(self._queue) >= self._expected:
                self._flush_scheduled = True
                if self._linger is not None:
                    self._linger.cancel()
                    self._linger = None
                loop.call_soon(self._flush)
            elif self._linger is None:
                self._linger = loop.call_later(self._linger_seconds, self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        while self._queue and self._in_flight < self._max_in_flight:
            self._expected = max(1, len(self._queue[: self._max_batch]) - 1)
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            live = [item for item in batch if not item[1].done()]
            if not live:
                return
            try:
                rows = await self._execute([order for order, _ in live])
            except Exception as exc:
                if len(live) == 1:
                    _settle_error(live[0][1], exc)
                    return
                log.warning("a batch of %d transfers failed (%r); retrying each alone", len(live), exc)
                for order, future in live:
                    try:
                        (row,) = await self._execute([order])
                    except Exception as single_exc:
                        _settle_error(future, single_exc)
                    else:
                        _settle(future, row)
                return
            by_index = {row["idx"]: row for row in rows}
            for index, (_, future) in enumerate(live, start=1):
                _settle(future, by_index[index])
        finally:
            self._in_flight -= 1
            if self._queue and len(self._queue) >= self._expected:
                self._flush()
            elif self._queue and self._linger is None:
                self._linger = asyncio.get_running_loop().call_later(self._linger_seconds, self._flush)

    async def _execute(self, orders: list[TransferOrder]) -> list[asyncpg.Record]:
        self.batches += 1
        self.orders += len(orders)
        return await self._pool.fetch(
            _CREATE_TRANSFERS,
            [o.initiator_id for o in orders],
            [o.request_id for o in orders],
            [o.kind for o in orders],
            [o.two_phase for o in orders],
            [o.from_user_id for o in orders],
            [o.to_user_id for o in orders],
            [o.to_username for o in orders],
            [o.currency for o in orders],
            [o.amount for o in orders],
            [o.memo for o in orders],
            [o.expires_at for o in orders],
        )


def _settle(future: asyncio.Future[asyncpg.Record], row: asyncpg.Record) -> None:
    if not future.done():
        future.set_result(row)


def _settle_error(future: asyncio.Future[asyncpg.Record], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
