"""grpc.health.v1 follows the database: NOT_SERVING while it cannot be reached, SERVING again after."""

from __future__ import annotations

from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2

from sendinchat.v1 import users_pb2
from tests.helpers import PASSWORD, random_name, signed_up
from tests.ops.dbproxy import DatabaseProxy


async def _status(server: Any, service: str = "") -> int:
    reply = await server.stubs.health.Check(health_pb2.HealthCheckRequest(service=service))
    return int(reply.status)


async def _set_allow_connections(server: Any, postgres_admin_url: str, allow: bool) -> None:
    name = server.database_url.partition("?")[0].rsplit("/", 1)[1]
    conn = await asyncpg.connect(postgres_admin_url)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
    finally:
        await conn.close()


async def _probe_until(server: Any, status: int, attempts: int = 20) -> int:
    """Probe like the background watcher does; a pool may hold more than one dead connection."""
    for _ in range(attempts):
        await server.running.health.probe_database(server.pool)
        if await _status(server) == status:
            break
    return await _status(server)


class TestHealth:
    async def test_is_serving_for_every_service_when_the_database_answers(self, server):
        for service in (
            "",
            "sendinchat.v1.UserService",
            "sendinchat.v1.LedgerService",
            "sendinchat.v1.ChatService",
        ):
            assert await _status(server, service) == health_pb2.HealthCheckResponse.SERVING

    async def test_is_not_serving_then_serving_again_when_the_database_goes_and_comes_back(
        self, server, postgres
    ):
        await _set_allow_connections(server, postgres.admin_url, False)
        try:
            assert await _probe_until(server, health_pb2.HealthCheckResponse.NOT_SERVING) == (
                health_pb2.HealthCheckResponse.NOT_SERVING
            )
            assert (
                await _status(server, "sendinchat.v1.UserService")
                == health_pb2.HealthCheckResponse.NOT_SERVING
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await server.stubs.users.Register(
                    users_pb2.RegisterRequest(username="while_down", password=PASSWORD)
                )
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await _set_allow_connections(server, postgres.admin_url, True)
        assert await _probe_until(server, health_pb2.HealthCheckResponse.SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        reply = await server.stubs.users.Register(
            users_pb2.RegisterRequest(username="back_again", password=PASSWORD)
        )
        assert reply.user.username == "back_again"


@pytest.fixture
async def proxied(servers, postgres):
    """A server whose pool reaches its database through a proxy the test can cut."""
    proxy = DatabaseProxy(postgres.admin_url)
    await proxy.start()
    database_url = await servers.database()
    server = await servers.start(proxy.url_for(database_url))
    try:
        yield server, proxy
    finally:
        await proxy.close()


class TestDatabaseOutage:
    async def test_calls_are_unavailable_and_health_not_serving_when_the_database_is_unreachable(
        self, proxied
    ):
        server, proxy = proxied
        await proxy.cut()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.users.Register(
                users_pb2.RegisterRequest(username=random_name(), password=PASSWORD)
            )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        await server.running.health.probe_database(server.pool)
        assert await _status(server) == health_pb2.HealthCheckResponse.NOT_SERVING

    async def test_calls_succeed_again_when_the_database_comes_back(self, proxied):
        server, proxy = proxied
        await proxy.cut()
        await server.running.health.probe_database(server.pool)
        await proxy.start()
        assert await _probe_until(server, health_pb2.HealthCheckResponse.SERVING) == (
            health_pb2.HealthCheckResponse.SERVING
        )
        account = await signed_up(server.stubs)
        assert account.user.role == users_pb2.ROLE_USER
