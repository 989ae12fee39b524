"""UserService.GetMe, GetUser and ChangePassword through the real server."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from sendinchat.v1 import users_pb2
from tests.helpers import (
    PASSWORD,
    Account,
    field_violations,
    random_name,
    retry_delay_seconds,
    signed_up,
    signed_up_admin,
)

NEW_PASSWORD = "a-brand-new-passphrase"


class TestGetMe:
    async def test_returns_own_profile_with_role_when_signed_in(self, stubs):
        account = await signed_up(stubs)
        reply = await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=account.auth)
        assert reply.user == account.user
        assert reply.user.role == users_pb2.ROLE_USER

    async def test_returns_admin_role_when_caller_is_admin(self, server):
        admin = await signed_up_admin(server)
        reply = await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=admin.auth)
        assert reply.user.role == users_pb2.ROLE_ADMIN

    async def test_is_not_found_when_the_user_was_deleted(self, server):
        account = await signed_up(server.stubs)
        await server.pool.execute("DELETE FROM users WHERE id = $1", uuid.UUID(account.id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await server.stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=account.auth)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_unauthenticated_when_no_token_is_sent(self, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.GetMe(users_pb2.GetMeRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


class TestGetUser:
    async def test_returns_public_profile_when_looked_up_by_id(self, stubs):
        caller = await signed_up(stubs)
        other = await signed_up(stubs)
        reply = await stubs.users.GetUser(users_pb2.GetUserRequest(user_id=other.id), metadata=caller.auth)
        assert reply.user.id == other.id
        assert reply.user.username == other.username
        assert reply.user.create_time == other.user.create_time

    async def test_returns_public_profile_when_looked_up_by_username_in_any_case(self, stubs):
        caller = await signed_up(stubs)
        other = await signed_up(stubs)
        reply = await stubs.users.GetUser(
            users_pb2.GetUserRequest(username=other.username.upper()), metadata=caller.auth
        )
        assert reply.user.id == other.id

    def test_public_profile_has_no_role_field(self):
        assert "role" not in users_pb2.UserProfile.DESCRIPTOR.fields_by_name
        assert (
            users_pb2.GetUserResponse.DESCRIPTOR.fields_by_name["user"].message_type
            is users_pb2.UserProfile.DESCRIPTOR
        )

    @pytest.mark.parametrize(
        "request_",
        [
            users_pb2.GetUserRequest(user_id=str(uuid.uuid4())),
            users_pb2.GetUserRequest(username=random_name()),
        ],
        ids=["id", "username"],
    )
    async def test_is_not_found_when_no_such_user(self, stubs, request_):
        caller = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.GetUser(request_, metadata=caller.auth)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    async def test_is_invalid_argument_with_field_violation_when_id_is_malformed(self, stubs):
        caller = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.GetUser(users_pb2.GetUserRequest(user_id="not-a-uuid"), metadata=caller.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "user_id" in field_violations(caught.value)

    @pytest.mark.parametrize(
        "request_", [users_pb2.GetUserRequest(), users_pb2.GetUserRequest(user_id="")], ids=["unset", "empty"]
    )
    async def test_is_invalid_argument_when_no_key_is_given(self, stubs, request_):
        caller = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.GetUser(request_, metadata=caller.auth)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(caught.value)

    async def test_is_unauthenticated_when_no_token_is_sent(self, stubs):
        other = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.GetUser(users_pb2.GetUserRequest(user_id=other.id))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def _change(stubs: Any, account: Account, old: str, new: str) -> None:
    await stubs.users.ChangePassword(
        users_pb2.ChangePasswordRequest(old_password=old, new_password=new), metadata=account.auth
    )


async def _change_error(stubs: Any, account: Account, old: str, new: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _change(stubs, account, old, new)
    return caught.value


class TestChangePassword:
    async def test_only_new_password_logs_in_and_refresh_tokens_are_revoked_when_old_is_right(self, stubs):
        account = await signed_up(stubs)
        other_session = await stubs.users.Login(
            users_pb2.LoginRequest(username=account.username, password=PASSWORD)
        )
        await _change(stubs, account, PASSWORD, NEW_PASSWORD)
        with pytest.raises(grpc.aio.AioRpcError) as old_login:
            await stubs.users.Login(users_pb2.LoginRequest(username=account.username, password=PASSWORD))
        assert old_login.value.code() == grpc.StatusCode.UNAUTHENTICATED
        new_login = await stubs.users.Login(
            users_pb2.LoginRequest(username=account.username, password=NEW_PASSWORD)
        )
        assert new_login.user.id == account.id
        for token in (account.tokens.refresh_token, other_session.tokens.refresh_token):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stubs.users.RefreshToken(users_pb2.RefreshTokenRequest(refresh_token=token))
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_is_permission_denied_and_keeps_password_when_old_password_is_wrong(self, stubs):
        account = await signed_up(stubs)
        error = await _change_error(stubs, account, "wrong-old-password", NEW_PASSWORD)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        reply = await stubs.users.Login(users_pb2.LoginRequest(username=account.username, password=PASSWORD))
        assert reply.user.id == account.id

    async def test_is_permission_denied_when_old_password_matches_only_in_its_first_72_bytes(self, stubs):
        account = await signed_up(stubs, password="p" * 72)
        error = await _change_error(stubs, account, "p" * 72 + "extra", NEW_PASSWORD)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED

    @pytest.mark.parametrize("new", ["short", "p" * 73], ids=["too-short", "too-long"])
    async def test_is_invalid_argument_when_new_password_is_out_of_bounds(self, stubs, new):
        account = await signed_up(stubs)
        error = await _change_error(stubs, account, PASSWORD, new)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "new_password" in field_violations(error)

    async def test_is_resource_exhausted_when_old_password_is_guessed_too_often(self, servers):
        server = await servers.start(login_attempts_per_username_and_peer=3)
        account = await signed_up(server.stubs)
        for _ in range(3):
            error = await _change_error(server.stubs, account, "wrong-old-password", NEW_PASSWORD)
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        refused = await _change_error(server.stubs, account, PASSWORD, NEW_PASSWORD)
        assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert retry_delay_seconds(refused) > 0

    async def test_is_unauthenticated_when_no_token_is_sent(self, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.ChangePassword(
                users_pb2.ChangePasswordRequest(old_password=PASSWORD, new_password=NEW_PASSWORD)
            )
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
