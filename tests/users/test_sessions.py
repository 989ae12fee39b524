"""UserService.RefreshToken and Logout through the real server: rotation, reuse detection, sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import grpc
import jwt
import pytest

from sendinchat.v1 import users_pb2
from tests.helpers import (
    PASSWORD,
    Account,
    bearer,
    error_info,
    field_violations,
    request_id,
    signed_up,
    waiting_on_a_lock,
)


async def _refresh(stubs: Any, token: str, rid: str = "") -> users_pb2.TokenPair:
    reply: users_pb2.RefreshTokenResponse = await stubs.users.RefreshToken(
        users_pb2.RefreshTokenRequest(refresh_token=token, request_id=rid)
    )
    return reply.tokens


async def _refresh_error(stubs: Any, token: str, rid: str = "") -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _refresh(stubs, token, rid)
    return caught.value


async def _second_session(stubs: Any, account: Account) -> users_pb2.TokenPair:
    reply: users_pb2.LoginResponse = await stubs.users.Login(
        users_pb2.LoginRequest(username=account.username, password=PASSWORD)
    )
    return reply.tokens


class TestRefreshToken:
    async def test_new_pair_works_when_refresh_token_is_fresh(self, stubs):
        account = await signed_up(stubs)
        pair = await _refresh(stubs, account.tokens.refresh_token)
        assert pair.token_type == "Bearer"
        assert pair.refresh_token != account.tokens.refresh_token
        me = await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(pair.access_token))
        assert me.user.id == account.id
        again = await _refresh(stubs, pair.refresh_token)
        assert again.refresh_token not in (pair.refresh_token, account.tokens.refresh_token)

    async def test_revokes_the_whole_session_when_a_used_token_is_presented_again(self, stubs):
        account = await signed_up(stubs)
        newer = await _refresh(stubs, account.tokens.refresh_token)
        reuse = await _refresh_error(stubs, account.tokens.refresh_token)
        assert reuse.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "already used" in (reuse.details() or "")
        family = await _refresh_error(stubs, newer.refresh_token)
        assert family.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_other_sessions_survive_when_one_session_is_revoked_for_reuse(self, stubs):
        account = await signed_up(stubs)
        other = await _second_session(stubs, account)
        await _refresh(stubs, account.tokens.refresh_token)
        await _refresh_error(stubs, account.tokens.refresh_token)
        assert (await _refresh(stubs, other.refresh_token)).refresh_token

    async def test_is_unauthenticated_when_an_access_token_is_passed(self, stubs):
        account = await signed_up(stubs)
        error = await _refresh_error(stubs, account.tokens.access_token)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "refresh token" in (error.details() or "")

    async def test_is_unauthenticated_when_token_is_garbage(self, stubs):
        error = await _refresh_error(stubs, "not.a.jwt")
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_is_invalid_argument_when_token_is_empty(self, stubs):
        error = await _refresh_error(stubs, "")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "refresh_token" in field_violations(error)

    async def test_is_invalid_argument_when_request_id_is_not_a_uuid(self, stubs):
        account = await signed_up(stubs)
        error = await _refresh_error(stubs, account.tokens.refresh_token, "retry-1")
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(error) == {"request_id": "must be a UUID"}
        assert (await _refresh(stubs, account.tokens.refresh_token)).refresh_token  # nothing was used


class TestARetriedRefresh:
    """A retry of one refresh (same token, same request_id) after its reply was lost."""

    async def test_gets_the_same_refresh_token_again_and_the_session_goes_on(self, stubs):
        account = await signed_up(stubs)
        rid = request_id()
        first = await _refresh(stubs, account.tokens.refresh_token, rid)
        retry = await _refresh(stubs, account.tokens.refresh_token, rid)
        assert retry.refresh_token == first.refresh_token
        assert retry.refresh_token_expire_time == first.refresh_token_expire_time
        me = await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(retry.access_token))
        assert me.user.id == account.id
        assert (await _refresh(stubs, retry.refresh_token)).refresh_token

    async def test_sent_many_times_at_once_gets_one_refresh_token(self, stubs):
        account = await signed_up(stubs)
        rid = request_id()
        pairs = await asyncio.gather(*(_refresh(stubs, account.tokens.refresh_token, rid) for _ in range(6)))
        assert len({pair.refresh_token for pair in pairs}) == 1
        assert (await _refresh(stubs, pairs[0].refresh_token)).refresh_token

    async def test_is_a_reuse_with_another_request_id_or_none(self, stubs):
        for other in (request_id(), ""):
            account = await signed_up(stubs)
            first = await _refresh(stubs, account.tokens.refresh_token, request_id())
            reuse = await _refresh_error(stubs, account.tokens.refresh_token, other)
            assert error_info(reuse).reason == "REFRESH_TOKEN_REUSED"
            assert (
                await _refresh_error(stubs, first.refresh_token)
            ).code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_is_a_reuse_once_the_token_it_got_was_used(self, stubs):
        account = await signed_up(stubs)
        rid = request_id()
        first = await _refresh(stubs, account.tokens.refresh_token, rid)
        newest = await _refresh(stubs, first.refresh_token)
        reuse = await _refresh_error(stubs, account.tokens.refresh_token, rid)
        assert error_info(reuse).reason == "REFRESH_TOKEN_REUSED"
        assert (await _refresh_error(stubs, newest.refresh_token)).code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_waits_for_a_rotation_of_the_token_it_got_and_is_then_a_reuse(self, server):
        stubs = server.stubs
        account = await signed_up(stubs)
        rid = request_id()
        first = await _refresh(stubs, account.tokens.refresh_token, rid)
        successor = jwt.decode(first.refresh_token, options={"verify_signature": False})["jti"]
        holder = await asyncpg.connect(server.database_url)
        try:
            async with holder.transaction():  # a rotation of `first` that has used it, not committed yet
                await holder.execute("UPDATE refresh_tokens SET used_at = now() WHERE jti = $1", successor)
                retry = asyncio.ensure_future(_refresh(stubs, account.tokens.refresh_token, rid))
                await waiting_on_a_lock(holder)  # the retry waits for that rotation
        finally:
            await holder.close()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retry
        assert error_info(caught.value).reason == "REFRESH_TOKEN_REUSED"

    async def test_a_refresh_racing_a_logout_waits_for_it_and_gets_nothing(self, server):
        stubs = server.stubs
        account = await signed_up(stubs)
        session = jwt.decode(account.tokens.refresh_token, options={"verify_signature": False})["sid"]
        holder = await asyncpg.connect(server.database_url)
        try:
            async with holder.transaction():  # a Logout under way: the session ended, not committed
                await holder.execute("UPDATE sessions SET revoked_at = now() WHERE id = $1", session)
                refresh = asyncio.ensure_future(_refresh(stubs, account.tokens.refresh_token))
                await waiting_on_a_lock(holder)
        finally:
            await holder.close()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await refresh
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_is_refused_after_logout(self, stubs):
        account = await signed_up(stubs)
        rid = request_id()
        first = await _refresh(stubs, account.tokens.refresh_token, rid)
        await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=bearer(first.access_token))
        ended = await _refresh_error(stubs, account.tokens.refresh_token, rid)
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED


class TestLogout:
    async def test_ends_only_this_session_when_all_sessions_is_false(self, stubs):
        account = await signed_up(stubs)
        other = await _second_session(stubs, account)
        reply = await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        assert reply.ended_sessions == 1
        ended = await _refresh_error(stubs, account.tokens.refresh_token)
        assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (await _refresh(stubs, other.refresh_token)).refresh_token

    async def test_ends_every_session_when_all_sessions_is_true(self, stubs):
        account = await signed_up(stubs)
        others = [await _second_session(stubs, account) for _ in range(2)]
        rotated = await _refresh(stubs, others[0].refresh_token)
        reply = await stubs.users.Logout(
            users_pb2.LogoutRequest(all_sessions=True), metadata=bearer(others[1].access_token)
        )
        assert reply.ended_sessions == 3
        for token in (account.tokens.refresh_token, rotated.refresh_token, others[1].refresh_token):
            assert (await _refresh_error(stubs, token)).code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_counts_only_the_sessions_still_open_when_all_sessions_is_true(self, stubs):
        account = await signed_up(stubs)
        other = await _second_session(stubs, account)
        await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=bearer(other.access_token))
        first = await stubs.users.Logout(users_pb2.LogoutRequest(all_sessions=True), metadata=account.auth)
        assert first.ended_sessions == 1

    async def test_does_not_touch_other_users_when_all_sessions_is_true(self, stubs):
        account = await signed_up(stubs)
        bystander = await signed_up(stubs)
        await stubs.users.Logout(users_pb2.LogoutRequest(all_sessions=True), metadata=account.auth)
        assert (await _refresh(stubs, bystander.tokens.refresh_token)).refresh_token

    async def test_is_unauthenticated_when_no_token_is_sent(self, stubs):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Logout(users_pb2.LogoutRequest(all_sessions=True))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
