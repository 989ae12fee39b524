"""Test harness: one PostgreSQL per session, a fresh migrated database and a real server per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2_grpc

from sendinchat.v1 import chat_pb2_grpc, ledger_pb2_grpc, users_pb2_grpc
from server.app import RunningServer, create_server
from server.bootstrap import run_migrations
from server.config import Config
from server.db.embedded import EmbeddedPostgres
from server.db.pool import create_pool

REPO = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = REPO / ".sendinchat" / "test"
TEST_JWT_SECRET = "test-secret-" + "x" * 40

TEST_CONFIG = Config(
    address="127.0.0.1:0",
    database_url="postgresql://unused",
    jwt_secret=TEST_JWT_SECRET,
    bcrypt_rounds=4,
    db_pool_size=8,
    metrics_address="",
    shutdown_grace_seconds=2.0,
    login_attempts_per_username_and_peer=1000,
    login_attempts_per_username=1000,
    login_attempts_per_peer=100000,
)


class Postgres:
    """The session's PostgreSQL: the embedded one, or SENDINCHAT_TEST_DATABASE_URL's server."""

    def __init__(self) -> None:
        self._embedded: EmbeddedPostgres | None = None
        url = os.environ.get("SENDINCHAT_TEST_DATABASE_URL")
        if url:
            self.admin_url = url
        else:
            self._embedded = EmbeddedPostgres(TEST_DATA_DIR)
            self.admin_url = self._embedded.uri("postgres")
        self.template = f"sendinchat_template_{uuid.uuid4().hex[:8]}"

    @property
    def embedded(self) -> EmbeddedPostgres | None:
        """The embedded server, unless SENDINCHAT_TEST_DATABASE_URL names another."""
        return self._embedded

    @property
    def bin_dir(self) -> Path | None:
        """The embedded server's binaries (pgbench, psql), if embedded."""
        return None if self._embedded is None else self._embedded.bin_dir

    def url_for(self, database: str) -> str:
        """The admin URL with its database swapped."""
        base, _, query = self.admin_url.partition("?")
        base = base.rsplit("/", 1)[0] + "/" + database
        return base + ("?" + query if query else "")

    async def create_template(self) -> None:
        """Create and migrate the template every test database is cloned from."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{self.template}"')
        finally:
            await conn.close()
        await run_migrations(self.url_for(self.template))

    async def create_database(self) -> str:
        """A fresh, migrated database; returns its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await conn.close()
        return self.url_for(name)

    async def create_empty_database(self) -> str:
        """A fresh database with no schema (for migration tests)."""
        name = f"empty_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.url_for(name)

    async def drop_database(self, url: str) -> None:
        """Drop a test database, disconnecting whoever is still on it."""
        name = url.partition("?")[0].rsplit("/", 1)[1]
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@dataclass
class Stubs:
    """Typed async stubs for every service over one channel."""

    channel: grpc.aio.Channel
    users: users_pb2_grpc.UserServiceAsyncStub = field(init=False)
    ledger: ledger_pb2_grpc.LedgerServiceAsyncStub = field(init=False)
    chat: chat_pb2_grpc.ChatServiceAsyncStub = field(init=False)
    health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.users = users_pb2_grpc.UserServiceStub(self.channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self.channel)
        self.chat = chat_pb2_grpc.ChatServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)


@dataclass
class TestServer:
    """A real server on a local port, its database and stubs to call it."""

    config: Config
    database_url: str
    pool: asyncpg.Pool
    running: RunningServer
    stubs: Stubs

    @property
    def address(self) -> str:
        """host:port the server listens on."""
        return f"127.0.0.1:{self.running.port}"


class ServerFactory:
    """Starts servers for one test and stops them all afterwards."""

    def __init__(self, postgres: Postgres) -> None:
        self._postgres = postgres
        self._servers: list[TestServer] = []
        self._databases: list[str] = []

    async def database(self) -> str:
        """A fresh migrated database for this test."""
        url = await self._postgres.create_database()
        self._databases.append(url)
        return url

    async def empty_database(self) -> str:
        """A fresh database with no schema for this test (migration tests)."""
        url = await self._postgres.create_empty_database()
        self._databases.append(url)
        return url

    async def start(self, database_url: str | None = None, **overrides: object) -> TestServer:
        """A server on a free port, on database_url (default: a fresh database)."""
        url = database_url or await self.database()
        config = replace(TEST_CONFIG, database_url=url, **overrides)  # type: ignore[arg-type]  # test overrides
        pool = await create_pool(url, size=config.db_pool_size)
        running = await create_server(config, pool, jwt_secret=config.jwt_secret or TEST_JWT_SECRET)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
        server = TestServer(config, url, pool, running, Stubs(channel))
        self._servers.append(server)
        return server

    async def close(self) -> None:
        """Stop every server, close pools and channels, drop the databases."""
        for server in self._servers:
            await server.stubs.channel.close(None)
            await server.running.stop()
            await server.pool.close()
        for url in self._databases:
            await self._postgres.drop_database(url)


async def server_factory_for(postgres: Postgres) -> AsyncIterator[ServerFactory]:
    """Yield a factory and clean it up afterwards."""
    factory = ServerFactory(postgres)
    try:
        yield factory
    finally:
        await factory.close()
