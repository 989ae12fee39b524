"""A TCP proxy in front of the test PostgreSQL that can be cut, to make the database unreachable."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit


class DatabaseProxy:
    """Listens on 127.0.0.1 and forwards to PostgreSQL (Unix socket or TCP); `cut()` drops everything."""

    def __init__(self, admin_url: str) -> None:
        parts = urlsplit(admin_url)
        socket_dir = parse_qs(parts.query).get("host", [""])[0]
        self._unix_path: str | None = None
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        if socket_dir.startswith("/"):
            self._unix_path = f"{socket_dir}/.s.PGSQL.{parts.port or 5432}"
        self._userinfo = parts.netloc.rpartition("@")[0]
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    def url_for(self, database_url: str) -> str:
        """A URL for the same database, through the proxy."""
        database = urlsplit(database_url).path.lstrip("/")
        return f"postgresql://{self._userinfo}@127.0.0.1:{self.port}/{database}"

    async def start(self) -> None:
        """Accept connections (on the same port as before, after a cut)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        """Stop listening and abort every proxied connection: the database is now unreachable."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def close(self) -> None:
        """Cut if still running."""
        if self._server is not None:
            await self.cut()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self._unix_path is not None:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(self._unix_path)
        else:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        self._writers.update((client_writer, upstream_writer))
        for source, sink in ((client_reader, upstream_writer), (upstream_reader, client_writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(sink)
            with contextlib.suppress(Exception):
                sink.transport.abort()
