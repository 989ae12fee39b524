"""Access tokens die with their session: Logout, ChangePassword and a reused refresh token end it.

On the server that ended the session at once; on another replica after its next poll; on a replica
that starts later, from its first poll. Open streams of the session end with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from sendinchat.v1 import chat_pb2, ledger_pb2, users_pb2
from server.auth.sessions import POLL_SECONDS
from tests.chat.support import Stream
from tests.helpers import PASSWORD, Account, bearer, signed_up

NEW_PASSWORD = "a-new-long-password"
WAIT_SECONDS = 10.0


async def _login(stubs: Any, account: Account, password: str = PASSWORD) -> users_pb2.TokenPair:
    reply: users_pb2.LoginResponse = await stubs.users.Login(
        users_pb2.LoginRequest(username=account.username, password=password)
    )
    return reply.tokens


async def _get_me_code(stubs: Any, access_token: str) -> grpc.StatusCode:
    try:
        await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(access_token))
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


async def _get_me_error(stubs: Any, access_token: str) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stubs.users.GetMe(users_pb2.GetMeRequest(), metadata=bearer(access_token))
    return caught.value


async def _code_once_settled(stubs: Any, access_token: str) -> grpc.StatusCode:
    """GetMe's code once it stops being OK, or OK if it still is after a few polls."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while (code := await _get_me_code(stubs, access_token)) == grpc.StatusCode.OK:
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(POLL_SECONDS / 4)
    return code


class TestOnTheSameServer:
    async def test_access_token_is_refused_right_after_logout_and_other_sessions_keep_working(self, stubs):
        account = await signed_up(stubs)
        other = await _login(stubs, account)
        await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        error = await _get_me_error(stubs, account.tokens.access_token)
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "session" in (error.details() or "")
        assert await _get_me_code(stubs, other.access_token) == grpc.StatusCode.OK

    async def test_every_access_token_of_the_user_is_refused_after_logout_of_all_sessions(self, stubs):
        account = await signed_up(stubs)
        others = [await _login(stubs, account) for _ in range(2)]
        bystander = await signed_up(stubs)
        await stubs.users.Logout(users_pb2.LogoutRequest(all_sessions=True), metadata=account.auth)
        for token in (account.tokens.access_token, *(pair.access_token for pair in others)):
            assert await _get_me_code(stubs, token) == grpc.StatusCode.UNAUTHENTICATED
        assert await _get_me_code(stubs, bystander.tokens.access_token) == grpc.StatusCode.OK

    async def test_logout_again_with_the_ended_sessions_token_is_unauthenticated(self, stubs):
        account = await signed_up(stubs)
        await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async def test_every_access_token_is_refused_after_change_password_and_a_new_login_works(self, stubs):
        account = await signed_up(stubs)
        other = await _login(stubs, account)
        await stubs.users.ChangePassword(
            users_pb2.ChangePasswordRequest(old_password=PASSWORD, new_password=NEW_PASSWORD),
            metadata=account.auth,
        )
        for token in (account.tokens.access_token, other.access_token):
            assert await _get_me_code(stubs, token) == grpc.StatusCode.UNAUTHENTICATED
        fresh = await _login(stubs, account, NEW_PASSWORD)
        assert await _get_me_code(stubs, fresh.access_token) == grpc.StatusCode.OK

    async def test_access_tokens_of_a_session_are_refused_after_its_refresh_token_is_reused(self, stubs):
        account = await signed_up(stubs)
        rotated: users_pb2.RefreshTokenResponse = await stubs.users.RefreshToken(
            users_pb2.RefreshTokenRequest(refresh_token=account.tokens.refresh_token)
        )
        assert await _get_me_code(stubs, rotated.tokens.access_token) == grpc.StatusCode.OK
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.users.RefreshToken(
                users_pb2.RefreshTokenRequest(refresh_token=account.tokens.refresh_token)
            )
        for token in (account.tokens.access_token, rotated.tokens.access_token):
            assert await _get_me_code(stubs, token) == grpc.StatusCode.UNAUTHENTICATED

    async def test_failed_change_password_ends_no_session(self, stubs):
        account = await signed_up(stubs)
        with pytest.raises(grpc.aio.AioRpcError):
            await stubs.users.ChangePassword(
                users_pb2.ChangePasswordRequest(old_password="wrong-old-password", new_password=NEW_PASSWORD),
                metadata=account.auth,
            )
        assert await _get_me_code(stubs, account.tokens.access_token) == grpc.StatusCode.OK


class TestAcrossReplicas:
    async def test_another_replica_refuses_the_token_after_its_next_poll(self, servers):
        first = await servers.start()
        second = await servers.start(database_url=first.database_url)
        account = await signed_up(first.stubs)
        assert await _get_me_code(second.stubs, account.tokens.access_token) == grpc.StatusCode.OK
        await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        code = await _code_once_settled(second.stubs, account.tokens.access_token)
        assert code == grpc.StatusCode.UNAUTHENTICATED

    async def test_a_replica_started_after_the_logout_refuses_the_token_from_the_start(self, servers):
        first = await servers.start()
        account = await signed_up(first.stubs)
        await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        later = await servers.start(database_url=first.database_url)
        assert await _get_me_code(later.stubs, account.tokens.access_token) == grpc.StatusCode.UNAUTHENTICATED


class TestOpenStreams:
    async def test_watch_transfers_of_the_session_ends_unauthenticated_on_logout_of_all_sessions(self, stubs):
        account = await signed_up(stubs)
        other = await _login(stubs, account)
        watch = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=account.auth)
        bystander = await signed_up(stubs)
        untouched = stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=bystander.auth)
        try:
            # Both streams are open and past authentication once the first live read is pending.
            await _until_open(stubs, watch)
            await _until_open(stubs, untouched)
            await stubs.users.Logout(
                users_pb2.LogoutRequest(all_sessions=True), metadata=bearer(other.access_token)
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                while True:
                    await asyncio.wait_for(watch.read(), WAIT_SECONDS)
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "session" in (caught.value.details() or "")
            assert not untouched.done()
        finally:
            watch.cancel()
            untouched.cancel()

    async def test_chat_connect_of_the_session_ends_unauthenticated_on_logout(self, stubs):
        account = await signed_up(stubs)
        stream = Stream(stubs, account)
        try:
            await stream.write(ping=chat_pb2.PingFrame(nonce="open"))
            assert (await stream.next_of("pong")).pong.nonce == "open"
            await stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
            error = await stream.wait_ended()
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await stream.close()


async def _until_open(stubs: Any, call: Any) -> None:
    """Give the server time to authenticate and register the stream: metadata arrives once it runs."""
    await asyncio.wait_for(call.initial_metadata(), WAIT_SECONDS)
