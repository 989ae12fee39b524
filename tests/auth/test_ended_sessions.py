"""Access tokens die with their session: Logout, ChangePassword and a reused refresh token end it.

On the server that ended the session at once; on another replica after its next poll; on a replica
that starts later, from its first poll. Open streams of the session end with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import jwt
import pytest

from sendinchat.v1 import chat_pb2, ledger_pb2, users_pb2
from server.auth.sessions import APPLICATION_NAME, POLL_SECONDS, EndedSessions
from server.db.pool import create_pool
from tests.auth.probe import COLLECT, access_token, probe_server
from tests.chat.support import Stream
from tests.helpers import PASSWORD, Account, bearer, signed_up, signed_up_admin
from tests.ledger.support import deposit
from tests.ops.dbproxy import DatabaseProxy

NEW_PASSWORD = "a-new-long-password"
WAIT_SECONDS = 10.0
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
_POLLERS = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1"
)


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


async def _code_when(stubs: Any, access_token: str, wanted: grpc.StatusCode) -> grpc.StatusCode:
    """GetMe's code as soon as it is `wanted`, or the last one seen after WAIT_SECONDS."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while True:
        code = await _get_me_code(stubs, access_token)
        if code == wanted or asyncio.get_running_loop().time() > deadline:
            return code
        await asyncio.sleep(POLL_SECONDS / 4)


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
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await stubs.users.RefreshToken(
                users_pb2.RefreshTokenRequest(refresh_token=account.tokens.refresh_token)
            )
        assert reused.value.code() == grpc.StatusCode.UNAUTHENTICATED
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
    async def test_another_replica_refuses_the_token_once_it_has_polled(self, servers):
        first = await servers.start()
        second = await servers.start(database_url=first.database_url)
        account = await signed_up(first.stubs)
        assert await _get_me_code(second.stubs, account.tokens.access_token) == grpc.StatusCode.OK
        await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        await second.running.ended_sessions.poll(second.pool)
        assert (
            await _get_me_code(second.stubs, account.tokens.access_token) == grpc.StatusCode.UNAUTHENTICATED
        )

    async def test_another_replica_polls_on_its_own(self, servers):
        first = await servers.start()
        second = await servers.start(database_url=first.database_url)
        account = await signed_up(first.stubs)
        await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        code = await _code_when(second.stubs, account.tokens.access_token, UNAUTHENTICATED)
        assert code == grpc.StatusCode.UNAUTHENTICATED

    async def test_a_replica_started_after_the_logout_refuses_the_token_from_the_start(self, servers):
        first = await servers.start()
        account = await signed_up(first.stubs)
        await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        later = await servers.start(database_url=first.database_url)
        assert await _get_me_code(later.stubs, account.tokens.access_token) == grpc.StatusCode.UNAUTHENTICATED

    async def test_a_stream_on_another_replica_ends_once_it_has_polled(self, servers):
        first = await servers.start()
        second = await servers.start(database_url=first.database_url)
        account = await signed_up(first.stubs)
        watch = second.stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=account.auth)
        try:
            await _until_open(watch)
            await first.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
            await second.running.ended_sessions.poll(second.pool)
            error = await _end_of(watch)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "session" in (error.details() or "")
        finally:
            watch.cancel()


class TestWhenTheListIsNotCurrent:
    async def test_a_valid_token_is_unavailable_until_a_poll_has_succeeded(self, server):
        never_polled = EndedSessions(access_ttl_seconds=60)
        async with probe_server(never_polled) as (channel, received):
            collect: Any = channel.stream_unary(COLLECT)
            call = collect(metadata=bearer(access_token()))
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(call, WAIT_SECONDS)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert received == []
            await never_polled.poll(server.pool)
            accepted = collect(metadata=bearer(access_token()))
            await accepted.done_writing()
            assert await asyncio.wait_for(accepted, WAIT_SECONDS) == b"done"

    async def test_the_poll_after_a_failed_one_catches_up(self, server):
        account = await signed_up(server.stubs)
        ended = EndedSessions(access_ttl_seconds=60)
        await ended.poll(server.pool)
        await server.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
        closed = await create_pool(server.database_url, size=1)
        await closed.close()
        await ended.try_poll(closed)
        assert _session_of(account) not in ended
        await ended.poll(server.pool)
        assert _session_of(account) in ended


class TestDatabaseOutage:
    async def test_the_poller_reconnects_and_catches_up_after_the_database_comes_back(
        self, servers, postgres
    ):
        proxy = DatabaseProxy(postgres.admin_url)
        await proxy.start()
        try:
            database_url = await servers.database()
            behind_proxy = await servers.start(proxy.url_for(database_url))
            direct = await servers.start(database_url)
            account = await signed_up(direct.stubs)
            await _until_pollers_connected(direct.pool, 2)
            await proxy.cut()
            await direct.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
            await proxy.start()
            code = await _code_when(behind_proxy.stubs, account.tokens.access_token, UNAUTHENTICATED)
            assert code == grpc.StatusCode.UNAUTHENTICATED
        finally:
            await proxy.close()


class TestOpenStreams:
    async def test_watch_of_the_ended_session_ends_and_the_other_sessions_watch_goes_on(self, server):
        account = await signed_up(server.stubs)
        other = await _login(server.stubs, account)
        ending = server.stubs.ledger.WatchTransfers(ledger_pb2.WatchTransfersRequest(), metadata=account.auth)
        going_on = server.stubs.ledger.WatchTransfers(
            ledger_pb2.WatchTransfersRequest(), metadata=bearer(other.access_token)
        )
        try:
            await _until_open(ending)
            await _until_open(going_on)
            await server.stubs.users.Logout(users_pb2.LogoutRequest(), metadata=account.auth)
            error = await _end_of(ending)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "session" in (error.details() or "")
            await deposit(server, await signed_up_admin(server), account, 5)
            event = await asyncio.wait_for(going_on.read(), WAIT_SECONDS)
            assert event.transfer.amount_minor == 5
        finally:
            ending.cancel()
            going_on.cancel()

    async def test_chat_connect_of_the_session_ends_unauthenticated_on_logout(self, stubs):
        account = await signed_up(stubs)
        stream = Stream(stubs, account)
        try:
            await stream.write(ping=chat_pb2.PingFrame(nonce="open"))
            assert (await stream.next_of("pong")).pong.nonce == "open"
            await stubs.users.Logout(users_pb2.LogoutRequest(all_sessions=True), metadata=account.auth)
            error = await stream.wait_ended()
            assert error is not None
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "session" in (error.details() or "")
        finally:
            await stream.close()


async def _until_pollers_connected(pool: Any, count: int) -> None:
    """Wait until `count` session pollers hold their own connection to the database."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while await pool.fetchval(_POLLERS, APPLICATION_NAME) < count:
        assert asyncio.get_running_loop().time() < deadline, "the session pollers did not connect"
        await asyncio.sleep(POLL_SECONDS / 4)


def _session_of(account: Account) -> str:
    claims = jwt.decode(account.tokens.access_token, options={"verify_signature": False})
    return str(claims["sid"])


async def _until_open(call: Any) -> None:
    """Wait until the server has authenticated and registered the watch (it sends initial metadata)."""
    await asyncio.wait_for(call.initial_metadata(), WAIT_SECONDS)


async def _end_of(call: Any) -> grpc.aio.AioRpcError:
    """Read a stream to its end; the error it ended with (ending OK fails the test)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while (await asyncio.wait_for(call.read(), WAIT_SECONDS)) is not grpc.aio.EOF:
            pass
    return caught.value
