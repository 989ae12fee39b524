"""Group commit: concurrent transfer creations share one statement, each keeps its own outcome.

A batch leaves once as many requests wait as left in the previous one, or after a short linger,
so a lone caller waits for nobody; requests that arrive while `max_in_flight` batches run wait for
one to return (one batch in flight measured best: bench/README.md).
One batch is one call of the PL/pgSQL function `ledger_create_transfers`: one round trip, one
transaction, one row per request (by position).
Plain immediate user-to-user transfers (the bulk of the traffic) go instead through the leaner
`ledger_transfer_batch`, which creates every one that cannot fail in one statement; the rare rest
(a retry, short funds, a recipient without an account...) then goes through `ledger_create_transfers`
for its outcome, in a second round trip. If a statement fails because the database is unavailable,
its connection is discarded and every request of the batch gets that error (UNAVAILABLE: retry with
the same request_id); if it fails otherwise, every request is retried alone, so an unexpected error
reaches only the request that causes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from server.config import Config
from server.db import errors as db_errors
from server.db.pool import Connection
from server.ledger.models import Transfer

log = logging.getLogger(__name__)

_CREATE_TRANSFERS = """
SELECT * FROM ledger_create_transfers(
    $1::uuid[], $2::uuid[], $3::text[], $4::boolean[], $5::uuid[], $6::text[], $7::uuid[], $8::text[],
    $9::text[], $10::bigint[], $11::text[], $12::timestamptz[])
"""
_TRANSFER_BATCH = """
SELECT * FROM ledger_transfer_batch($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::bigint[], $6::text[])
"""
# The TransferOrder field behind each argument of the two functions, in order.
_CREATE_TRANSFERS_FIELDS = (
    "initiator_id",
    "request_id",
    "kind",
    "two_phase",
    "from_user_id",
    "from_username",
    "to_user_id",
    "to_username",
    "currency",
    "amount",
    "memo",
    "expires_at",
)
_TRANSFER_BATCH_FIELDS = ("initiator_id", "request_id", "to_user_id", "currency", "amount", "memo")


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
    from_username: str | None = None

    @property
    def plain(self) -> bool:
        """An immediate transfer from the initiator to a user named by id: the lean function's case."""
        return (
            self.kind == "transfer"
            and not self.two_phase
            and self.to_user_id is not None
            and self.from_user_id == self.initiator_id
        )


# The outcome word and, for CREATED and REPLAYED, the transfer.
Result = tuple[str, Transfer | None]
_Pending = tuple[TransferOrder, "asyncio.Future[Result]"]
_Answer = tuple["asyncio.Future[Result]", Result]


