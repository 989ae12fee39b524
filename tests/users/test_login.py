"""UserService.Login through the real server: credentials, throttling, bcrypt off the event loop."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2

from sendinchat.v1 import users_pb2
from server.bootstrap import user_deps
from server.users import throttle
from tests.harness import TEST_JWT_SECRET, Stubs
from tests.helpers import PASSWORD, field_violations, random_name, retry_delay_seconds, signed_up

WRONG = "not-the-password"


async def _login(stubs: Any, username: str, password: str) -> users_pb2.LoginResponse:
    reply: users_pb2.LoginResponse = await stubs.users.Login(
        users_pb2.LoginRequest(username=username, password=password)
    )
    return reply


async def _login_error(stubs: Any, username: str, password: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _login(stubs, username, password)
    return caught.value


class TestLogin:
    async def test_returns_tokens_and_user_when_credentials_are_right(self, stubs):
        name = random_name()
        await stubs.users.Register(users_pb2.RegisterRequest(username=name, password=PASSWORD))
        reply = await _login(stubs, name.upper(), PASSWORD)
        assert reply.user.username == name
        assert reply.user.role == users_pb2.ROLE_USER
        assert reply.tokens.token_type == "Bearer"
        assert reply.tokens.access_token and reply.tokens.refresh_token
        assert reply.tokens.access_token != reply.tokens.refresh_token
        assert reply.tokens.access_token_expire_time.seconds < reply.tokens.refresh_token_expire_time.seconds

    async def test_opens_a_new_session_each_time_when_called_twice(self, stubs):
        account = await signed_up(stubs)
        second = await _login(stubs, account.username, PASSWORD)
        assert second.tokens.refresh_token != account.tokens.refresh_token
        me = await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=account.auth)
        assert me.user.id == second.user.id

    async def test_is_unauthenticated_with_one_message_when_password_is_wrong_or_user_unknown(self, stubs):
        account = await signed_up(stubs)
        wrong_password = await _login_error(stubs, account.username, WRONG)
        unknown_user = await _login_error(stubs, random_name(), WRONG)
        assert wrong_password.code() == unknown_user.code() == grpc.StatusCode.UNAUTHENTICATED
        assert wrong_password.details() == unknown_user.details()
        assert account.username not in (wrong_password.details() or "")

    async def test_is_unauthenticated_when_password_matches_only_in_its_first_72_bytes(self, stubs):
        name = random_name()
        await stubs.users.Register(users_pb2.RegisterRequest(username=name, password="p" * 72))
        error = await _login_error(stubs, name, "p" * 72 + "extra")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await _login(stubs, name, "p" * 72)).user.username == name

    @pytest.mark.parametrize(
        ("username", "password", "field"),
        [
            ("", PASSWORD, "username"),
            ("   ", PASSWORD, "username"),
            ("someone", "", "password"),
            ("a" * 4000, PASSWORD, "username"),  # once failed inside the throttle's primary key
            ("a\u0000", PASSWORD, "username"),  # once reached PostgreSQL, which refuses NUL
        ],
    )
    async def test_is_invalid_argument_when_a_field_is_empty_or_malformed(
        self, stubs, username, password, field
    ):
        error = await _login_error(stubs, username, password)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in field_violations(error)


class TestLoginThrottling:
    async def test_is_resource_exhausted_with_retry_info_when_username_and_peer_limit_is_hit(self, servers):
        server = await servers.start(login_attempts_per_username_and_peer=3)
        account = await signed_up(server.stubs)  # a successful login resets its username-and-peer counter
        for _ in range(3):
            error = await _login_error(server.stubs, account.username, WRONG)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        refused = await _login_error(server.stubs, account.username, PASSWORD)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_seconds(refused) > 0

    async def test_the_owner_logs_in_from_another_peer_when_one_peer_hammers_the_username(self, servers):
        server = await servers.start(address="[::]:0", login_attempts_per_username_and_peer=3)
        owner = await signed_up(server.stubs)
        for _ in range(10):  # the attacker, over IPv4
            await _login_error(server.stubs, owner.username, WRONG)
        assert (await _login_error(server.stubs, owner.username, PASSWORD)).code() == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        async with grpc.aio.insecure_channel(f"[::1]:{server.running.port}") as elsewhere:  # the owner, IPv6
            reply = await _login(Stubs(elsewhere), owner.username, PASSWORD)
        assert reply.user.id == owner.id

    async def test_refused_attempts_from_one_peer_never_fill_the_username_ceiling(self, servers):
        server = await servers.start(
            address="[::]:0", login_attempts_per_username_and_peer=3, login_attempts_per_username=5
        )
        owner = await signed_up(server.stubs)
        for _ in range(20):  # the attacker keeps going long after being refused
            await _login_error(server.stubs, owner.username, WRONG)
        async with grpc.aio.insecure_channel(f"[::1]:{server.running.port}") as elsewhere:
            reply = await _login(Stubs(elsewhere), owner.username, PASSWORD)
        assert reply.user.id == owner.id

    async def test_counters_whose_window_ended_are_forgotten(self, servers):
        server = await servers.start(login_window_seconds=1)
        for _ in range(3):
            await _login_error(server.stubs, random_name(), WRONG)
        assert await server.pool.fetchval("SELECT count(*) FROM login_attempts") > 0
        await asyncio.sleep(1.1)
        async with server.pool.acquire() as conn:
            await throttle.forget_ended_windows(conn, user_deps(server.config, TEST_JWT_SECRET).login_limits)
        assert await server.pool.fetchval("SELECT count(*) FROM login_attempts") == 0

    async def test_is_resource_exhausted_from_every_peer_when_the_username_ceiling_is_hit(self, servers):
        server = await servers.start(address="[::]:0", login_attempts_per_username=4)
        owner = await signed_up(server.stubs)  # one attempt
        for _ in range(3):
            await _login_error(server.stubs, owner.username, WRONG)
        async with grpc.aio.insecure_channel(f"[::1]:{server.running.port}") as elsewhere:
            refused = await _login_error(Stubs(elsewhere), owner.username, PASSWORD)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    async def test_other_username_from_same_peer_logs_in_when_only_username_and_peer_limit_is_hit(
        self, servers
    ):
        server = await servers.start(login_attempts_per_username_and_peer=3)
        victim = await signed_up(server.stubs)
        other = await signed_up(server.stubs)
        for _ in range(4):
            await _login_error(server.stubs, victim.username, WRONG)
        assert (await _login_error(server.stubs, victim.username, PASSWORD)).code() == (
            grpc.StatusCode.RESOURCE_EXHAUSTED
        )
        reply = await _login(server.stubs, other.username, PASSWORD)
        assert reply.user.id == other.id

    async def test_is_resource_exhausted_for_any_username_when_peer_limit_is_hit(self, servers):
        server = await servers.start(login_attempts_per_peer=3)
        account = await signed_up(server.stubs)  # one attempt from this peer
        for _ in range(2):
            assert (await _login_error(server.stubs, random_name(), WRONG)).code() == (
                grpc.StatusCode.UNAUTHENTICATED
            )
        refused = await _login_error(server.stubs, account.username, PASSWORD)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_seconds(refused) > 0


class TestLoginHashing:
    async def test_cheap_rpcs_finish_before_the_logins_when_many_logins_hash_at_once(self, servers):
        server = await servers.start(bcrypt_rounds=12)
        stubs = server.stubs
        account = await signed_up(stubs)
        baseline = await _peer_attempts(server)
        logins = [asyncio.create_task(_login(stubs, account.username, PASSWORD)) for _ in range(20)]
        try:
            # Every login has passed the throttle and is (about to be) hashing.
            for _ in range(500):
                if await _peer_attempts(server) >= baseline + 20:
                    break
                await asyncio.sleep(0.01)
            me = await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=account.auth)
            health = await stubs.health.Check(health_pb2.HealthCheckRequest())
            finished_logins = sum(task.done() for task in logins)
        finally:
            replies = await asyncio.gather(*logins)
        assert me.user.id == account.id
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert finished_logins < len(logins)
        assert {reply.user.id for reply in replies} == {account.id}


async def _peer_attempts(server: Any) -> int:
    attempts = await server.pool.fetchval("SELECT attempts FROM login_attempts WHERE key LIKE 'peer:%'")
    return int(attempts or 0)
