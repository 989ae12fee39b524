"""Ledger fixtures: an admin, and two funded users."""

from __future__ import annotations

import pytest_asyncio

from tests.harness import TestServer
from tests.helpers import Account, signed_up, signed_up_admin
from tests.ledger.support import deposit


@pytest_asyncio.fixture(loop_scope="session")
async def admin(server: TestServer) -> Account:
    """An admin of the `server` fixture."""
    return await signed_up_admin(server)


@pytest_asyncio.fixture(loop_scope="session")
async def alice(server: TestServer, admin: Account) -> Account:
    """A user holding 10,000 USD minor units."""
    user = await signed_up(server.stubs)
    await deposit(server, admin, user, 10_000)
    return user


@pytest_asyncio.fixture(loop_scope="session")
async def bob(server: TestServer) -> Account:
    """A user with no money yet."""
    return await signed_up(server.stubs)