class TransferBatcher:
    """Coalesces concurrent TransferOrders into batched calls of `ledger_create_transfers`."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch: int = 256,
        max_in_flight: int = 1,
        linger_seconds: float = Config.transfer_batch_linger_ms / 1000,
    ) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[_Pending] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # A batch leaves as soon as as many requests wait as left last time, or after the linger.
        # At steady load that keeps batches as large as the load makes them (less database, server
        # and client work per transfer); a lone caller waits for nobody; when load falls, one batch
        # leaves on the timer and sets the smaller size, so a request waits at most one linger.
        self._expected = 1
        self._linger: asyncio.TimerHandle | None = None
        self._linger_seconds = linger_seconds
        self.batches = 0
        self.orders = 0

    async def submit(self, order: TransferOrder) -> Result:
        """This order's outcome and, when there is one, its transfer."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
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
            batch = self._queue[: self._max_batch]
            self._expected = len(batch)
            del self._queue[: self._max_batch]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item[1].done()]
        in_flight = True
        try:
            if not live:
                return
            failure: Exception | None = None
            # The next batch leaves, then these callers are answered, all before the connection goes
            # back to the pool (asyncpg releases it in a task of its own, a loop turn later). Leaving
            # first queues the next batch's statement ahead of this batch's replies on the event
            # loop, so the database does not wait for them.
            async with self._pool.acquire() as conn:
                try:
                    answers = await self._create(conn, live)
                except Exception as exc:
                    failure = exc
                    if db_errors.is_unavailable(exc):
                        # Whatever state it is in, the pool opens a fresh one. asyncpg has given
                        # back a connection that the server closed already: nothing to end then.
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                else:
                    in_flight = False
                    self._returned()
                    for future, result in answers:
                        _settle(future, result)
            if failure is not None and db_errors.is_unavailable(failure):
                for _, future in live:
                    _settle_error(future, failure)
            elif failure is not None:
                await self._retry_alone(live, failure)  # on fresh connections, this one given back
        except Exception as exc:  # the pool gave no connection (or failed to take it back)
            log.warning("a batch of %d transfers: the pool failed (%r)", len(live), exc)
            for _, future in live:
                _settle_error(future, exc)
        finally:
            if in_flight:
                self._returned()
            for _, future in live:
                if not future.done():  # this task was cancelled: never leave a caller waiting
                    future.cancel()

    def _returned(self) -> None:
        self._in_flight -= 1
        if self._queue and len(self._queue) >= self._expected:
            self._flush()
        elif self._queue and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._linger_seconds, self._flush)

    async def _retry_alone(self, live: list[_Pending], failure: Exception) -> None:
        """After a batch statement failed, each request alone through the full function.

        Only the culprit then gets the error; a lone plain transfer whose lean statement failed gets
        the full function's answer.
        """
        log.warning("a batch of %d transfers failed (%r); retrying each alone", len(live), failure)
        for order, future in live:
            if future.done():
                continue
            try:
                (row,) = await self._execute(self._pool, [order])
            except Exception as single_exc:
                _settle_error(future, single_exc)
            else:
                _settle(future, _result(row))

    async def _create(self, conn: Connection, live: list[_Pending]) -> list[_Answer]:
        """Each live request's outcome, not yet given to its caller."""
        rest: list[_Pending] = []
        plain: list[_Pending] = []
        keys: set[tuple[str, str]] = set()
        for item in live:
            order = item[0]
            key = (order.initiator_id, order.request_id)
            if order.plain and key not in keys:
                keys.add(key)
                plain.append(item)
            else:
                rest.append(item)
        answers: list[_Answer] = []
        if plain:
            orders = [order for order, _ in plain]
            self.batches += 1
            self.orders += len(orders)
            rows = await conn.fetch(_TRANSFER_BATCH, *_columns(orders, _TRANSFER_BATCH_FIELDS))
            created: set[int] = set()
            for row in rows:
                created.add(row[0] - 1)
                order, future = plain[row[0] - 1]
                created_at = row[4]
                transfer = Transfer(
                    id=str(row[1]),
                    request_id=order.request_id,
                    kind="transfer",
                    state="posted",
                    from_user_id=order.from_user_id,
                    to_user_id=order.to_user_id,
                    from_account_id=str(row[2]),
                    to_account_id=str(row[3]),
                    currency=order.currency,
                    amount=order.amount,
                    posted_amount=order.amount,
                    memo=order.memo,
                    created_at=created_at,
                    expires_at=None,
                    resolved_at=created_at,
                )
                answers.append((future, ("CREATED", transfer)))
            if len(created) < len(plain):
                rest.extend(
                    item for index, item in enumerate(plain) if index not in created and not item[1].done()
                )
        if rest:
            for future, result in answers:  # the created ones need not wait for the second round trip
                _settle(future, result)
            answers = []
            rows = await self._execute(conn, [order for order, _ in rest])
            by_index = {row["idx"]: row for row in rows}
            for index, (_, future) in enumerate(rest, start=1):
                answers.append((future, _result(by_index[index])))
        return answers

    async def _execute(
        self, db: Connection | asyncpg.Pool, orders: list[TransferOrder]
    ) -> list[asyncpg.Record]:
        self.batches += 1
        self.orders += len(orders)
        return await db.fetch(_CREATE_TRANSFERS, *_columns(orders, _CREATE_TRANSFERS_FIELDS))


def _columns(orders: list[TransferOrder], names: tuple[str, ...]) -> list[list[object]]:
    """The orders as one array per argument of a batch function (arrays in, one row per item out)."""
    return [[getattr(order, name) for order in orders] for name in names]


def _result(row: asyncpg.Record) -> Result:
    outcome: str = row["outcome"]
    return outcome, Transfer.from_record(row["transfer"]) if outcome in ("CREATED", "REPLAYED") else None


def _settle(future: asyncio.Future[Result], result: Result) -> None:
    if not future.done():
        future.set_result(result)


def _settle_error(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
