"""SIGTERM: NOT_SERVING, streams end with UNAVAILABLE, in-flight unary calls drain, exit 0."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from sendinchat.v1 import users_pb2, users_pb2_grpc
from tests.helpers import PASSWORD, random_name

CALL_TIMEOUT = 10.0


async def _wait_for_login_attempt(database_url: str) -> None:
    """Until a Login has passed the throttle on the server (and is hashing)."""
    conn = await asyncpg.connect(database_url)
    try:
        for _ in range(1000):
            if await conn.fetchval("SELECT count(*) FROM login_attempts WHERE key LIKE 'peer:%'"):
                return
            await asyncio.sleep(0.01)
    finally:
        await conn.close()
    raise AssertionError("the Login never reached the server")


async def _login(users: users_pb2_grpc.UserServiceAsyncStub, name: str) -> users_pb2.LoginResponse:
    reply: users_pb2.LoginResponse = await users.Login(
        users_pb2.LoginRequest(username=name, password=PASSWORD)
    )
    return reply


class TestGracefulShutdown:
    async def test_streams_end_unary_calls_drain_and_process_exits_zero_when_sigterm_arrives(
        self, servers, processes
    ):
        database_url = await servers.database()
        process = await processes.start(database_url, SENDINCHAT_BCRYPT_ROUNDS="12")
        address = await process.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            health: Any = health_pb2_grpc.HealthStub(channel)  # the typeshed stub declares no methods
            name = random_name()
            await users.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
            watch = health.Watch(health_pb2.HealthCheckRequest())
            first = await asyncio.wait_for(watch.read(), CALL_TIMEOUT)
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            login = asyncio.create_task(_login(users, name))
            await _wait_for_login_attempt(database_url)

            process.terminate()

            seen: list[int] = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                for _ in range(100):
                    message = await asyncio.wait_for(watch.read(), CALL_TIMEOUT)
                    assert isinstance(message, health_pb2.HealthCheckResponse), "Watch ended with OK"
                    seen.append(message.status)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
            assert set(seen) <= {health_pb2.HealthCheckResponse.NOT_SERVING}
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await health.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            reply = await asyncio.wait_for(login, CALL_TIMEOUT)
            assert reply.user.username == name
        assert await process.wait() == 0
        assert "Traceback" not in process.stderr
        assert any(record.get("message") == "stopped" for record in process.records())
