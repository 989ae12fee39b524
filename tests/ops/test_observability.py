"""One JSON log line per RPC without secrets, and Prometheus metrics on their own port."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc

from sendinchat.v1 import users_pb2, users_pb2_grpc
from tests.helpers import bearer, random_name

DISTINCTIVE_PASSWORD = "Zebra-Quartz-7731-Mango"


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        body: bytes = response.read()
    return body.decode()


class TestRpcLog:
    async def test_writes_one_json_line_per_rpc_without_secrets_when_users_sign_in(self, servers, processes):
        process = await processes.start(await servers.database())
        address = await process.wait_serving()
        name = random_name()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            await users.Register(users_pb2.RegisterRequest(username=name, password=DISTINCTIVE_PASSWORD))
            login = await users.Login(users_pb2.LoginRequest(username=name, password=DISTINCTIVE_PASSWORD))
            await users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(login.tokens.access_token))
            await users.RefreshToken(users_pb2.RefreshTokenRequest(refresh_token=login.tokens.refresh_token))
        process.terminate()
        assert await process.wait() == 0
        rpc_lines = [r for r in process.records() if r.get("logger") == "sendinchat.rpc"]
        by_method = {r["method"].rsplit("/", 1)[1]: r for r in rpc_lines if "UserService" in r["method"]}
        assert sorted(by_method) == ["GetMe", "Login", "RefreshToken", "Register"]
        assert len([r for r in rpc_lines if "UserService" in r["method"]]) == 4
        for record in by_method.values():
            assert record["code"] == "OK"
            assert isinstance(record["duration_ms"], int | float) and record["duration_ms"] >= 0
            assert "127.0.0.1" in record["peer"]
        assert by_method["GetMe"]["user_id"] == login.user.id
        for secret in (DISTINCTIVE_PASSWORD, login.tokens.access_token, login.tokens.refresh_token):
            assert secret not in process.stderr
        for token_part in login.tokens.access_token.split("."):
            assert token_part not in process.stderr

    async def test_logs_the_error_code_when_an_rpc_fails(self, servers, processes):
        process = await processes.start(await servers.database())
        address = await process.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UserServiceStub(channel)
            try:
                await users.Login(
                    users_pb2.LoginRequest(username=random_name(), password=DISTINCTIVE_PASSWORD)
                )
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        process.terminate()
        assert await process.wait() == 0
        [line] = [r for r in process.records() if str(r.get("method", "")).endswith("/Login")]
        assert line["code"] == "UNAUTHENTICATED"
        assert DISTINCTIVE_PASSWORD not in process.stderr


class TestMetrics:
    async def test_exposes_rpc_counters_when_metrics_address_is_set(self, servers, processes):
        process = await processes.start(await servers.database(), SENDINCHAT_METRICS_ADDRESS="127.0.0.1:0")
        address = await process.wait_serving()
        port = await process.metrics_port()
        async with grpc.aio.insecure_channel(address) as channel:
            await users_pb2_grpc.UserServiceStub(channel).Register(
                users_pb2.RegisterRequest(username=random_name(), password=DISTINCTIVE_PASSWORD)
            )
        text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert "sendinchat_rpcs_total" in text
        assert 'method="/sendinchat.v1.UserService/Register"' in text
        assert "sendinchat_database_up 1.0" in text
