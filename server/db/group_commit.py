"""Group commit: concurrent requests share one statement (one round trip, one commit), each its own answer.

A batch leaves once as many requests wait as left in the previous one, or after a short linger,
so a lone caller waits for nobody; requests that arrive while `max_in_flight` batches run wait for
one to return. If a batch's statement fails because the database is unavailable, its connection
is discarded and every request of the batch gets that error (UNAVAILABLE: retry with the same
request id); if the database refuses it otherwise, every request is retried alone, so an
unexpected error reaches only the request that causes it. Any other error (one that may come
after a commit) fails the batch's requests without a retry.

Subclasses say what a batch is (`_create`) and what one request alone is (`_alone`):
server/ledger/batching.py for transfers, server/chat/sending.py for a room's messages.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Generic, TypeVar

import asyncpg

from server.db import errors as db_errors
from server.db.pool import Connection

log = logging.getLogger(__name__)

OrderT = TypeVar("OrderT")
ResultT = TypeVar("ResultT")


class GroupCommit(abc.ABC, Generic[OrderT, ResultT]):
    """Coalesces concurrent orders into batches, one statement each, over a pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        linger_seconds: float,
        max_batch: int = 256,
        max_in_flight: int = 1,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self._pool = pool
        self._on_idle = on_idle
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[OrderT, asyncio.Future[ResultT]]] = []
        self._in_flight = 0
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # A batch leaves as soon as as many requests wait as left last time, or after the linger.
        # At steady load that keeps batches as large as the load makes them (less database, server
        # and client work per request); a lone caller waits for nobody; when load falls, one batch
        # leaves on the timer and sets the smaller size, so a request waits at most one linger.
        self._expected = 1
        self._linger: asyncio.TimerHandle | None = None
        self._linger_seconds = linger_seconds

    @property
    def idle(self) -> bool:
        """Nothing waits and nothing is in flight."""
        return not self._queue and self._in_flight == 0 and not self._flush_scheduled

    async def submit(self, order: OrderT) -> ResultT:
        """This order's answer (or the error that stopped it)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ResultT] = loop.create_future()
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

    @abc.abstractmethod
    async def _create(
        self, conn: Connection, live: list[tuple[OrderT, asyncio.Future[ResultT]]]
    ) -> list[tuple[asyncio.Future[ResultT], ResultT]]:
        """Each live order's answer, not yet given to its caller (it may settle some itself)."""

    @abc.abstractmethod
    async def _alone(self, order: OrderT) -> ResultT:
        """One order in a statement of its own, on the pool (after its batch failed)."""

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

    async def _run(self, batch: list[tuple[OrderT, asyncio.Future[ResultT]]]) -> None:
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
                        settle(future, result)
            if failure is not None and db_errors.is_unavailable(failure):
                for _, future in live:
                    settle_error(future, failure)
            elif isinstance(failure, asyncpg.PostgresError):
                # The database refused a statement and rolled its transaction back: nothing of the
                # batch stands but what was answered already. On fresh connections, this one given back.
                await self._retry_alone(live, failure)
            elif failure is not None:
                # Anything else may have come after a commit: retrying could store a request twice.
                log.error("a batch of %d failed after its statement (%r)", len(live), failure)
                for _, future in live:
                    settle_error(future, failure)
        except Exception as exc:  # the pool gave no connection (or failed to take it back)
            log.warning("a batch of %d: the pool failed (%r)", len(live), exc)
            for _, future in live:
                settle_error(future, exc)
        finally:
            if in_flight:
                self._returned()
            for _, future in live:
                if not future.done():  # this task was cancelled: never leave a caller waiting
                    future.cancel()
            if self._on_idle is not None and self.idle:
                self._on_idle()

    def _returned(self) -> None:
        self._in_flight -= 1
        if self._queue and len(self._queue) >= self._expected:
            self._flush()
        elif self._queue and self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._linger_seconds, self._flush)

    async def _retry_alone(
        self, live: list[tuple[OrderT, asyncio.Future[ResultT]]], failure: Exception
    ) -> None:
        """After a batch statement failed, each order alone: only the culprit then gets the error."""
        log.warning("a batch of %d failed (%r); retrying each alone", len(live), failure)
        for order, future in live:
            if future.done():
                continue
            try:
                result = await self._alone(order)
            except Exception as single_exc:
                settle_error(future, single_exc)
            else:
                settle(future, result)


def settle(future: asyncio.Future[ResultT], result: ResultT) -> None:
    """Answer a caller that is still waiting."""
    if not future.done():
        future.set_result(result)


def settle_error(future: asyncio.Future[ResultT], exc: BaseException) -> None:
    """Fail a caller that is still waiting."""
    if not future.done():
        future.set_exception(exc)
