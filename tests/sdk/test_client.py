"""The typed SDK's users and sessions (clients/sendinchat) against a real server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import jwt
import pytest

from sendinchat import Client, InvalidArgumentError, NotFoundError, UnauthenticatedError, UnavailableError
from sendinchat.cli.session import SessionFile
from sendinchat.errors import REFRESH_TOKEN_MISSING, AlreadyExistsError
from sendinchat.v1 import users_pb2
from tests import harness
from tests.helpers import PASSWORD, random_name, signed_up
from tests.sdk.conftest import logged_in
from tests.sdk.lossy import proxied


def expired_copy(tokens: users_pb2.TokenPair) -> users_pb2.TokenPair:
    """The same session's pair with an access token that expired a minute ago (past the leeway)."""
    claims = jwt.decode(tokens.access_token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 3600, exp=now - 60)
    expired = users_pb2.TokenPair()
    expired.CopyFrom(tokens)
    expired.access_token = jwt.encode(claims, harness.TEST_JWT_SECRET, algorithm="HS256")
    expired.access_token_expire_time.FromSeconds(now - 60)
    return expired


class MemoryStore:
    """A TokenStore in memory: what two processes sharing the CLI's session file share."""

    def __init__(self) -> None:
        self.tokens: users_pb2.TokenPair | None = None
        self._lock = asyncio.Lock()

    def load(self) -> users_pb2.TokenPair | None:
        return self.tokens

    def save(self, tokens: users_pb2.TokenPair | None) -> None:
        self.tokens = tokens

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        async with self._lock:
            yield


class TestRegisterAndLogin:
    async def test_logs_in_and_calls_as_the_user_when_credentials_are_right(self, server):
        name = random_name()
        async with Client(server.address) as client:
            await client.register(name, PASSWORD, display_name="Ann")
            user = await client.login(name, PASSWORD)
            me = await client.get_me()
        assert (me.id, me.username, me.display_name) == (user.id, name, "Ann")

    async def test_raises_typed_error_with_field_violations_when_input_is_bad(self, server):
        async with Client(server.address) as client:
            with pytest.raises(InvalidArgumentError) as caught:
                await client.register("x", "short")
        assert set(caught.value.field_violations) == {"username", "password"}

    async def test_raises_already_exists_with_reason_when_name_is_taken(self, server):
        name = random_name()
        async with Client(server.address) as client:
            await client.register(name, PASSWORD)
            with pytest.raises(AlreadyExistsError) as caught:
                await client.register(name, PASSWORD)
        assert caught.value.reason == "USERNAME_TAKEN"

    async def test_raises_unauthenticated_when_not_logged_in(self, server):
        async with Client(server.address) as client:
            with pytest.raises(UnauthenticatedError):
                await client.get_me()


class TestGetUser:
    async def test_finds_the_same_profile_by_username_and_by_id(self, server, alice, bob):
        bob_me = await bob.get_me()
        by_name = await alice.get_user(username=bob_me.username.upper())
        by_id = await alice.get_user(user_id=bob_me.id)
        assert by_name == by_id
        assert (by_name.id, by_name.username) == (bob_me.id, bob_me.username)

    async def test_raises_not_found_when_no_such_user(self, alice):
        with pytest.raises(NotFoundError):
            await alice.get_user(username=random_name())

    async def test_raises_value_error_when_not_exactly_one_key(self, alice):
        with pytest.raises(ValueError, match="exactly one"):
            await alice.get_user()
        with pytest.raises(ValueError, match="exactly one"):
            await alice.get_user(user_id="x", username="y")


@contextlib.asynccontextmanager
async def _two_sessions(server: harness.TestServer) -> AsyncIterator[tuple[str, Client, Client]]:
    """A new user's name and two clients logged in as that user (two sessions)."""
    name = random_name()
    async with logged_in(server.address, name) as client, Client(server.address) as other:
        await other.login(name, PASSWORD)
        yield name, client, other


