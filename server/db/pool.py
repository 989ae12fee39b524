"""The asyncpg connection pool, tuned for one short transaction per call."""

from __future__ import annotations

import logging
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from server.errors import UnavailableError

log = logging.getLogger(__name__)

# What service functions accept: a bare connection or one checked out of the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
# What servicers hold and pass on, without depending on asyncpg themselves.
Pool: TypeAlias = "asyncpg.Pool[asyncpg.Record]"


async def _connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    # Whatever stops a new connection (refused, reset, "database does not allow connections",
    # too many clients, no host of a multi-host URL accepting writes yet in a failover, credentials
    # refused after a rotation) means the database is unavailable to the caller, not that the
    # request was bad.
    try:
        return await asyncpg.connect(*args, **kwargs)
    except Exception as exc:
        # The cause (host, port, database or role names) goes to the log, never to the client.
        log.warning("cannot connect to the database: %s", exc)
        raise UnavailableError("the database is unavailable; retry later") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    # Short OLTP statements: JIT compilation only adds latency.
    await conn.execute("SET jit = off")


async def _skip_reset(conn: asyncpg.Connection) -> None:
    return None


async def create_pool(dsn: str, *, size: int) -> asyncpg.Pool:
    """A pool of `size` connections.

    The reset query asyncpg runs on every release (RESET ALL, UNLISTEN *, advisory unlock) is
    skipped: no code path leaves session state on a pooled connection (LISTEN uses a dedicated
    connection, advisory locks are transaction-scoped), and it costs a round trip per call.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(2, size),
        max_size=size,
        connect=_connect,
        init=_init_connection,
        reset=_skip_reset,
        command_timeout=30,
    )
    assert pool is not None  # create_pool returns None only when awaited without a loop
    return pool
