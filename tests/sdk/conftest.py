"""SDK fixtures: logged-in Clients of the `server` fixture (a funded one, an empty one, an admin)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest_asyncio

from sendinchat import Client
from tests import harness
from tests.helpers import PASSWORD, random_name, signed_up_admin

FUNDS_MINOR = 10_000  # 100.00 USD


@contextlib.asynccontextmanager
async def logged_in(address: str, name: str | None = None) -> AsyncIterator[Client]:
    """A Client logged in as a newly registered user."""
    name = name or random_name()
    async with Client(address) as client:
        await client.register(name, PASSWORD)
        await client.login(name, PASSWORD)
        yield client


@pytest_asyncio.fixture
async def admin(server: harness.TestServer) -> AsyncIterator[Client]:
    """A Client logged in as an admin."""
    account = await signed_up_admin(server)
    async with Client(server.address) as client:
        await client.login(account.username, PASSWORD)
        yield client


@pytest_asyncio.fixture
async def alice(server: harness.TestServer, admin: Client) -> AsyncIterator[Client]:
    """A Client logged in as a new user holding FUNDS_MINOR USD."""
    async with logged_in(server.address) as client:
        me = await client.get_me()
        await admin.deposit(to_user_id=me.id, currency="USD", amount_minor=FUNDS_MINOR)
        yield client


@pytest_asyncio.fixture
async def bob(server: harness.TestServer) -> AsyncIterator[Client]:
    """A Client logged in as a new user with no money."""
    async with logged_in(server.address) as client:
        yield client
