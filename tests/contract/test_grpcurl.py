"""What a developer sees with grpcurl against a running server: reflection, describe, calls, errors."""

from __future__ import annotations

import json
from typing import Any

from tests.contract import tools
from tests.helpers import PASSWORD, random_name


async def _grpcurl(server: Any, *args: str) -> tools.Result:
    return await tools.run("grpcurl", "-plaintext", *args[:-1], server.address, args[-1])


async def _call(server: Any, method: str, body: dict[str, Any], *headers: str) -> dict[str, Any]:
    header_args = [arg for header in headers for arg in ("-H", header)]
    result = await _grpcurl(
        server, *header_args, "-d", json.dumps(body), f"sendinchat.v1.UserService/{method}"
    )
    assert result.returncode == 0, result.stderr
    reply: dict[str, Any] = json.loads(result.stdout)
    return reply


class TestReflection:
    async def test_lists_every_service_when_asked(self, server):
        result = await tools.run("grpcurl", "-plaintext", server.address, "list")
        assert result.returncode == 0, result.stderr
        services = set(result.stdout.split())
        assert {
            "sendinchat.v1.UserService",
            "sendinchat.v1.LedgerService",
            "sendinchat.v1.ChatService",
            "grpc.health.v1.Health",
        } <= services
        assert any(name.startswith("grpc.reflection.") for name in services)

    async def test_describes_user_service_with_its_rpcs_when_asked(self, server):
        result = await tools.run(
            "grpcurl", "-plaintext", server.address, "describe", "sendinchat.v1.UserService"
        )
        assert result.returncode == 0, result.stderr
        for rpc in ("Register", "Login", "RefreshToken", "Logout", "GetMe", "GetUser", "ChangePassword"):
            assert f"rpc {rpc}" in result.stdout


class TestCalls:
    async def test_register_login_and_get_me_succeed_when_called_with_json(self, server):
        name = random_name()
        registered = await _call(server, "Register", {"username": name, "password": PASSWORD})
        assert registered["user"]["username"] == name
        login = await _call(server, "Login", {"username": name, "password": PASSWORD})
        tokens = login["tokens"]
        access = tokens.get("accessToken") or tokens["access_token"]
        me = await _call(server, "GetMe", {}, f"authorization: Bearer {access}")
        assert me["user"]["username"] == name
        assert me["user"]["role"] == "ROLE_USER"

    async def test_shows_invalid_argument_when_register_input_is_bad(self, server):
        result = await _grpcurl(
            server, "-d", json.dumps({"username": "!", "password": "x"}), "sendinchat.v1.UserService/Register"
        )
        assert result.returncode != 0
        assert "InvalidArgument" in result.stderr

    async def test_shows_unauthenticated_when_get_me_has_no_token(self, server):
        result = await _grpcurl(server, "-d", "{}", "sendinchat.v1.UserService/GetMe")
        assert result.returncode != 0
        assert "Unauthenticated" in result.stderr
