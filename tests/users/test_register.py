"""UserService.Register through the real server."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sendinchat.v1 import users_pb2
from tests.helpers import PASSWORD, error_info, field_violations, random_name, retry_delay_seconds


class TestRegister:
    async def test_returns_the_stored_user_when_input_is_valid(self, stubs):
        name = random_name()
        reply = await stubs.users.Register(
            users_pb2.RegisterRequest(username=name.upper(), password=PASSWORD, display_name="  Ada  ")
        )
        assert reply.user.username == name
        assert reply.user.display_name == "Ada"
        assert reply.user.role == users_pb2.ROLE_USER
        assert reply.user.id and reply.user.create_time.seconds > 0

    @pytest.mark.parametrize(
        ("username", "password", "field"),
        [
            ("ab", PASSWORD, "username"),
            ("x" * 33, PASSWORD, "username"),
            ("bad name", PASSWORD, "username"),
            ("émile", PASSWORD, "username"),
            (random_name(), "short", "password"),
            (random_name(), "p" * 73, "password"),
            (random_name(), "é" * 37, "password"),
        ],
    )
    async def test_is_invalid_argument_with_field_violation_when_field_breaks_rules(
        self, stubs, username, password, field
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Register(users_pb2.RegisterRequest(username=username, password=password))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(caught.value)

    async def test_accepts_exactly_72_bytes_of_password(self, stubs):
        name = random_name()
        await stubs.users.Register(users_pb2.RegisterRequest(username=name, password="p" * 72))
        reply = await stubs.users.Login(users_pb2.LoginRequest(username=name, password="p" * 72))
        assert reply.user.username == name
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Login(users_pb2.LoginRequest(username=name, password="p" * 71 + "q"))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_reports_every_bad_field_at_once(self, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Register(
                users_pb2.RegisterRequest(username="!", password="x", display_name="y" * 65)
            )
        assert set(field_violations(caught.value)) == {"username", "password", "display_name"}

    async def test_is_already_exists_when_name_is_taken_in_any_case(self, stubs):
        name = random_name()
        await stubs.users.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Register(users_pb2.RegisterRequest(username=name.upper(), password=PASSWORD))
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert error_info(caught.value).reason == "USERNAME_TAKEN"

    async def test_exactly_one_wins_when_many_register_one_name_concurrently(self, stubs):
        name = random_name()
        results = await asyncio.gather(
            *(
                stubs.users.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
                for _ in range(10)
            ),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, users_pb2.RegisterResponse)]
        losers = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(winners) == 1
        assert len(losers) == 9
        assert {e.code() for e in losers} == {grpc.StatusCode.ALREADY_EXISTS}

    async def test_is_resource_exhausted_with_retry_info_when_one_peer_registers_too_often(self, servers):
        server = await servers.start(login_attempts_per_peer=2)
        for _ in range(2):
            await server.stubs.users.Register(
                users_pb2.RegisterRequest(username=random_name(), password=PASSWORD)
            )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.users.Register(
                users_pb2.RegisterRequest(username=random_name(), password=PASSWORD)
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_seconds(caught.value) > 0
