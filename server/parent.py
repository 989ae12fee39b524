"""The parent of SENDINCHAT_WORKERS processes (server/workers.py): one port, one /metrics."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import tempfile
from pathlib import Path

import asyncpg

from server.bootstrap import ensure_admin
from server.config import Config
from server.db.embedded import pid_alive
from server.db.pool import create_pool
from server.observability import LogWriter, forget_worker, supervision_metrics, worker_metrics
from server.ports import reserve_address
from server.process import start_metrics, stop_event
from server.validation import ascii_digits
from server.workers import Supervisor, WorkerError, WorkerOrders

log = logging.getLogger(__name__)

_METRICS_PREFIX = "sendinchat-metrics-"  # then the parent's pid: a killed parent's folder is known

# Outside its pool a replica holds a connection each for chat's LISTEN, the session poller and
# (while someone watches) the ledger's LISTEN.
_OWN_CONNECTIONS_PER_REPLICA = 3


async def serve_workers(config: Config, dsn: str, jwt_secret: str, log_writer: LogWriter) -> None:
    """The parent of SENDINCHAT_WORKERS processes (server/workers.py): one port, one /metrics."""
    pool = await create_pool(dsn, size=1)
    try:
        await ensure_admin(config, pool, jwt_secret)
        await _check_connection_budget(config, pool)
    finally:
        await pool.close()
    with reserve_address(config.address) as (address, port), contextlib.ExitStack() as stack:
        env = dict(os.environ)
        metrics_dir = ""
        if config.metrics_address:
            _remove_dead_parents_metrics()
            metrics_dir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"{_METRICS_PREFIX}{os.getpid()}-")
            )
            # Read as each worker's interpreter starts, as prometheus-client requires.
            env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        supervisor = Supervisor(
            count=config.workers,
            orders=WorkerOrders(address=address, dsn=dsn, jwt_secret=jwt_secret),
            env=env,
            relay=log_writer.relay,
            on_exit=functools.partial(forget_worker, directory=metrics_dir) if metrics_dir else None,
        )
        if metrics_dir:
            registry = worker_metrics(metrics_dir)
            supervision_metrics(
                registry, serving=lambda: supervisor.serving, restarts=lambda: supervisor.restarts
            )
            stack.callback(start_metrics(config, registry).shutdown)
        stop = stop_event()
        clean = False
        try:
            if await supervisor.start(stop):
                log.info(
                    "serving gRPC on %s (port %d) with %d workers (pids %s)",
                    config.address,
                    port,
                    config.workers,
                    " ".join(map(str, supervisor.pids)),
                )
                await supervisor.wait(stop)
            log.info(
                "shutting down: %d workers draining for up to %.1f s",
                config.workers,
                config.shutdown_grace_seconds,
            )
        finally:
            clean = await supervisor.stop()
    if not clean:
        raise WorkerError("a worker did not stop cleanly (see its log lines)")
    log.info("stopped")


async def _check_connection_budget(config: Config, pool: asyncpg.Pool) -> None:
    """Warn when the workers together may open more connections than the database accepts."""
    try:
        limit = int(await pool.fetchval("SELECT current_setting('max_connections')::int"))
        reserved = int(await pool.fetchval("SELECT current_setting('superuser_reserved_connections')::int"))
    except asyncpg.PostgresError:  # a proxy in front of the database may not tell; nothing to warn about
        return
    need = config.workers * (config.db_pool_size + _OWN_CONNECTIONS_PER_REPLICA)
    if need > limit - reserved:
        log.warning(
            "%d workers may open %d connections (pool of %d + %d each), more than the %d this database"
            " accepts (max_connections %d): lower SENDINCHAT_DB_POOL_SIZE or SENDINCHAT_WORKERS",
            config.workers,
            need,
            config.db_pool_size,
            _OWN_CONNECTIONS_PER_REPLICA,
            limit - reserved,
            limit,
        )


def _remove_dead_parents_metrics() -> None:
    """Remove the metrics folders of parents that were killed (SIGKILL leaves them behind)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_METRICS_PREFIX}*-*"):
        pid = folder.name.removeprefix(_METRICS_PREFIX).partition("-")[0]
        if ascii_digits(pid) and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
