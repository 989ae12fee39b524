"""Many replicas migrating one empty database at once: each migration is applied exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import grpc

from sendinchat.v1 import users_pb2, users_pb2_grpc
from server.bootstrap import run_migrations
from server.db.migrate import load_migrations
from tests.helpers import PASSWORD, random_name


async def _applied_versions(database_url: str) -> list[int]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [int(row["version"]) for row in rows]


class TestMigrations:
    async def test_each_version_is_applied_once_when_two_migrate_concurrently(self, servers):
        database_url = await servers.empty_database()
        first, second = await asyncio.gather(run_migrations(database_url), run_migrations(database_url))
        expected = [m.name for m in load_migrations()]
        assert sorted([first, second], key=len) == [[], expected]
        assert await _applied_versions(database_url) == [m.version for m in load_migrations()]
        assert await run_migrations(database_url) == []

    async def test_both_servers_serve_one_schema_when_started_at_once_on_an_empty_database(
        self, servers, processes
    ):
        database_url = await servers.empty_database()
        replicas = await asyncio.gather(processes.start(database_url), processes.start(database_url))
        addresses = await asyncio.gather(*(replica.wait_serving() for replica in replicas))
        assert await _applied_versions(database_url) == [m.version for m in load_migrations()]
        name = random_name()
        async with (
            grpc.aio.insecure_channel(addresses[0]) as first,
            grpc.aio.insecure_channel(addresses[1]) as second,
        ):
            await users_pb2_grpc.UserServiceStub(first).Register(
                users_pb2.RegisterRequest(username=name, password=PASSWORD)
            )
            reply = await users_pb2_grpc.UserServiceStub(second).Login(
                users_pb2.LoginRequest(username=name, password=PASSWORD)
            )
        assert reply.user.username == name
        for replica in replicas:
            replica.terminate()
        assert [await replica.wait() for replica in replicas] == [0, 0]