class TestSessions:
    async def test_logout_ends_the_session_and_forgets_the_tokens(self, server):
        async with _two_sessions(server) as (name, client, other):
            assert await client.logout() == 1
            assert client.tokens is None
            with pytest.raises(UnauthenticatedError):
                await client.get_me()
            assert (await other.get_me()).username == name

    async def test_logout_of_all_sessions_ends_the_other_clients_session_too(self, server):
        async with _two_sessions(server) as (_, client, other):
            assert await client.logout(all_sessions=True) == 2
            with pytest.raises(UnauthenticatedError) as caught:
                await other.get_me()
            assert caught.value.reason == "SESSION_ENDED"

    async def test_change_password_keeps_the_client_logged_in_with_the_new_password(self, server):
        new_password = "another-long-password"
        async with _two_sessions(server) as (name, client, other):
            await client.change_password(PASSWORD, new_password)
            assert (await client.get_me()).username == name
            with pytest.raises(UnauthenticatedError):
                await other.get_me()
            with pytest.raises(UnauthenticatedError):
                await other.login(name, PASSWORD)
            await other.login(name, new_password)


class TestRefreshToken:
    async def test_rotates_the_pair_and_the_new_one_works(self, alice):
        assert alice.tokens is not None
        first = alice.tokens.refresh_token
        await alice.refresh_token()
        assert alice.tokens.refresh_token != first
        await alice.get_me()

    async def test_refreshes_once_and_repeats_the_call_when_the_access_token_expired(self, alice):
        assert alice.tokens is not None
        alice.tokens = expired_copy(alice.tokens)
        stale = alice.tokens
        users = await asyncio.gather(*(alice.get_me() for _ in range(5)))
        assert len({user.id for user in users}) == 1
        assert alice.tokens is not stale
        # Had two tasks refreshed with the same refresh token, the session would have ended:
        await alice.refresh_token()
        await alice.get_me()

    async def test_a_client_sharing_the_store_takes_the_pair_another_refreshed(self, server):
        store = MemoryStore()
        name = random_name()
        async with logged_in(server.address, name):
            pass
        async with Client(server.address, token_store=store) as first:
            await first.login(name, PASSWORD)
            assert store.tokens is not None
            store.tokens = expired_copy(store.tokens)
            async with Client(server.address, token_store=store) as second:
                first.tokens = second.tokens = store.tokens
                await first.get_me()  # refreshes: the stored refresh token is used up
                await second.get_me()  # must take the stored pair, not reuse the spent one
                assert second.tokens == first.tokens == store.tokens
                await second.refresh_token()
                await first.get_me()

    async def test_a_refresh_whose_answer_is_lost_is_retried_and_the_session_goes_on(self, server):
        async with proxied(server.address) as proxy, logged_in(proxy.address) as client:
            assert client.tokens is not None
            spent = client.tokens.refresh_token
            proxy.lose_next_answer()
            await client.refresh_token()  # rotated on the server, the answer lost, retried
            assert proxy.lost_answers == 1
            assert client.tokens.refresh_token != spent
            await client.refresh_token()  # a retry without its request_id would have ended the session
            await client.get_me()

    async def test_a_refresh_given_up_after_its_answer_was_lost_is_the_same_request_for_the_next_run(
        self, server, tmp_path
    ):
        name = random_name()
        async with logged_in(server.address, name):
            pass
        store = SessionFile(server.address, tmp_path)  # what the CLI's runs share
        async with (
            proxied(server.address) as proxy,
            Client(proxy.address, retries=0, token_store=store) as first,
        ):
            await first.login(name, PASSWORD)
            proxy.lose_next_answer()
            with pytest.raises(UnavailableError):
                await first.refresh_token()  # rotated on the server, the answer lost, no retries left
        async with Client(server.address, token_store=store) as next_run:
            await next_run.refresh_token()  # the same request: the successor, not a reuse
            await next_run.refresh_token()
            await next_run.get_me()

    async def test_an_expired_access_token_alone_raises_token_expired_not_a_refresh_error(self, server):
        account = await signed_up(server.stubs)
        async with Client(server.address) as client:
            # What the CLI builds from SENDINCHAT_TOKEN: no refresh token to renew it with.
            client.tokens = users_pb2.TokenPair(access_token=expired_copy(account.tokens).access_token)
            with pytest.raises(UnauthenticatedError) as raised:
                await client.get_me()
            assert raised.value.reason == REFRESH_TOKEN_MISSING

    async def test_raises_unauthenticated_when_the_session_ended(self, server):
        async with _two_sessions(server) as (_, client, other):
            assert other.tokens is not None
            other.tokens = expired_copy(other.tokens)
            await client.logout(all_sessions=True)
            with pytest.raises(UnauthenticatedError):
                await other.get_me()
