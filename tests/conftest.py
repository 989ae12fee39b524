"""Session PostgreSQL, per-test database and server fixtures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.harness import Postgres, ServerFactory, Stubs, TestServer, server_factory_for


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def postgres() -> AsyncIterator[Postgres]:
    """One PostgreSQL for the whole session, with a migrated template database."""
    pg = Postgres()
    await pg.create_template()
    yield pg
    await pg.drop_database(pg.url_for(pg.template))


@pytest_asyncio.fixture(loop_scope="session")
async def servers(postgres: Postgres) -> AsyncIterator[ServerFactory]:
    """Start extra servers (same or other database, other config) within a test."""
    async for factory in server_factory_for(postgres):
        yield factory


@pytest_asyncio.fixture(loop_scope="session")
async def server(servers: ServerFactory) -> TestServer:
    """A real server on a free port over a fresh, migrated database."""
    return await servers.start()


@pytest.fixture
def stubs(server: TestServer) -> Stubs:
    """Typed async stubs of the `server` fixture."""
    return server.stubs
