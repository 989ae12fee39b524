"""The typed SDK (clients/sendinchat) against a real server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from sendinchat import Client, InvalidArgumentError, UnauthenticatedError
from sendinchat.errors import AlreadyExistsError
from tests import harness
from tests.helpers import PASSWORD, random_name


class TestClientUsers:
    async def test_logs_in_and_calls_as_the_user_when_credentials_are_right(self, server):
        name = random_name()
        async with Client(server.address) as client:
            await client.register(name, PASSWORD)
            user = await client.login(name, PASSWORD)
            me = await client.me()
        assert me.id == user.id
        assert me.username == name

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
                await client.me()

    async def test_refresh_rotates_tokens_when_logged_in(self, server):
        name = random_name()
        async with Client(server.address) as client:
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
            assert client.tokens is not None
            first_refresh = client.tokens.refresh_token
            await client.refresh()
            assert client.tokens.refresh_token != first_refresh
            assert (await client.me()).username == name


@contextlib.asynccontextmanager
async def _two_sessions(server: harness.TestServer) -> AsyncIterator[tuple[str, Client, Client]]:
    """A new user's name and two clients logged in as that user (two sessions)."""
    name = random_name()
    async with Client(server.address) as client, Client(server.address) as other:
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        await other.login(name, PASSWORD)
        yield name, client, other


class TestClientSessions:
    async def test_logout_ends_the_session_and_forgets_the_tokens(self, server):
        async with _two_sessions(server) as (name, client, other):
            assert await client.logout() == 1
            assert client.tokens is None
            with pytest.raises(UnauthenticatedError):
                await client.me()
            assert (await other.me()).username == name

    async def test_logout_of_all_sessions_ends_the_other_clients_session_too(self, server):
        async with _two_sessions(server) as (_, client, other):
            assert await client.logout(all_sessions=True) == 2
            with pytest.raises(UnauthenticatedError) as caught:
                await other.me()
            assert "session" in caught.value.message

    async def test_change_password_keeps_the_client_logged_in_with_the_new_password(self, server):
        new_password = "another-long-password"
        async with _two_sessions(server) as (name, client, other):
            await client.change_password(PASSWORD, new_password)
            assert (await client.me()).username == name
            with pytest.raises(UnauthenticatedError):
                await other.me()
            with pytest.raises(UnauthenticatedError):
                await other.login(name, PASSWORD)
            await other.login(name, new_password)


class TestClientRefresh:
    async def test_refreshes_once_when_many_tasks_find_the_same_stale_tokens(self, server):
        name = random_name()
        async with Client(server.address) as client:
            await client.register(name, PASSWORD)
            await client.login(name, PASSWORD)
            stale = client.tokens
            await asyncio.gather(*(client.refresh_if_stale(stale) for _ in range(5)))
            assert client.tokens is not stale
            # A second refresh with the old token would have revoked the session; it still works:
            await client.refresh()
            assert (await client.me()).username == name
